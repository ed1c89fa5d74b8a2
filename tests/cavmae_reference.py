"""An independent CAV-MAE (YuanGongND/cav-mae ``src/models/cav_mae.py``), written here from the description in
docs/reference/cavmae.md (#architecture, #checkpoint-keys), not from its code: CAV-MAE's own parameter names, its MAE
masking, joint decoder, losses and fine-tuning modes. The parity tests fill it with random weights, save it as CAV-MAE
saves checkpoints and compare avmae's converted models with it output by output."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# --- the reference: CAV-MAE as docs/reference/cavmae.md describes it ----------------------------------------------


def reference_2d_sincos(width: int, rows: int, columns: int) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed for a rows x columns grid, tokens row-major: meshgrid(columns, rows) makes the
    column coordinate the first of the two, so the first width/2 channels encode the column (for CAV-MAE's audio
    grid of 8 frequency rows x 64 time columns: time first, docs/reference/cavmae.md#architecture)."""
    grid = np.meshgrid(np.arange(columns, dtype=np.float32), np.arange(rows, dtype=np.float32))  # 'xy' indexing

    def one_axis(channels: int, positions: np.ndarray) -> np.ndarray:
        omega = np.arange(channels // 2, dtype=np.float64) / (channels / 2.0)
        omega = 1.0 / 10000 ** omega
        angles = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([one_axis(width // 2, grid[0]), one_axis(width // 2, grid[1])], axis=1)


class PatchEmbed(nn.Module):
    def __init__(self, channels: int, width: int, patch: int = 16):
        super().__init__()
        self.proj = nn.Conv2d(channels, width, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=True)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        weights = (q @ k.transpose(-2, -1) * (width // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, width))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Three LayerNorm pairs: joint stream (norm1/norm2), audio alone (_a), visual alone (_v)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1, self.norm1_a, self.norm1_v = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2, self.norm2_a, self.norm2_v = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x, modality=None):
        norm1, norm2 = {None: (self.norm1, self.norm2), "a": (self.norm1_a, self.norm2_a),
                        "v": (self.norm1_v, self.norm2_v)}[modality]
        x = x + self.attn(norm1(x))
        return x + self.mlp(norm2(x))


class Encoder(nn.Module):
    """What CAVMAE and CAVMAEFT share: embeddings, blocks_a/blocks_v (11), blocks_u (1), norm_a/norm_v/norm."""

    def __init__(self, width=768, depth=12, specific=11, heads=12, frames=1024, mel=128, image=224):
        super().__init__()
        self.grid_a = (mel // 16, frames // 16)  # (frequency rows, time columns): frequency-major tokens
        self.grid_v = (image // 16, image // 16)
        self.patch_embed_a = PatchEmbed(1, width)
        self.patch_embed_v = PatchEmbed(3, width)
        self.modality_a = nn.Parameter(torch.zeros(1, 1, width))
        self.modality_v = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed_a = nn.Parameter(torch.zeros(1, math.prod(self.grid_a), width), requires_grad=False)
        self.pos_embed_v = nn.Parameter(torch.zeros(1, math.prod(self.grid_v), width), requires_grad=False)
        self.blocks_a = nn.ModuleList(Block(width, heads) for _ in range(specific))
        self.blocks_v = nn.ModuleList(Block(width, heads) for _ in range(specific))
        self.blocks_u = nn.ModuleList(Block(width, heads) for _ in range(depth - specific))
        self.norm_a, self.norm_v, self.norm = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.pos_embed_a.data.copy_(torch.from_numpy(reference_2d_sincos(width, *self.grid_a)).float().unsqueeze(0))
        self.pos_embed_v.data.copy_(torch.from_numpy(reference_2d_sincos(width, *self.grid_v)).float().unsqueeze(0))

    def embed(self, a, v):
        """a (B, 1024 time, 128 mel), v (B, 3, 224, 224) -> tokens with position and modality embeddings."""
        a = self.patch_embed_a(a.unsqueeze(1).transpose(2, 3)) + self.pos_embed_a + self.modality_a
        v = self.patch_embed_v(v) + self.pos_embed_v + self.modality_v
        return a, v

    def specific(self, a, v):
        for block in self.blocks_a:
            a = block(a)
        for block in self.blocks_v:
            v = block(v)
        return a, v

    def joint(self, x, modality=None):
        for block in self.blocks_u:
            x = block(x, modality)
        return {None: self.norm, "a": self.norm_a, "v": self.norm_v}[modality](x)


def random_masking(x, ratio, noise):
    """MAE's argsort-noise masking: keep int(L (1 - ratio)) tokens of lowest noise, in that (noise) order."""
    batch, tokens, width = x.shape
    keep = int(tokens * (1 - ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).repeat(1, 1, width))
    mask = torch.ones(batch, tokens, dtype=x.dtype)
    mask[:, :keep] = 0
    return kept, torch.gather(mask, 1, ids_restore), ids_restore, ids_keep


def patchify(images, channels, rows, columns, p=16):
    x = images.reshape(images.shape[0], channels, rows, p, columns, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(images.shape[0], rows * columns, p * p * channels)


class CAVMAE(Encoder):
    def __init__(self, decoder_width=512, decoder_depth=8, decoder_heads=16, **encoder):
        super().__init__(**encoder)
        width = self.norm.normalized_shape[0]
        self.decoder_embed = nn.Linear(width, decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_width))
        self.decoder_modality_a = nn.Parameter(torch.zeros(1, 1, decoder_width))
        self.decoder_modality_v = nn.Parameter(torch.zeros(1, 1, decoder_width))
        self.decoder_pos_embed_a = nn.Parameter(torch.zeros(1, math.prod(self.grid_a), decoder_width), requires_grad=False)
        self.decoder_pos_embed_v = nn.Parameter(torch.zeros(1, math.prod(self.grid_v), decoder_width), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(Block(decoder_width, decoder_heads) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_width)
        self.decoder_pred_a = nn.Linear(decoder_width, 16 * 16)
        self.decoder_pred_v = nn.Linear(decoder_width, 16 * 16 * 3)
        self.decoder_pos_embed_a.data.copy_(torch.from_numpy(reference_2d_sincos(decoder_width, *self.grid_a)).float()[None])
        self.decoder_pos_embed_v.data.copy_(torch.from_numpy(reference_2d_sincos(decoder_width, *self.grid_v)).float()[None])

    def forward_encoder(self, a, v, noise_a, noise_v, ratio_a, ratio_v):
        a, v = self.embed(a, v)
        a, mask_a, restore_a, keep_a = random_masking(a, ratio_a, noise_a)
        v, mask_v, restore_v, keep_v = random_masking(v, ratio_v, noise_v)
        a, v = self.specific(a, v)
        x = self.joint(torch.cat((a, v), dim=1))
        ca, cv = self.joint(a, "a"), self.joint(v, "v")
        return x, ca, cv, (mask_a, restore_a, keep_a), (mask_v, restore_v, keep_v)

    def forward_decoder(self, x, mask_a, restore_a, mask_v, restore_v):
        x = self.decoder_embed(x)
        n_a = mask_a.shape[1]
        kept_a = n_a - int(mask_a[0].sum())
        a_ = torch.cat([x[:, :kept_a], self.mask_token.repeat(x.shape[0], int(mask_a[0].sum()), 1)], dim=1)
        a_ = torch.gather(a_, 1, restore_a.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        v_ = torch.cat([x[:, kept_a:], self.mask_token.repeat(x.shape[0], int(mask_v[0].sum()), 1)], dim=1)
        v_ = torch.gather(v_, 1, restore_v.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([a_, v_], dim=1) + torch.cat([self.decoder_pos_embed_a, self.decoder_pos_embed_v], dim=1)
        x = torch.cat([x[:, :n_a] + self.decoder_modality_a, x[:, n_a:] + self.decoder_modality_v], dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_norm(x)
        return self.decoder_pred_a(x[:, :n_a]), self.decoder_pred_v(x[:, n_a:])

    def forward_mae_loss(self, target, pred, mask):
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5  # norm_pix_loss=True
        loss = ((pred - target) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    @staticmethod
    def forward_contrastive(audio_rep, video_rep):
        """Single direction: log-softmax over audios (dim 0) of each visual column, temperature 0.05."""
        total = F.normalize(audio_rep, dim=-1) @ F.normalize(video_rep, dim=-1).T / 0.05
        return -torch.mean(torch.diag(F.log_softmax(total, dim=0)))

    def forward(self, audio, imgs, noise_a, noise_v, ratio_a=0.75, ratio_v=0.75, mae_weight=1.0, contrast_weight=0.01):
        x, ca, cv, (mask_a, restore_a, keep_a), (mask_v, restore_v, keep_v) = self.forward_encoder(
            audio, imgs, noise_a, noise_v, ratio_a, ratio_v)
        pred_a, pred_v = self.forward_decoder(x, mask_a, restore_a, mask_v, restore_v)
        spectrogram = audio.unsqueeze(1).transpose(2, 3)
        target_a = patchify(spectrogram, 1, spectrogram.shape[2] // 16, spectrogram.shape[3] // 16)
        target_v = patchify(imgs, 3, imgs.shape[2] // 16, imgs.shape[3] // 16)
        loss_a = self.forward_mae_loss(target_a, pred_a, mask_a)
        loss_v = self.forward_mae_loss(target_v, pred_v, mask_v)
        nce = self.forward_contrastive(ca.mean(dim=1), cv.mean(dim=1))
        return {"loss": mae_weight * (loss_a + loss_v) + contrast_weight * nce, "loss_a": loss_a, "loss_v": loss_v,
                "nce": nce, "pred_a": pred_a, "pred_v": pred_v, "mask_a": mask_a, "mask_v": mask_v, "x": x, "ca": ca,
                "cv": cv, "keep_a": keep_a, "keep_v": keep_v}


class CAVMAEFT(Encoder):
    def __init__(self, classes=527, **encoder):
        super().__init__(**encoder)
        width = self.norm.normalized_shape[0]
        self.pos_embed_a.requires_grad_(True)  # tr_pos=True in fine-tuning
        self.pos_embed_v.requires_grad_(True)
        self.mlp_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, classes))

    def forward(self, a, v, mode):
        a, v = self.embed(a, v)
        a, v = self.specific(a, v)
        if mode == "multimodal":
            x = self.joint(torch.cat((a, v), dim=1))
        elif mode == "audioonly":
            x = self.joint(a, "a")
        elif mode == "videoonly":
            x = self.joint(v, "v")
        elif mode in ("missingaudioonly", "missingvideoonly"):  # fine-tuned on both, given one: both kinds of norms
            alone, name = (a, "a") if mode == "missingaudioonly" else (v, "v")
            return self.mlp_head((self.joint(alone).mean(dim=1) + self.joint(alone, name).mean(dim=1)) / 2)
        return self.mlp_head(x.mean(dim=1))


def randomise(model: nn.Module, seed: int) -> None:
    """Every parameter random, norms included, and each of the three norm pairs different, so that a wrong mapping
    (joint norms where modality norms belong, one modality's for the other's) changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.startswith("mlp_head.0"):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
            elif "pos_embed" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))  # fine-tuned tables are no longer sin-cos
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def saved_like_cavmae(model: nn.Module) -> dict[str, torch.Tensor]:
    """As CAV-MAE's training saves it: the state dict of an nn.DataParallel wrapper."""
    return {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
