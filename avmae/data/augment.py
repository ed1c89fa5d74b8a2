"""Batch-level training augmentations in torch, applied after either backend (on the GPU when the batch is there):
SpecAugment masks, a circular time shift and mixup. Vectorised over the batch; no Python loop over samples.

Two recipes use them. CAV-MAE's fine-tuning (github.com/YuanGongND/cav-mae, src/dataloader.py): one frequency and
one time mask, uniform noise and a random roll, and mixup of a sample with a random other one. Scenic's AV-MAE
fine-tuning (github.com/google-research/scenic, scenic/projects/av_mae/configs/*/finetune.py): several masks
(lingvo's SpectrumAugmenter), a circular shift by a uniform amount, and mixup of the batch with its reverse on
every batch, with a lambda per modality (``mixmod``).

Their random numbers are drawn on the batch's device (or the given generator's), so a GPU step neither copies
host tensors to the device (a copy without ``non_blocking`` waits for the device's queue to drain) nor reads a
device value back. Only mixup's per-batch coin is drawn on the host: it decides a Python branch, and a host draw
is read without waiting on the device. On the CPU the draws are those of the host generator."""

from __future__ import annotations

import torch

MODALITIES = ("audio", "video")


def spec_augment(audio: torch.Tensor, freq_mask: int, time_mask: int, generator=None,
                 freq_masks: int = 1, time_masks: int = 1) -> torch.Tensor:
    """``freq_masks`` frequency bands of at most ``freq_mask`` bins and ``time_masks`` time spans of at most
    ``time_mask`` frames per sample, drawn independently (they may overlap); masked values become 0 (the mean after
    normalisation). Each mask's width is uniform in [0, max) and its start uniform over where it fits: torchaudio's
    FrequencyMasking/TimeMasking (one of each, as CAV-MAE applies them) and lingvo's SpectrumAugmenter._GetMask
    (tensorflow/lingvo, lingvo/core/spectrum_augmenter.py: width floor(U * max), start floor(U * (length - width
    + 1))), which Scenic's fine-tuning uses with several masks."""
    batch, frames, bins = audio.shape
    device = _draw_device(audio, generator)
    keep = torch.ones_like(audio, dtype=torch.bool)
    for size, count, axis_length, dim in ((freq_mask, freq_masks, bins, 2), (time_mask, time_masks, frames, 1)):
        if size <= 0 or count <= 0:
            continue
        masked = _bands(batch, count, size, axis_length, generator, device).any(dim=1)  # (batch, axis_length)
        shape = (batch, 1, axis_length) if dim == 2 else (batch, axis_length, 1)
        keep &= ~_on(masked.view(shape), audio.device)
    return audio * keep


def _bands(batch: int, count: int, size: int, axis_length: int, generator, device) -> torch.Tensor:
    """(batch, count, axis_length) booleans: ``count`` bands per sample, each of width uniform in
    [0, min(size, axis_length)) and start uniform over [0, axis_length - width]."""
    width = (torch.rand(batch, count, generator=generator, device=device) * min(size, axis_length)).long()
    start = (torch.rand(batch, count, generator=generator, device=device) * (axis_length - width + 1).float()).long()
    position = torch.arange(axis_length, device=device)
    return (position >= start[..., None]) & (position < (start + width)[..., None])


def circular_time_shift(audio: torch.Tensor, generator=None) -> torch.Tensor:
    """Roll each sample's log-mel along time by its own shift, uniform over [0, frames): ``torch.roll`` per sample,
    out[t] = in[t - shift]. Scenic's ``circular_time_shift`` (scenic/projects/av_mae/datasets/dataset_utils.py,
    _decode_spectrogram: tf.roll by tf.random.uniform(maxval=frames)), which it applies before SpecAugment."""
    batch, frames, _ = audio.shape
    shift = torch.randint(0, frames, (batch, 1), generator=generator, device=_draw_device(audio, generator))
    return _roll_each(audio, shift)


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
    return _roll_each(noisy, shift)


def _roll_each(audio: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``torch.roll(audio[i], shift[i], dims=0)`` for every sample i, as one gather (shift: (batch, 1))."""
    frames = audio.shape[1]
    source = (torch.arange(frames, device=shift.device)[None, :] - shift) % frames
    return torch.gather(audio, 1, _on(source, audio.device)[:, :, None].expand_as(audio))  # out[t] = in[t - shift]


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


def mixup(batch: dict, heads: dict[str, int], probability: float, alpha: float = 10.0, generator=None,
          scope: str = "sample", per_modality: bool = False) -> dict:
    """With ``probability`` (1 = every batch), mix the batch's audio, video and targets with a partner sample, with
    weights lambda ~ Beta(alpha, alpha):

    - ``scope`` "sample" (CAV-MAE): each sample's partner is a random one of the batch and each sample has its own
      lambda (CAV-MAE: Beta(10, 10));
    - ``scope`` "batch" (Scenic's mixup_modalities, scenic/projects/av_mae/train_utils.py): the partner is the
      reversed batch (sample i with sample B-1-i) and one lambda serves the whole batch (Scenic: Beta(0.5, 0.5)).

    ``per_modality`` (Scenic's ``mixmod``) draws the audio's and the video's lambdas independently; each modality's
    targets are mixed with its own lambda, and there are no joint targets (Scenic keeps a joint label only without
    mixmod; its MBT loss scores each modality's logits against that modality's label).

    Adds ``targets_by_modality`` ({"audio"|"video": {head: soft targets}}) and, unless ``per_modality``,
    ``targets`` ({head: soft targets}, the same as either modality's); when mixed, also ``mixup_partner`` (B,) and
    ``mixup_lambda`` (B,) per sample, the audio's (``mixup_lambda_by_modality`` holds both)."""
    targets = targets_of(batch, heads)
    if probability <= 0 or (probability < 1 and torch.rand((), generator=generator) >= probability):
        return {**batch, "targets": targets, "targets_by_modality": {m: targets for m in MODALITIES}}
    size = batch["audio"].shape[0]
    device = _draw_device(batch["audio"], generator)
    if scope == "sample":
        partner = torch.randperm(size, generator=generator, device=device)
    elif scope == "batch":
        partner = torch.arange(size - 1, -1, -1, device=device)
    else:
        raise ValueError(f"augment.mixup_scope must be 'sample' or 'batch', got {scope!r}")
    lambdas = _beta(alpha, len(MODALITIES) if per_modality else 1, 1 if scope == "batch" else size, device)
    lam = {m: lambdas[i if per_modality else 0].expand(size) for i, m in enumerate(MODALITIES)}
    out = dict(batch)
    for name in MODALITIES:
        x = batch[name]
        weight = _on(lam[name], x.device).view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
        out[name] = weight * x + (1 - weight) * x[_on(partner, x.device)]
    out["targets_by_modality"] = {m: _mixed(targets, lam[m], partner) for m in MODALITIES}
    if per_modality:
        out.pop("targets", None)
    else:
        out["targets"] = out["targets_by_modality"]["audio"]
    out["mixup_lambda"], out["mixup_partner"] = lam["audio"], partner
    out["mixup_lambda_by_modality"] = lam
    return out


def _beta(alpha: float, rows: int, columns: int, device: torch.device) -> torch.Tensor:
    """(rows, columns) draws of Beta(alpha, alpha), float32 on ``device`` (torch's Beta sampler takes no generator:
    it draws from the device's default one)."""
    concentration = torch.full((), alpha, device=device)  # float32, as Beta(alpha, alpha) makes it
    return torch.distributions.Beta(concentration, concentration).sample((rows, columns))


def _mixed(targets: dict[str, torch.Tensor], lam: torch.Tensor, partner: torch.Tensor) -> dict[str, torch.Tensor]:
    """Each head's targets mixed with weight ``lam`` (B,) and the partner's."""
    out = {}
    for name, t in targets.items():
        weight = _on(lam, t.device)[:, None]
        out[name] = weight * t + (1 - weight) * t[_on(partner, t.device)]
    return out
