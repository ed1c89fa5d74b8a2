"""Fixed sin-cos position embeddings built per axis of a token grid, so any grid size works without re-training
(CAV-MAE and AudioMAE store a table of one size, and users with other clip lengths must cut it, methods.md F.7)."""

from __future__ import annotations

import functools

import torch


def sincos_1d(positions: torch.Tensor, channels: int) -> torch.Tensor:
    """(len(positions), channels): half sines, half cosines at geometric frequencies (MAE's 1-D table)."""
    if channels % 2:
        raise ValueError(f"sin-cos embedding needs an even channel count, got {channels}")
    omega = 1.0 / 10000 ** (torch.arange(channels // 2, dtype=torch.float64) / (channels / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def axis_channels(width: int, axes: int) -> list[int]:
    """Channels per axis: even shares, the first axis (time) takes what is left over."""
    share = (width // (2 * axes)) * 2
    return [width - share * (axes - 1)] + [share] * (axes - 1)


@functools.lru_cache(maxsize=32)
def _grid_table(grid: tuple[int, ...], width: int) -> torch.Tensor:
    parts = []
    mesh = torch.meshgrid(*(torch.arange(n) for n in grid), indexing="ij")
    for coordinate, channels in zip(mesh, axis_channels(width, len(grid))):
        parts.append(sincos_1d(coordinate.reshape(-1), channels))
    return torch.cat(parts, dim=1).to(torch.float32)


def grid_pos_embed(grid: tuple[int, ...], width: int, device=None, dtype=None) -> torch.Tensor:
    """(1, prod(grid), width) embedding for tokens of a row-major grid (time-major for audio and video)."""
    return _grid_table(tuple(grid), width).to(device=device, dtype=dtype).unsqueeze(0)
