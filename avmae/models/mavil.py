"""MAViL (Huang et al., "MAViL: Masked Audio-Video Learners"): masked reconstruction plus inter- and intra-modal
contrastive learning (stage 1), then self-training on a frozen stage-1 teacher's features (stage 2).

No code is public (Huang et al. 2023, arXiv:2212.08071); this follows the paper's description on our AV-MAE parts. The choices the
description leaves open, and what we chose:
- Architecture: the AV-MAE model of the config (mid fusion: a Transformer per modality, then joint layers; the
  decoders reconstruct from the joint layers' output). MAViL's fusion encoder plays the role of our joint layers.
- Inter-modal contrast: the config's ``contrastive`` term (InfoNCE between mean-pooled visible tokens of each
  modality encoded on its own, negatives from the whole global batch; set ``bidirectional: true``).
- Intra-modal contrast: a second, independently masked view of each clip is encoded; for each modality, InfoNCE
  between the two views' pooled features (the other clips of the global batch are the negatives), both directions,
  averaged over modalities, weight ``intra_weight`` and temperature ``intra_temperature``.
- Stage 2: the teacher is a stage-1 export, frozen and run on unmasked inputs. Its targets are the joint layers'
  output tokens per modality: aligned by the contrastive terms, contextualised by the joint layers. The student
  has the same architecture; its decoders predict the teacher's tokens at the masked positions, each target token
  normalised over its features (a LayerNorm without affine, as data2vec does), with the masked MSE of stage 1. Raw reconstruction is not used in stage 2. The teacher is not a submodule: it is not
  trained, sharded by ZeRO or saved.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from avmae.models.avmae import AVMAE
from avmae.models.config import MAViLConfig, ModelConfig
from avmae.models.encoder import MODALITIES
from avmae.models.losses import info_nce


class MAViL(AVMAE):
    def __init__(self, config: ModelConfig, mavil: MAViLConfig):
        super().__init__(config)
        self.mavil = mavil
        self.stage = 2 if mavil.teacher else 1
        if self.stage == 2:
            # The decoders predict teacher tokens (encoder width) instead of patches.
            width = config.encoder.dims()[0]
            self.decoder.head = nn.ModuleDict({m: nn.Linear(config.decoder.width, width) for m in MODALITIES})
            for head in self.decoder.head.values():
                nn.init.xavier_uniform_(head.weight)
                nn.init.zeros_(head.bias)
        self._teacher: list[AVMAE] = []  # a list, so the teacher is no submodule

    def attach_teacher(self, teacher: AVMAE) -> None:
        """Stage 2: the frozen stage-1 model whose features are the targets; its tokens must line up with ours."""
        ours, theirs = self.config, teacher.config
        if (ours.encoder.dims()[0], ours.audio, ours.video) != (theirs.encoder.dims()[0], theirs.audio, theirs.video):
            raise ValueError("the MAViL teacher must have the student's encoder width and input sizes, got width "
                             f"{theirs.encoder.dims()[0]} vs {ours.encoder.dims()[0]}")
        teacher.eval().requires_grad_(False)
        self._teacher = [teacher]

    @torch.no_grad()
    def teacher_targets(self, audio: torch.Tensor, video: torch.Tensor) -> dict[str, torch.Tensor]:
        if not self._teacher:
            raise RuntimeError("MAViL stage 2 needs its teacher: call attach_teacher (avmae-train does, from "
                               "mavil.teacher)")
        teacher = self._teacher[0]
        first = next(teacher.parameters())
        if first.device != audio.device or first.dtype != audio.dtype:
            teacher.to(device=audio.device, dtype=audio.dtype)  # follows the student (bf16 under DeepSpeed)
        tokens = {"audio": teacher.tokenizer.audio(audio)[0], "video": teacher.tokenizer.video(video)[0]}
        fused, _ = teacher.encoder(tokens)
        # Each target token normalised over its features (data2vec's LayerNorm without affine), so the scale of
        # the teacher's output does not set the loss's.
        return {m: F.layer_norm(fused[m].float(), fused[m].shape[-1:]) for m in MODALITIES}

    def targets(self, audio: torch.Tensor, video: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.teacher_targets(audio, video) if self.stage == 2 else super().targets(audio, video)

    def _second_view(self, audio: torch.Tensor, video: torch.Tensor, generator) -> dict[str, torch.Tensor]:
        """Pooled features of each modality encoded on its own under a fresh mask."""
        kept = self.visible_tokens(audio, video, generator=generator)[-1]
        _, alone = self.encoder(kept, unimodal=True)
        return {m: alone[m].mean(dim=1) for m in MODALITIES}

    def forward(self, audio: torch.Tensor, video: torch.Tensor, masks: dict | None = None,
                generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        out = super().forward(audio, video, masks, generator, keep_features=self.mavil.intra_weight > 0)
        if self.mavil.intra_weight > 0:
            second = self._second_view(audio, video, generator)
            t = self.mavil.intra_temperature
            out["loss_intra"] = torch.stack([info_nce(out[f"features_{m}"], second[m], t, bidirectional=True)
                                             for m in MODALITIES]).mean()
            out["loss"] = out["loss"] + self.mavil.intra_weight * out["loss_intra"]
        return out
