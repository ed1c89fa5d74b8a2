"""Transformer parts: pre-norm ViT blocks with fused attention, and a stack of them ending in a LayerNorm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class Attention(nn.Module):
    def __init__(self, width: int, heads: int, qkv_bias: bool = True):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        # Fused kernel (flash / memory-efficient on CUDA, bf16-safe): no (tokens x tokens) matrix in Python.
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, width))


class Mlp(nn.Module):
    """fc1, GELU, fc2. ``gelu``: exact (erf) or tanh, the approximation flax's ``nn.gelu`` computes by default and
    Scenic's ViViT / MBT blocks therefore use."""

    def __init__(self, width: int, hidden: int, gelu: str = "exact"):
        super().__init__()
        if gelu not in ("exact", "tanh"):
            raise ValueError(f"gelu must be exact or tanh, got {gelu!r}")
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        self.approximate = "tanh" if gelu == "tanh" else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


def drop_path(x: torch.Tensor, rate: float, training: bool, rescale: bool = True) -> torch.Tensor:
    """Stochastic depth: drop a residual branch for whole samples. ``rescale``: a kept branch is divided by
    1 - rate (timm's DropPath); without it a kept branch is left as it is (Scenic's StochasticDepth)."""
    if rate == 0.0 or not training:
        return x
    keep = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(1 - rate)
    return x * keep / (1 - rate) if rescale else x * keep


class Block(nn.Module):
    """Pre-norm block. With ``modality_norms`` (names), each modality gets its own norm1/norm2, used when the block
    runs on that modality alone (CAV-MAE's norm1_a/norm2_a, norm1_v/norm2_v, YuanGongND/cav-mae src/models/cav_mae.py)."""

    def __init__(self, width: int, heads: int, mlp: int, *, qkv_bias: bool = True, eps: float = 1e-6,
                 drop_path_rate: float = 0.0, modality_norms: tuple[str, ...] = (), gelu: str = "exact",
                 drop_path_rescale: bool = True):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=eps)
        self.attn = Attention(width, heads, qkv_bias)
        self.norm2 = nn.LayerNorm(width, eps=eps)
        self.mlp = Mlp(width, mlp, gelu)
        self.drop_path_rate = drop_path_rate
        self.drop_path_rescale = drop_path_rescale
        if modality_norms:
            self.modality_norm1 = nn.ModuleDict({m: nn.LayerNorm(width, eps=eps) for m in modality_norms})
            self.modality_norm2 = nn.ModuleDict({m: nn.LayerNorm(width, eps=eps) for m in modality_norms})
        self.has_modality_norms = bool(modality_norms)

    def forward(self, x: torch.Tensor, modality: str | None = None) -> torch.Tensor:
        """``modality``: the one modality ``x`` holds, if it holds one alone (picks its norms where there are any)."""
        if modality is not None and self.has_modality_norms:
            norm1, norm2 = self.modality_norm1[modality], self.modality_norm2[modality]
        else:
            norm1, norm2 = self.norm1, self.norm2
        # the two branches draw their own keep masks, as in Scenic's EncoderBlock and timm's Block
        rate, rescale = self.drop_path_rate, self.drop_path_rescale
        x = x + drop_path(self.attn(norm1(x)), rate, self.training, rescale)
        return x + drop_path(self.mlp(norm2(x)), rate, self.training, rescale)


class Transformer(nn.Module):
    """``depth`` blocks then a LayerNorm (every Scenic ViViT encoder normalises its output, scenic/projects/vivit/model.py).

    ``final_norm=False`` leaves the LayerNorm out (CAV-MAE's modality stacks feed its joint layer unnormalised);
    ``modality_norms`` gives every block and the final norm a per-modality twin for single-modality inputs."""

    def __init__(self, width: int, depth: int, heads: int, mlp: int, *, qkv_bias: bool = True, eps: float = 1e-6,
                 drop_path_rates: list[float] | None = None, checkpointing: bool = False, final_norm: bool = True,
                 modality_norms: tuple[str, ...] = (), gelu: str = "exact", drop_path_rescale: bool = True):
        super().__init__()
        rates = drop_path_rates or [0.0] * depth
        self.blocks = nn.ModuleList(Block(width, heads, mlp, qkv_bias=qkv_bias, eps=eps, drop_path_rate=rate,
                                          modality_norms=modality_norms, gelu=gelu,
                                          drop_path_rescale=drop_path_rescale) for rate in rates)
        self.norm = nn.LayerNorm(width, eps=eps) if final_norm else nn.Identity()
        if modality_norms:
            self.modality_norm = nn.ModuleDict({m: nn.LayerNorm(width, eps=eps) for m in modality_norms})
        self.has_modality_norms = bool(modality_norms)
        self.checkpointing = checkpointing

    def run_block(self, index: int, x: torch.Tensor, modality: str | None = None) -> torch.Tensor:
        """Block ``index`` alone (for callers that interleave work between blocks, such as MBT's bottlenecks)."""
        block = self.blocks[index]
        if self.checkpointing and self.training and torch.is_grad_enabled():
            # Recompute the block in backward: activation memory of one block instead of all of them.
            return checkpoint(block, x, modality, use_reentrant=False)
        return block(x, modality)

    def forward(self, x: torch.Tensor, modality: str | None = None) -> torch.Tensor:
        for index in range(len(self.blocks)):
            x = self.run_block(index, x, modality)
        if modality is not None and self.has_modality_norms:
            return self.modality_norm[modality](x)
        return self.norm(x)


def init_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linears with zero bias, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
