"""Masks for MAE pretraining. Every strategy masks the same number of tokens in each sample, so the visible
tokens of a batch stack into one tensor and the encoder runs on them alone.

A mask is a bool tensor (B, N), True = masked (hidden from the encoder, reconstructed by the decoder).
"""

from __future__ import annotations

import math

import torch


def masked_count(tokens: int, ratio: float) -> int:
    """AV-MAE masks int(ratio * N) tokens (scenic model_utils.get_mask_indices)."""
    return int(ratio * tokens)


def _lowest(scores: torch.Tensor, count: int) -> torch.Tensor:
    """True at the ``count`` lowest scores of each row."""
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return ranks < count


def random_mask(batch: int, tokens: int, ratio: float, generator=None, device=None) -> torch.Tensor:
    noise = torch.rand(batch, tokens, generator=generator, device=device)
    return _lowest(noise, masked_count(tokens, ratio))


def tube_mask(batch: int, grid: tuple[int, int, int], ratio: float, generator=None, device=None) -> torch.Tensor:
    """VideoMAE tube masking: one random spatial mask, the same at every time step."""
    t, h, w = grid
    spatial = random_mask(batch, h * w, ratio, generator, device)
    return spatial.unsqueeze(1).expand(batch, t, h * w).reshape(batch, t * h * w)


def audio_structured_mask(batch: int, grid: tuple[int, int], ratio: float, mode: str, generator=None,
                          device=None) -> torch.Tensor:
    """Whole time columns (``time``), whole mel rows (``freq``), or both (``time_freq``: CAV-MAE masks 0.7*ratio of
    the rows and of the columns, YuanGongND/cav-mae src/models/cav_mae.py) on the (time x mel) token grid."""
    t, f = grid
    if mode == "time":
        columns, rows = random_mask(batch, t, ratio, generator, device), torch.zeros(batch, f, dtype=torch.bool, device=device)
    elif mode == "freq":
        columns, rows = torch.zeros(batch, t, dtype=torch.bool, device=device), random_mask(batch, f, ratio, generator, device)
    elif mode == "time_freq":
        columns = random_mask(batch, t, 0.7 * ratio, generator, device)
        rows = random_mask(batch, f, 0.7 * ratio, generator, device)
    else:
        raise ValueError(f"unknown audio mask mode {mode!r}")
    return (columns[:, :, None] | rows[:, None, :]).reshape(batch, t * f)


def visible_count(grid: tuple[int, ...], ratio: float, mode: str) -> int:
    """Tokens each sample keeps visible under a mask strategy, from the grid alone (no mask read): every strategy
    masks the same count in every sample. ``grid``: (time, mel) for audio modes, (t, h, w) for video ones."""
    tokens = math.prod(grid)
    if mode == "random":
        return tokens - masked_count(tokens, ratio)
    if mode == "tube":
        t, h, w = grid
        return t * (h * w - masked_count(h * w, ratio))
    t, f = grid
    if mode == "time":
        return (t - masked_count(t, ratio)) * f
    if mode == "freq":
        return t * (f - masked_count(f, ratio))
    if mode == "time_freq":
        return (t - masked_count(t, 0.7 * ratio)) * (f - masked_count(f, 0.7 * ratio))
    raise ValueError(f"unknown mask mode {mode!r}")


def injected_visible_count(mask: torch.Tensor, expected: int, name: str) -> int:
    """The visible count of a mask the caller made. A mask on the CPU is read (that waits on nothing) and checked
    to keep one count in every sample; a mask on an accelerator is not read, since that would make the step wait
    on the device: it must keep ``expected`` tokens per sample, which a device-side assertion checks."""
    kept = (~mask).sum(dim=1)
    if mask.device.type == "cpu":
        counts = sorted(set(kept.tolist()))
        if len(counts) != 1:
            raise ValueError(f"the {name} mask keeps a different number of tokens in different samples ({counts}); "
                             "the visible tokens of a batch must stack")
        return counts[0]
    torch._assert_async((kept == expected).all(), f"the {name} mask must keep {expected} visible tokens per sample")
    return expected


def visible_indices(mask: torch.Tensor, count: int | None = None) -> torch.Tensor:
    """(B, count) indices of the unmasked tokens, in their original order. ``count``: the visible tokens per
    sample, known without reading the mask (``visible_count``); without it the mask is read, which on an
    accelerator waits for the device, so a forward pass always gives it."""
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
    if count is None:
        count = int((~mask[0]).sum())
    return order[:, :count]


def mask_from_visible(visible: torch.Tensor, tokens: int) -> torch.Tensor:
    """(B, tokens) bool mask, True = masked, from (B, n) visible indices."""
    mask = torch.ones(visible.shape[0], tokens, dtype=torch.bool, device=visible.device)
    return mask.scatter(1, visible, False)


def gather_tokens(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """x (B, N, D) at indices (B, n) -> (B, n, D)."""
    return torch.gather(x, 1, indices.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
