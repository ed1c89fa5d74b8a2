"""Batch-level training augmentations in torch, applied after either backend (on the GPU when the batch is there):
SpecAugment masks and mixup. Vectorised over the batch; no Python loop over samples."""

from __future__ import annotations

import torch


def spec_augment(audio: torch.Tensor, freq_mask: int, time_mask: int, generator=None) -> torch.Tensor:
    """One frequency and one time mask per sample (torchaudio's FrequencyMasking/TimeMasking, as CAV-MAE fine-tuning
    applies them): width uniform in [0, max), start uniform over what fits; masked values become 0 (the mean after
    normalisation)."""
    batch, frames, bins = audio.shape
    keep = torch.ones_like(audio, dtype=torch.bool)
    for size, axis_length, dim in ((freq_mask, bins, 2), (time_mask, frames, 1)):
        if size <= 0:
            continue
        width = (torch.rand(batch, generator=generator) * min(size, axis_length)).long()
        start = (torch.rand(batch, generator=generator) * (axis_length - width + 1).float()).long()
        position = torch.arange(axis_length)
        masked = (position[None, :] >= start[:, None]) & (position[None, :] < (start + width)[:, None])
        shape = (batch, 1, axis_length) if dim == 2 else (batch, axis_length, 1)
        keep &= ~masked.view(shape).to(audio.device)
    return audio * keep


def noise_and_shift(audio: torch.Tensor, generator=None) -> torch.Tensor:
    """CAV-MAE's "noise" augmentation (training, after normalisation, methods.md B.1), per sample: add uniform noise
    of a random amplitude (rand(T, F) x U(0, 1) / 10), then roll the log-mel in time by randint(-T, T) frames,
    a circular shift that carries the padded frames along."""
    batch, frames, _ = audio.shape
    amplitude = torch.rand(batch, 1, 1, generator=generator) / 10
    noisy = audio + (torch.rand(audio.shape, generator=generator) * amplitude).to(audio.device, audio.dtype)
    shift = torch.randint(-frames, frames, (batch, 1), generator=generator)
    source = (torch.arange(frames)[None, :] - shift) % frames  # torch.roll per sample: out[t] = in[t - shift]
    return torch.gather(noisy, 1, source.to(audio.device)[:, :, None].expand_as(noisy))


def targets_of(batch: dict, heads: dict[str, int]) -> dict[str, torch.Tensor]:
    """Float targets per head: multi-hot as is, class indices as one-hot."""
    out = {}
    for name, classes in heads.items():
        labels = batch[name]
        out[name] = labels.float() if labels.dim() == 2 else torch.nn.functional.one_hot(labels, classes).float()
    return out


def mixup(batch: dict, heads: dict[str, int], probability: float, alpha: float = 10.0, generator=None) -> dict:
    """With ``probability``, mix every sample with another of the batch: lambda ~ Beta(alpha, alpha) per sample
    (CAV-MAE: Beta(10, 10)), the same lambda for its audio, video and targets. Adds ``targets`` (soft, per head)."""
    targets = targets_of(batch, heads)
    if probability <= 0 or torch.rand((), generator=generator) >= probability:
        return {**batch, "targets": targets}
    size = batch["audio"].shape[0]
    partner = torch.randperm(size, generator=generator)
    lam = torch.distributions.Beta(alpha, alpha).sample((size,))
    out = dict(batch)
    for name in ("audio", "video"):
        x = batch[name]
        weight = lam.to(x.device).view(-1, *([1] * (x.dim() - 1)))
        out[name] = weight * x + (1 - weight) * x[partner.to(x.device)]
    out["targets"] = {name: lam.to(t.device)[:, None] * t + (1 - lam.to(t.device)[:, None]) * t[partner.to(t.device)]
                      for name, t in targets.items()}
    out["mixup_lambda"], out["mixup_partner"] = lam, partner
    return out
