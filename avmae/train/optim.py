"""Parameter groups (weight-decay exclusions, layer-wise lr decay, head lr) and the warmup + cosine schedule."""

from __future__ import annotations

import math
import re

from torch import nn

from avmae.models.config import ModelConfig
from avmae.recipe.config import OptimConfig

# No weight decay on norms, biases, mask tokens, MBT's bottleneck tokens, modality and position embeddings (MAE /
# timm's add_weight_decay; AV-MAE decays only kernels). Position embeddings are parameters only when stored
# (pos_embed.stored, CAV-MAE).
_NO_DECAY_NAMES = ("mask_token", "modality_type", "audio_type", "video_type", "position", "bottleneck")


def decays(name: str, parameter: nn.Parameter) -> bool:
    return parameter.ndim > 1 and not any(part in name for part in _NO_DECAY_NAMES)


def layer_id(name: str, model: ModelConfig) -> int:
    """0 for the tokenizer, i + 1 for the i-th encoder layer counted from the input (a modality's own layers and
    the joint layers after them), depth + 1 for everything on top (final norms of the last stack, heads)."""
    _, depth, _, _ = model.encoder.dims()
    if name.startswith("tokenizer."):
        return 0
    match = re.match(r"encoder\.(audio|video|shared|joint)\.(blocks\.(\d+)|norm)\.", name)
    if match is None:
        return depth + 1
    stack, block = match.group(1), match.group(3)
    offset = depth - model.encoder.joint_layers if stack == "joint" and model.encoder.fusion == "mid" else 0
    if block is None:  # a stack's final norm sits after its last block
        last = depth - model.encoder.joint_layers if model.encoder.fusion == "mid" and stack != "joint" else depth
        return last + 1
    return offset + int(block) + 1


def parameter_groups(module: nn.Module, model: ModelConfig, optim: OptimConfig,
                     head_prefixes: tuple[str, ...] = ("heads.", "head_norm.")) -> tuple[list[dict], list[float]]:
    """Optimizer groups and each group's lr multiplier (kept outside the groups: ZeRO rebuilds them)."""
    _, depth, _, _ = model.encoder.dims()
    grouped: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, parameter in module.named_parameters():
        if not parameter.requires_grad:
            continue
        scale = optim.layer_decay ** (depth + 1 - layer_id(name, model))
        if name.startswith(head_prefixes):
            scale *= optim.head_lr_scale
        grouped.setdefault((decays(name, parameter), scale), []).append(parameter)
    groups, scales = [], []
    for (decay, scale), params in sorted(grouped.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        groups.append({"params": params, "weight_decay": optim.weight_decay if decay else 0.0})
        scales.append(scale)
    return groups, scales


def learning_rate(step: int, optim: OptimConfig) -> float:
    """Linear warmup to ``lr`` over ``warmup_steps``, then half-cycle cosine to ``min_lr`` at ``steps``, or (schedule
    ``step``) ``lr`` times ``gamma`` for every milestone reached: CAV-MAE's MultiStepLR, whose milestone m (an epoch)
    first applies to epoch m + 1, i.e. from step m x steps-per-epoch (0-based) on."""
    if step < optim.warmup_steps:
        return optim.lr * (step + 1) / optim.warmup_steps
    if optim.schedule == "step":
        return optim.lr * optim.gamma ** sum(step >= milestone for milestone in optim.milestones)
    progress = (step - optim.warmup_steps) / max(1, optim.steps - optim.warmup_steps)
    return optim.min_lr + (optim.lr - optim.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
