"""Batch-level training augmentations in torch, applied after either backend (on the GPU when the batch is there):
SpecAugment masks and mixup. Vectorised over the batch; no Python loop over samples.

Their random numbers are drawn on the batch's device (or the given generator's), so a GPU step neither copies
host tensors to the device (a copy without ``non_blocking`` waits for the device's queue to drain) nor reads a
device value back. Only mixup's per-batch coin is drawn on the host: it decides a Python branch, and a host draw
is read without waiting on the device. On the CPU the draws are those of the host generator, as before."""

from __future__ import annotations

import torch


def spec_augment(audio: torch.Tensor, freq_mask: int, time_mask: int, generator=None) -> torch.Tensor:
    """One frequency and one time mask per sample (torchaudio's FrequencyMasking/TimeMasking, as CAV-MAE fine-tuning
    applies them): width uniform in [0, max), start uniform over what fits; masked values become 0 (the mean after
    normalisation)."""
    batch, frames, bins = audio.shape
    device = _draw_device(audio, generator)
    keep = torch.ones_like(audio, dtype=torch.bool)
    for size, axis_length, dim in ((freq_mask, bins, 2), (time_mask, frames, 1)):
        if size <= 0:
            continue
        width = (torch.rand(batch, generator=generator, device=device) * min(size, axis_length)).long()
        start = (torch.rand(batch, generator=generator, device=device) * (axis_length - width + 1).float()).long()
        position = torch.arange(axis_length, device=device)
        masked = (position[None, :] >= start[:, None]) & (position[None, :] < (start + width)[:, None])
        shape = (batch, 1, axis_length) if dim == 2 else (batch, axis_length, 1)
        keep &= ~_on(masked.view(shape), audio.device)
    return audio * keep


def noise_and_shift(audio: torch.Tensor, generator=None) -> torch.Tensor:
    """CAV-MAE's "noise" augmentation (training, after normalisation, docs/reference/cavmae.md#augmentation), per
    sample: add uniform noise of a random amplitude (rand(T, F) x U(0, 1) / 10), then roll the log-mel in time by
    randint(-T, T) frames, a circular shift that carries the padded frames along."""
    batch, frames, _ = audio.shape
    device = _draw_device(audio, generator)
    amplitude = torch.rand(batch, 1, 1, generator=generator, device=device) / 10
    noise = torch.rand(audio.shape, generator=generator, device=device) * amplitude
    noisy = audio + _on(noise, audio.device).to(audio.dtype)
    shift = torch.randint(-frames, frames, (batch, 1), generator=generator, device=device)
    source = (torch.arange(frames, device=device)[None, :] - shift) % frames  # torch.roll per sample
    return torch.gather(noisy, 1, _on(source, audio.device)[:, :, None].expand_as(noisy))  # out[t] = in[t - shift]


def _draw_device(batch: torch.Tensor, generator: torch.Generator | None) -> torch.device:
    """Where the random numbers are drawn: on the given generator's device (a test's seeded CPU generator), else
    on the batch's."""
    return generator.device if generator is not None else batch.device


def _on(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` on ``device``; nothing to do when it is there already (it was drawn there)."""
    return tensor if tensor.device == device else tensor.to(device, non_blocking=True)


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
    device = _draw_device(batch["audio"], generator)
    partner = torch.randperm(size, generator=generator, device=device)
    concentration = torch.full((), alpha, device=device)  # float32, as Beta(alpha, alpha) makes it
    lam = torch.distributions.Beta(concentration, concentration).sample((size,))
    out = dict(batch)
    for name in ("audio", "video"):
        x = batch[name]
        weight = _on(lam, x.device).view(-1, *([1] * (x.dim() - 1)))
        out[name] = weight * x + (1 - weight) * x[_on(partner, x.device)]
    out["targets"] = {name: _on(lam, t.device)[:, None] * t + (1 - _on(lam, t.device)[:, None]) * t[_on(partner, t.device)]
                      for name, t in targets.items()}
    out["mixup_lambda"], out["mixup_partner"] = lam, partner
    return out
