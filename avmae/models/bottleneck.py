"""AV-MAE's fine-tuning model: MBT attention-bottleneck fusion ("Attention Bottlenecks for Multimodal Fusion";
google-research/scenic ``scenic/projects/av_mae/mbt.py`` and ``configs/audioset/finetune.py``).

Two full-depth encoders, one per modality (the late-fusion layout, so a late-fusion pretraining checkpoint loads
as it is). From layer ``fusion_layer`` on, a few shared bottleneck tokens join each modality's tokens in that
modality's block; the bottleneck tokens each block returns are averaged over the modalities and passed on, so
all cross-modal information flows through them. Each modality is mean-pooled on its own and goes through the
same heads: one logit vector per modality. Training takes the mean of the modalities' losses, inference the mean
of their logits. A mid-fusion checkpoint is loaded as AV-MAE does: each joint layer is copied into both
modality encoders (``initialise_from_mid_fusion``); see ``mid_to_separate`` for the final norms.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from avmae.models.classifier import AVClassifier, InputModality
from avmae.models.config import BottleneckConfig, ModelConfig
from avmae.models.encoder import MODALITIES


def mid_to_separate(state_dict: dict[str, torch.Tensor], depth: int) -> tuple[dict[str, torch.Tensor], list[str]]:
    """A mid-fusion state dict with separate encoders' keys, and the keys it dropped. Joint block k becomes block
    ``depth - joint + k`` of both the audio and the video encoder, and the joint final norm becomes both encoders'
    final norm. The modality stacks' own final norms (between their last layer and the joint layers) have no
    place in one straight stack and are dropped: the joint norm is the one trained on the output of the last
    layer. Other keys pass through; a state dict without joint layers comes back unchanged."""
    joint = {int(m.group(1)) for key in state_dict if (m := re.match(r"encoder\.joint\.blocks\.(\d+)\.", key))}
    if not joint:
        return dict(state_dict), []
    first = depth - (max(joint) + 1)
    out, dropped = {}, []
    for key, value in state_dict.items():
        if re.match(r"encoder\.(audio|video)\.norm\.", key):
            dropped.append(key)
            continue
        match = re.match(r"encoder\.joint\.(blocks\.(\d+)|norm)\.(.+)", key)
        if match is None:
            out[key] = value
            continue
        for modality in MODALITIES:
            if match.group(2) is not None:
                out[f"encoder.{modality}.blocks.{first + int(match.group(2))}.{match.group(3)}"] = value.clone()
            else:
                out[f"encoder.{modality}.norm.{match.group(3)}"] = value.clone()
    return out, dropped


class BottleneckClassifier(AVClassifier):
    """AVClassifier's tokenizer, separate encoders and heads, fused through bottleneck tokens."""

    def __init__(self, config: ModelConfig, heads: dict[str, int], modality: InputModality = "av",
                 modality_dropout: float = 0.0, seed: int = 0, bottleneck: BottleneckConfig | None = None):
        if config.encoder.fusion != "late":
            raise ValueError("bottleneck fusion runs two separate encoders: set model.encoder.fusion late (a "
                             f"mid-fusion checkpoint is converted on load), got {config.encoder.fusion!r}")
        super().__init__(config, heads, modality, modality_dropout, seed)
        self.bottleneck_config = bottleneck or BottleneckConfig()
        width, depth, _, _ = config.encoder.dims()
        # fusion_layer == depth: no layer is fused (Scenic's single-modality MBT fine-tunes have a bottleneck
        # parameter they never use: scenic/projects/mbt/model.py runs plain blocks when one modality is fused).
        if not 0 <= self.bottleneck_config.fusion_layer <= depth:
            raise ValueError(f"bottleneck fusion_layer must be in [0, {depth}], got {self.bottleneck_config.fusion_layer}")
        del self.head_norm  # each encoder's final LayerNorm feeds the shared heads (Scenic's 'gap' classifier)
        if self.bottleneck_config.shared_norm:
            self.encoder_norm = nn.LayerNorm(width, eps=config.encoder.layer_norm_eps)
            for m in MODALITIES:
                getattr(self.encoder, m).norm = nn.Identity()
        self.bottleneck = nn.Parameter(torch.empty(1, self.bottleneck_config.tokens, width))
        nn.init.normal_(self.bottleneck, std=0.02)  # MBT: normal(0.02)
        for head in self.heads.values():  # Scenic's output_projection is zero-initialised
            nn.init.zeros_(head.weight)

    def _encode(self, tokens: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        stacks = {m: getattr(self.encoder, m) for m in tokens}
        fusion_layer = self.bottleneck_config.fusion_layer
        shared = self.bottleneck.expand(next(iter(tokens.values())).shape[0], -1, -1)
        for layer in range(len(next(iter(stacks.values())).blocks)):
            if layer < fusion_layer:
                tokens = {m: stacks[m].run_block(layer, x) for m, x in tokens.items()}
                continue
            updated = {}
            for m, x in tokens.items():
                out = stacks[m].run_block(layer, torch.cat([x, shared.to(x.dtype)], dim=1))
                tokens[m], updated[m] = out[:, : x.shape[1]], out[:, x.shape[1]:]
            shared = torch.stack(list(updated.values())).mean(dim=0)
        if self.bottleneck_config.shared_norm:
            return {m: self.encoder_norm(x) for m, x in tokens.items()}
        return {m: stacks[m].norm(x) for m, x in tokens.items()}

    def modality_logits(self, audio: torch.Tensor | None = None,
                        video: torch.Tensor | None = None) -> dict[str, dict[str, torch.Tensor]]:
        """``{modality: {head: (B, classes)}}`` for every modality present."""
        encoded = self._encode(self._inputs(audio, video))
        return {m: {name: head(x.mean(dim=1)) for name, head in self.heads.items()} for m, x in encoded.items()}

    def features(self, audio: torch.Tensor | None = None, video: torch.Tensor | None = None) -> torch.Tensor:
        """The mean of the modalities' pooled features (what a linear probe or retrieval uses)."""
        encoded = self._encode(self._inputs(audio, video))
        return torch.stack([x.mean(dim=1) for x in encoded.values()]).mean(dim=0)

    def forward(self, audio: torch.Tensor | None = None, video: torch.Tensor | None = None,
                per_modality: bool = False):
        """Logits per head averaged over the modalities (MBT's inference), or with ``per_modality`` the
        modalities' own logits, for the training loss (the mean of the modalities' losses)."""
        logits = self.modality_logits(audio, video)
        if per_modality:
            return logits
        return {name: torch.stack([per[name] for per in logits.values()]).mean(dim=0) for name in self.heads}

    def load_pretrained(self, state_dict: dict[str, torch.Tensor],
                        fresh: tuple[str, ...] = ()) -> dict[str, list[str]]:
        """AVClassifier's loading (``fresh`` as there), after converting a mid-fusion checkpoint to separate
        encoders."""
        state_dict = {k.removeprefix("module."): v for k, v in state_dict.items()}
        separate, dropped = mid_to_separate(state_dict, self.config.encoder.dims()[1])
        norms = {}
        if self.bottleneck_config.shared_norm:  # the encoders' final norms are this model's one encoder_norm
            norms = {k: separate.pop(k) for k in list(separate) if re.match(r"encoder\.(audio|video)\.norm\.", k)}
        report = super().load_pretrained(separate, fresh)
        if dropped:
            report["converted"] = ["mid fusion: joint layers copied into both encoders, joint norm as final norm"]
            report["skipped"] = sorted(report["skipped"] + dropped)
        if norms and dropped:  # from a mid-fusion run: the joint norm (Scenic's initialise_from_mid_fusion)
            joint = {f"encoder_norm.{k.removeprefix('encoder.audio.norm.')}": v for k, v in norms.items()
                     if k.startswith("encoder.audio.norm.")}
            self.load_state_dict(joint, strict=False)
            report["loaded"] = sorted(report["loaded"] + list(joint))
        elif norms:  # two separate encoders' norms: Scenic keeps encoder_norm at its init for these
            report["skipped"] = sorted(report["skipped"] + list(norms))
        return report
