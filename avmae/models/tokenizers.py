"""Inputs to tokens and back: audio 16x16 patches of the log-mel, video 2x16x16 tubelets of the frames.

Token order is time-major for both (audio: time then mel; video: time, row, column), so a sin-cos position built
per axis and the per-patch targets line up with the tokens. The patch embedding plus position plus a learned
modality embedding is what the encoder sees.
"""

from __future__ import annotations

import torch
from torch import nn

from avmae.models.config import ModelConfig
from avmae.models.pos_embed import grid_pos_embed


def audio_grid(frames: int, mel_bins: int, patch: int) -> tuple[int, int]:
    return frames // patch, mel_bins // patch


def video_grid(frames: int, height: int, width: int, patch: int, tubelet: int) -> tuple[int, int, int]:
    return frames // tubelet, height // patch, width // patch


def patchify_audio(audio: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, time, mel) -> (B, tokens, patch*patch), tokens time-major."""
    batch, frames, mel = audio.shape
    t, f = frames // patch, mel // patch
    x = audio[:, : t * patch, : f * patch].reshape(batch, t, patch, f, patch)
    return x.permute(0, 1, 3, 2, 4).reshape(batch, t * f, patch * patch)


def unpatchify_audio(patches: torch.Tensor, grid: tuple[int, int], patch: int) -> torch.Tensor:
    batch = patches.shape[0]
    t, f = grid
    x = patches.reshape(batch, t, f, patch, patch).permute(0, 1, 3, 2, 4)
    return x.reshape(batch, t * patch, f * patch)


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


class Tokenizer(nn.Module):
    """Patch embeddings, position embeddings and modality embeddings of both modalities."""

    def __init__(self, config: ModelConfig, width: int):
        super().__init__()
        self.config = config
        self.width = width
        self.audio_embed = nn.Conv2d(1, width, kernel_size=config.audio.patch, stride=config.audio.patch)
        kernel = (config.video.tubelet, config.video.patch, config.video.patch)
        self.video_embed = nn.Conv3d(3, width, kernel_size=kernel, stride=kernel)
        if config.modality_embeddings:
            self.audio_type = nn.Parameter(torch.zeros(1, 1, width))
            self.video_type = nn.Parameter(torch.zeros(1, 1, width))
            nn.init.normal_(self.audio_type, std=0.02)
            nn.init.normal_(self.video_type, std=0.02)
        for conv in (self.audio_embed, self.video_embed):  # MAE: initialise like a Linear layer
            nn.init.xavier_uniform_(conv.weight.view(conv.weight.shape[0], -1))
            nn.init.zeros_(conv.bias)

    def audio(self, audio: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, time, mel) -> tokens (B, N, width) and the token grid."""
        x = self.audio_embed(audio.unsqueeze(1))  # (B, width, t, f)
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2) + grid_pos_embed(grid, self.width, x.device, x.dtype)
        if self.config.modality_embeddings:
            x = x + self.audio_type
        return x, grid

    def video(self, video: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """(B, T, 3, H, W) -> tokens (B, N, width) and the token grid."""
        x = self.video_embed(video.transpose(1, 2))  # (B, width, t, h, w)
        grid = (x.shape[2], x.shape[3], x.shape[4])
        x = x.flatten(2).transpose(1, 2) + grid_pos_embed(grid, self.width, x.device, x.dtype)
        if self.config.modality_embeddings:
            x = x + self.video_type
        return x, grid
