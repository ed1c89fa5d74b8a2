"""Masks for MAE pretraining. Every strategy masks the same number of tokens in each sample, so the visible
tokens of a batch stack into one tensor and the encoder runs on them alone.

A mask is a bool tensor (B, N), True = masked (hidden from the encoder, reconstructed by the decoder).
"""

from __future__ import annotations

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
    the rows and of the columns, methods.md A.1) on the (time x mel) token grid."""
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


def visible_indices(mask: torch.Tensor) -> torch.Tensor:
    """(B, n_visible) indices of the unmasked tokens, in their original order."""
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
    visible = int((~mask[0]).sum())
    return order[:, :visible]


def gather_tokens(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """x (B, N, D) at indices (B, n) -> (B, n, D)."""
    return torch.gather(x, 1, indices.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
