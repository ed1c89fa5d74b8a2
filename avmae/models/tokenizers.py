"""Inputs to tokens and back: audio 16x16 patches of the log-mel, video 2x16x16 tubelets of the frames.

Token order is time-major for both (audio: time then mel; video: time, row, column), so a sin-cos position built
per axis and the per-patch targets line up with the tokens. Audio can instead be frequency-major (CAV-MAE: the
log-mel is transposed to (mel, time) before patching, YuanGongND/cav-mae src/models/cav_mae.py); a token grid is always given as (time, mel).
The patch embedding plus position plus a learned modality embedding is what the encoder sees.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from avmae.models.config import ModelConfig
from avmae.models.pos_embed import flat_1d_table, grid_pos_embed, mae_2d_pos_embed
from avmae.models.scenic_init import init_patch_embedding


def audio_grid(frames: int, mel_bins: int, patch: int) -> tuple[int, int]:
    return frames // patch, mel_bins // patch


def video_grid(frames: int, height: int, width: int, patch: int, tubelet: int) -> tuple[int, int, int]:
    return frames // tubelet, height // patch, width // patch


def _patchify_2d(image: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, H, W) -> (B, tokens, patch*patch), tokens row-major, each patch flattened row-major."""
    batch, height, width = image.shape
    rows, columns = height // patch, width // patch
    x = image[:, : rows * patch, : columns * patch].reshape(batch, rows, patch, columns, patch)
    return x.permute(0, 1, 3, 2, 4).reshape(batch, rows * columns, patch * patch)


def _unpatchify_2d(patches: torch.Tensor, rows: int, columns: int, patch: int) -> torch.Tensor:
    x = patches.reshape(patches.shape[0], rows, columns, patch, patch).permute(0, 1, 3, 2, 4)
    return x.reshape(patches.shape[0], rows * patch, columns * patch)


def patchify_audio(audio: torch.Tensor, patch: int, order: str = "time_major") -> torch.Tensor:
    """(B, time, mel) -> (B, tokens, patch*patch). time_major: tokens (time, mel), patches flattened (time, mel);
    freq_major: both (mel, time), as CAV-MAE patchifies its transposed input."""
    return _patchify_2d(audio.transpose(1, 2) if order == "freq_major" else audio, patch)


def unpatchify_audio(patches: torch.Tensor, grid: tuple[int, int], patch: int, order: str = "time_major") -> torch.Tensor:
    """The inverse of ``patchify_audio``; ``grid`` is (time, mel) tokens in either order."""
    t, f = grid
    if order == "freq_major":
        return _unpatchify_2d(patches, f, t, patch).transpose(1, 2)
    return _unpatchify_2d(patches, t, f, patch)


def to_audio_order(x: torch.Tensor, grid: tuple[int, int], order: str) -> torch.Tensor:
    """Rows of x (B, t*f, ...) from time-major to ``order`` (masks and position tables are built time-major)."""
    if order == "time_major":
        return x
    t, f = grid
    return x.reshape(x.shape[0], t, f, *x.shape[2:]).transpose(1, 2).reshape(x.shape)


def patchify_video(video: torch.Tensor, patch: int, tubelet: int) -> torch.Tensor:
    """(B, T, 3, H, W) -> (B, tokens, tubelet*patch*patch*3), tokens time-major then row then column."""
    batch, frames, channels, height, width = video.shape
    t, h, w = frames // tubelet, height // patch, width // patch
    x = video[:, : t * tubelet, :, : h * patch, : w * patch]
    x = x.reshape(batch, t, tubelet, channels, h, patch, w, patch)
    return x.permute(0, 1, 4, 6, 2, 5, 7, 3).reshape(batch, t * h * w, tubelet * patch * patch * channels)


def unpatchify_video(patches: torch.Tensor, grid: tuple[int, int, int], patch: int, tubelet: int) -> torch.Tensor:
    batch = patches.shape[0]
    t, h, w = grid
    x = patches.reshape(batch, t, h, w, tubelet, patch, patch, 3).permute(0, 1, 4, 7, 2, 5, 3, 6)
    return x.reshape(batch, t * tubelet, 3, h * patch, w * patch)


@functools.lru_cache(maxsize=32)
def _sincos_positions(modality: str, grid: tuple[int, ...], width: int, audio_order: str, video_axes: str,
                      kind: str = "grid") -> torch.Tensor:
    if kind == "flat_1d":  # over the flat index of the tokens in the order they come, whatever the grid
        return flat_1d_table(math.prod(grid), width)
    if modality == "audio":
        return to_audio_order(grid_pos_embed(grid, width), grid, audio_order)
    if video_axes == "column_row":
        t, h, w = grid
        if t != 1:
            raise ValueError(f"MAE's 2-D video position table has no time axis; got {t} temporal token slices")
        return mae_2d_pos_embed(h, w, width)
    return grid_pos_embed(grid, width)


def sincos_positions(modality: str, grid: tuple[int, ...], width: int, config: ModelConfig) -> torch.Tensor:
    """(1, tokens, width) fixed sin-cos embedding of a modality's token grid, rows in token order (float32, CPU)."""
    return _sincos_positions(modality, tuple(grid), width, config.audio.token_order, config.pos_embed.video_axes,
                             config.pos_embed.kind)


def configured_grids(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The token grids of the configured input sizes (what stored position tables are made for)."""
    a, v = config.audio, config.video
    return {"audio": audio_grid(a.frames, a.mel_bins, a.patch),
            "video": video_grid(v.frames, v.size, v.size, v.patch, v.tubelet)}


def _in_words(size: tuple[int, ...]) -> str:
    return f"{size[0]} frames x {size[1]} mel bins" if len(size) == 2 else f"{size[0]} frames at {size[1]}x{size[2]} px"


def check_input_size(modality: str, size: tuple[int, ...], config: ModelConfig) -> None:
    """Refuse an input whose size is not the one ``model.audio`` / ``model.video`` describe (audio: frames x mel bins;
    video: frames x height x width), naming both, unless ``model.other_grids`` asks for other sizes on purpose.
    Without it a loader set for 4 frames at 96 px would train a model configured for 8 at 64 without a word."""
    a, v = config.audio, config.video
    wanted = {"audio": (a.frames, a.mel_bins), "video": (v.frames, v.size, v.size)}[modality]
    if tuple(size) == wanted or config.other_grids:
        return
    raise ValueError(f"model.{modality} is {_in_words(wanted)} but the input is {_in_words(size)}: feed the "
                     "configured size (the loader follows the model config) or set model.other_grids: true to take "
                     "other sizes on purpose")


class Positions(nn.Module):
    """Position embeddings of both modalities at one width: computed for any grid, or stored tables of the
    configured grids (``pos_embed.stored``), initialised to the same sin-cos.

    Computed tables are built on the CPU once and kept here per (modality, grid, device, dtype), so a forward after
    the first copies nothing from the host: a host-to-device copy in every step would make the step wait on it.
    The copies are not buffers (they would enter the state dict and be stored in every checkpoint)."""

    CACHE_ENTRIES = 16  # grids x devices x dtypes that a model sees; more only with other_grids on many sizes

    def __init__(self, config: ModelConfig, width: int):
        super().__init__()
        self.config, self.width = config, width
        self.grids = configured_grids(config)
        self.stored = config.pos_embed.stored
        self._on_device: dict[tuple, torch.Tensor] = {}
        if self.stored:
            self.audio = nn.Parameter(sincos_positions("audio", self.grids["audio"], width, config).clone(),
                                      requires_grad=config.pos_embed.trainable)
            self.video = nn.Parameter(sincos_positions("video", self.grids["video"], width, config).clone(),
                                      requires_grad=config.pos_embed.trainable)

    def forward(self, modality: str, grid: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        if not self.stored:
            key = (modality, tuple(grid), like.device, like.dtype)
            table = self._on_device.get(key)
            if table is None:
                if len(self._on_device) >= self.CACHE_ENTRIES:
                    self._on_device.clear()
                table = sincos_positions(modality, grid, self.width, self.config).to(like.device, like.dtype)
                self._on_device[key] = table
            return table
        if tuple(grid) != self.grids[modality]:
            raise ValueError(f"this model stores {modality} position embeddings for a {self.grids[modality]} token "
                             f"grid (pos_embed.stored) and cannot take a {tuple(grid)} one; give inputs of the "
                             "configured size")
        return getattr(self, modality).to(like.dtype)


class Tokenizer(nn.Module):
    """Patch embeddings, position embeddings and modality embeddings of both modalities."""

    def __init__(self, config: ModelConfig, width: int):
        super().__init__()
        self.config = config
        self.width = width
        self.audio_embed = nn.Conv2d(1, width, kernel_size=config.audio.patch, stride=config.audio.patch)
        kernel = (config.video.tubelet, config.video.patch, config.video.patch)
        self.video_embed = nn.Conv3d(3, width, kernel_size=kernel, stride=kernel)
        self.position = Positions(config, width)
        if config.modality_embeddings:
            self.audio_type = nn.Parameter(torch.zeros(1, 1, width))
            self.video_type = nn.Parameter(torch.zeros(1, 1, width))
            nn.init.normal_(self.audio_type, std=0.02)
            nn.init.normal_(self.video_type, std=0.02)
        for conv in (self.audio_embed, self.video_embed):
            if config.init == "scenic":  # flax nn.Conv's default, LeCun normal
                init_patch_embedding(conv)
            else:  # MAE: initialise like a Linear layer
                nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
                nn.init.zeros_(conv.bias)

    def audio(self, audio: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, time, mel) -> tokens (B, N, width) and the token grid (time, mel)."""
        check_input_size("audio", audio.shape[1:], self.config)
        spectrogram = audio.unsqueeze(1)  # (B, 1, time, mel)
        freq_major = self.config.audio.token_order == "freq_major"
        if freq_major:  # CAV-MAE: unsqueeze(1).transpose(2, 3), a (mel x time) image; its kernels load unchanged
            spectrogram = spectrogram.transpose(2, 3)
        x = self.audio_embed(spectrogram)  # (B, width, rows, columns)
        grid = (x.shape[3], x.shape[2]) if freq_major else (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2) + self.position("audio", grid, x)
        if self.config.modality_embeddings:
            x = x + self.audio_type
        return x, grid

    def video(self, video: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """(B, T, 3, H, W) -> tokens (B, N, width) and the token grid."""
        check_input_size("video", (video.shape[1], *video.shape[3:]), self.config)
        x = self.video_embed(video.transpose(1, 2))  # (B, width, t, h, w)
        grid = (x.shape[2], x.shape[3], x.shape[4])
        x = x.flatten(2).transpose(1, 2) + self.position("video", grid, x)
        if self.config.modality_embeddings:
            x = x + self.video_type
        return x, grid
