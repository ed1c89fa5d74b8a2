"""Pretraining losses: MSE on masked patches, and InfoNCE whose negatives are the whole global batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from avmae import collectives


def normalise_patches(target: torch.Tensor, eps: float = 1e-6, variance: str = "unbiased") -> torch.Tensor:
    """The ``norm_pix_loss`` target: each patch to zero mean and unit variance, (x - mean) / sqrt(var + eps).
    ``variance`` unbiased: MAE's torch ``var`` (facebookresearch/mae models_mae.py forward_loss); biased: Scenic's
    ``jax.nn.standardize`` (the population variance)."""
    if variance not in ("unbiased", "biased"):
        raise ValueError(f"variance must be unbiased or biased, got {variance!r}")
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True, unbiased=variance == "unbiased")
    return (target - mean) / (var + eps).sqrt()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool,
               variance: str = "unbiased") -> torch.Tensor:
    """Mean over masked tokens of the per-patch mean squared error (MAE / CAV-MAE; equals AV-MAE's
    ``normalise_by_output_dimension`` form). Computed in float32 whatever the autocast dtype."""
    pred, target = pred.float(), target.float()
    if norm_pix:
        target = normalise_patches(target, variance=variance)
    per_token = (pred - target).pow(2).mean(dim=-1)
    weights = mask.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp(min=1.0)


def _global(features: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All ranks' rows (with gradients flowing back to their owners) and this rank's row offset, through the one
    module that runs collectives (it places tensors where the process group needs them)."""
    if not collectives.is_distributed():
        return features, 0
    return collectives.all_gather_with_grad(features.contiguous()), collectives.rank() * features.shape[0]


def info_nce(audio: torch.Tensor, video: torch.Tensor, temperature: float, bidirectional: bool,
             global_negatives: bool = True) -> torch.Tensor:
    """CAV-MAE's contrastive loss on pooled (B, D) features, with every clip of the global batch as a negative.

    video->audio: for each video, classify its audio among all audios (CAV-MAE's single direction); with
    ``bidirectional`` the audio->video term is averaged in. Per-rank losses average to the loss of the global batch;
    without ``global_negatives`` each rank contrasts its own clips only.
    """
    audio = F.normalize(audio.float(), dim=-1)
    video = F.normalize(video.float(), dim=-1)
    if global_negatives:
        all_audio, offset = _global(audio)
        all_video, _ = _global(video)
    else:
        all_audio, all_video, offset = audio, video, 0
    labels = torch.arange(audio.shape[0], device=audio.device) + offset
    loss = F.cross_entropy(video @ all_audio.T / temperature, labels)
    if bidirectional:
        loss = (loss + F.cross_entropy(audio @ all_video.T / temperature, labels)) / 2
    return loss
