"""One optimizer step: ``grad_accum`` micro-batches, each augmented, forwarded, agreed on, backpropagated, then
DeepSpeed's step. Nothing in it waits on the device: the loss parts stay device tensors, summed detached over the
micro-batches; whether every rank's loss is finite is agreed as a device tensor (avmae/train/divergence.py); the
sample counts are host integers taken from the batch. The host reads them at log, checkpoint and guard boundaries
(``Trainer.run``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch

from avmae.data.augment import circular_time_shift, mixup, noise_and_shift, spec_augment
from avmae.data.colour import colour_augment
from avmae.recipe.config import RunConfig
from avmae.train.divergence import poison_unless_every_rank_finite
from avmae.train.losses import finetune_loss


@dataclass
class StepResult:
    parts: dict[str, torch.Tensor]  # this rank's loss parts, the mean over the micro-batches, 0-d device tensors
    every_loss_finite: torch.Tensor  # 0-d device tensor: 1.0 when every rank's every micro-batch loss was finite


class TrainStep:
    """``engine``: the DeepSpeed engine; ``heads`` and ``loss_kind``: fine-tuning's heads and its loss."""

    def __init__(self, engine, config: RunConfig, bf16: bool, heads: dict[str, int], loss_kind: str):
        self.engine, self.config, self.heads, self.loss_kind = engine, config, heads, loss_kind
        self.dtype = torch.bfloat16 if bf16 else torch.float32  # DeepSpeed bf16 casts the module, not autocast
        self.forward = self._pretrain if config.task == "pretrain" else self._finetune

    def __call__(self, next_batch: Callable[[], dict[str, Any]]) -> StepResult:
        """Run ``grad_accum`` micro-batches drawn with ``next_batch`` and DeepSpeed's step after each (it applies
        the update at the last)."""
        accum = self.config.grad_accum
        totals: dict[str, torch.Tensor] = {}
        every_finite: torch.Tensor | None = None
        for _ in range(accum):
            loss, parts = self.forward(next_batch())
            loss, finite = poison_unless_every_rank_finite(loss)  # any rank's non-finite loss discards the step
            every_finite = finite if every_finite is None else torch.minimum(every_finite, finite)
            self.engine.backward(loss)
            self.engine.step()
            for name, value in parts.items():
                totals[name] = totals[name] + value / accum if name in totals else value / accum
        return StepResult(totals, every_finite)

    def _inputs(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        return batch["audio"].to(self.dtype), batch["video"].to(self.dtype)

    def _video(self, batch: dict[str, Any]) -> torch.Tensor:
        """The batch's video with the colour augmentation (a no-op unless augment.colour or colour_drop)."""
        augment = self.config.augment
        return colour_augment(batch["video"], self.config.data.video_norm, augment.colour, augment.colour_drop)

    def _pretrain(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        batch = {**batch, "video": self._video(batch)}
        if self.config.augment.audio_noise:
            batch["audio"] = noise_and_shift(batch["audio"])
        out = self.engine(*self._inputs(batch))
        return out["loss"], {k: v.detach().float() for k, v in out.items() if k.startswith("loss")}

    def _finetune(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        augment = self.config.augment
        batch = {**batch, "video": self._video(batch)}  # before mixup, as Scenic's data pipeline orders them
        if augment.time_shift:  # before the masks, as Scenic's data pipeline orders them
            batch["audio"] = circular_time_shift(batch["audio"])
        batch["audio"] = spec_augment(batch["audio"], augment.freq_mask, augment.time_mask,
                                      freq_masks=augment.freq_masks, time_masks=augment.time_masks)
        if augment.audio_noise:  # after the masks, as CAV-MAE's loader orders them
            batch["audio"] = noise_and_shift(batch["audio"])
        batch = mixup(batch, self.heads, augment.mixup, augment.mixup_alpha, scope=augment.mixup_scope,
                      per_modality=augment.mixup_per_modality)
        audio, video = self._inputs(batch)
        smoothing = self.config.finetune.label_smoothing
        if self.config.finetune.classifier == "bottleneck":  # MBT: the mean of each modality's own loss,
            per_modality = self.engine(audio=audio, video=video, per_modality=True)  # against its own targets
            loss = torch.stack([finetune_loss(logits, batch["targets_by_modality"][modality], self.loss_kind,
                                              smoothing)
                                for modality, logits in per_modality.items()]).mean()
        else:
            loss = finetune_loss(self.engine(audio=audio, video=video), batch["targets"], self.loss_kind, smoothing)
        return loss, {"loss": loss.detach().float()}
