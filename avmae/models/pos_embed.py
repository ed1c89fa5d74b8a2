"""Fixed sin-cos position embeddings built per axis of a token grid, so any grid size works without re-training
(CAV-MAE and AudioMAE store a table of one size, and users with other clip lengths must cut it)."""

from __future__ import annotations

import functools

import torch


def sincos_1d(positions: torch.Tensor, channels: int) -> torch.Tensor:
    """(len(positions), channels): half sines, half cosines at geometric frequencies (MAE's 1-D table)."""
    if channels % 2:
        raise ValueError(f"sin-cos embedding needs an even channel count, got {channels}")
    omega = 1.0 / 10000 ** (torch.arange(channels // 2, dtype=torch.float64, device=positions.device) / (channels / 2))
    angles = positions.to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


def axis_channels(width: int, axes: int) -> list[int]:
    """Channels per axis: even shares, the first axis (time) takes what is left over."""
    share = (width // (2 * axes)) * 2
    return [width - share * (axes - 1)] + [share] * (axes - 1)


# The tables are built on the CPU whatever the default device is (a model built under torch.device("meta") must not
# leave meta tensors in the cache).
@functools.lru_cache(maxsize=32)
def _grid_table(grid: tuple[int, ...], width: int) -> torch.Tensor:
    parts = []
    mesh = torch.meshgrid(*(torch.arange(n, device="cpu") for n in grid), indexing="ij")
    for coordinate, channels in zip(mesh, axis_channels(width, len(grid))):
        parts.append(sincos_1d(coordinate.reshape(-1), channels))
    return torch.cat(parts, dim=1).to(torch.float32)


def grid_pos_embed(grid: tuple[int, ...], width: int, device=None, dtype=None) -> torch.Tensor:
    """(1, prod(grid), width) embedding for tokens of a row-major grid (time-major for audio and video)."""
    return _grid_table(tuple(grid), width).to(device=device, dtype=dtype).unsqueeze(0)


@functools.lru_cache(maxsize=8)
def mae_2d_pos_embed(rows: int, columns: int, width: int) -> torch.Tensor:
    """(1, rows * columns, width) for a row-major grid, exactly as MAE's / CAV-MAE's ``get_2d_sincos_pos_embed``:
    ``np.meshgrid(w, h)`` puts the column index first, so the first half of the channels encodes the column and the
    second half the row (facebookresearch/mae util/pos_embed.py)."""
    if width % 4:
        raise ValueError(f"MAE's 2-D sin-cos table needs a width divisible by 4, got {width}")
    row, column = torch.meshgrid(torch.arange(rows, device="cpu"), torch.arange(columns, device="cpu"), indexing="ij")
    table = torch.cat([sincos_1d(column.reshape(-1), width // 2), sincos_1d(row.reshape(-1), width // 2)], dim=1)
    return table.to(torch.float32).unsqueeze(0)


@functools.lru_cache(maxsize=32)
def flat_1d_table(tokens: int, width: int) -> torch.Tensor:
    """(1, tokens, width) Scenic's fixed 1-D table over the flat token index n (``sinusoidal_init`` in
    google-research/scenic scenic/model_lib/layers/attention_layers.py, used by Add1DPositionEmbedding):
    channel 2i = sin(n w_i), channel 2i+1 = cos(n w_i), w_i = exp(-2i ln(10000) / width). Computed in float64 with
    numpy as Scenic does, then stored as float32, so the values are Scenic's own."""
    import numpy as np

    if width % 2:
        raise ValueError(f"the 1-D sin-cos table needs an even width (sin and cos pairs), got {width}")
    position = np.arange(tokens, dtype=np.float64)[:, None]
    frequency = np.exp(np.arange(0, width, 2, dtype=np.float64) * -(np.log(10000.0) / width))
    table = np.zeros((tokens, width), dtype=np.float32)
    table[:, 0::2] = np.sin(position * frequency)
    table[:, 1::2] = np.cos(position * frequency)
    return torch.from_numpy(table).unsqueeze(0)
