"""The four encoder fusion strategies of the AV-MAE paper (Fig. 2; Scenic ``apply_encoder``,
scenic/projects/av_mae/vivit_multimodal.py).

- early:  one Transformer over the concatenated tokens of both modalities;
- late:   a Transformer per modality;
- mid:    a Transformer per modality for depth - k layers, then k joint layers over the concatenation;
- shared: one Transformer's weights applied to each modality on its own.

Modalities come as a dict, so the same encoder serves pretraining (both), fine-tuning and inference with one
modality missing (the joint layers then see only the tokens that exist, through that modality's own LayerNorms
when ``encoder.modality_norms`` gives them some, as CAV-MAE's audio-only / video-only modes do).
"""

from __future__ import annotations

import torch
from torch import nn

from avmae.models.config import ModelConfig
from avmae.models.vit import Transformer

MODALITIES = ("audio", "video")


class FusionEncoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        width, depth, heads, mlp = config.encoder.dims()
        self.fusion = config.encoder.fusion
        # linear from 0 at the first layer to drop_path at the last, as MAE and Scenic's MBT (mbt.py) do
        rates = [config.encoder.drop_path * i / max(1, depth - 1) for i in range(depth)]

        alone_norms = MODALITIES if config.encoder.modality_norms else ()

        def stack(first: int, last: int, final_norm: bool = True, modality_norms: tuple[str, ...] = ()) -> Transformer:
            return Transformer(width, last - first, heads, mlp, qkv_bias=config.encoder.qkv_bias,
                               eps=config.encoder.layer_norm_eps, drop_path_rates=rates[first:last],
                               checkpointing=config.activation_checkpointing, final_norm=final_norm,
                               modality_norms=modality_norms, gelu=config.gelu,
                               drop_path_rescale=config.encoder.drop_path_rescale)

        if self.fusion == "early":
            self.joint = stack(0, depth, modality_norms=alone_norms)
        elif self.fusion == "late":
            self.audio = stack(0, depth)
            self.video = stack(0, depth)
        elif self.fusion == "mid":
            split = depth - config.encoder.joint_layers
            self.audio = stack(0, split, final_norm=config.encoder.norm_before_joint)
            self.video = stack(0, split, final_norm=config.encoder.norm_before_joint)
            self.joint = stack(split, depth, modality_norms=alone_norms)
        elif self.fusion == "shared":
            self.shared = stack(0, depth)
        else:
            raise ValueError(f"unknown fusion {self.fusion!r}")

    def _joint(self, tokens: dict[str, torch.Tensor], own_norms: bool = True) -> dict[str, torch.Tensor]:
        """The joint layers over the tokens given; one modality alone runs with its own norms where the layers have
        them (``encoder.modality_norms``; CAV-MAE's blocks_u(a, 'a') then norm_a), unless ``own_norms`` is False."""
        names = [m for m in MODALITIES if m in tokens]
        lengths = [tokens[m].shape[1] for m in names]
        alone = names[0] if len(names) == 1 and own_norms else None
        out = self.joint(torch.cat([tokens[m] for m in names], dim=1), alone)
        return dict(zip(names, out.split(lengths, dim=1)))

    def forward(self, tokens: dict[str, torch.Tensor], unimodal: bool = False, own_norms: bool = True):
        """Encode ``{modality: (B, n, width)}``. Returns (fused, per_modality): ``fused`` is the encoder's output
        (cross-modal where the strategy has joint layers); ``per_modality`` (only if ``unimodal``) is each
        modality encoded with no attention to the other, for the contrastive term (CAV-MAE runs its joint
        layers on each modality alone for this, YuanGongND/cav-mae src/models/cav_mae.py). ``own_norms=False`` runs a lone modality in
        ``fused`` through the joint norms instead of its own."""
        if self.fusion in ("late", "mid"):
            tokens = {m: getattr(self, m)(x) for m, x in tokens.items()}
        if self.fusion == "shared":
            tokens = {m: self.shared(x) for m, x in tokens.items()}
        if self.fusion in ("late", "shared"):
            return tokens, (tokens if unimodal else None)
        fused = self._joint(tokens, own_norms)
        alone = {m: self._joint({m: x})[m] for m, x in tokens.items()} if unimodal else None
        return fused, alone
