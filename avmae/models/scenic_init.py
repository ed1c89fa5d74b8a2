"""Scenic's initialisation of AV-MAE (``model.init: scenic``): the flax initialisers that Scenic's ViViT encoder
blocks, AV-MAE decoder and MBT set, applied to avmae's modules.

Sources (google-research/scenic): ``scenic/projects/vivit/model.py`` and ``scenic/projects/mbt/model.py``
(EncoderBlock: attention and MLP kernels xavier-uniform, MLP biases normal(1e-6)),
``scenic/model_lib/layers/attention_layers.py`` (MlpBlock), ``scenic/projects/av_mae/vivit_multimodal.py``
(``mask_token_<m>`` zeros, ``decoder_projection_<m>`` xavier-uniform, ``output_projection_<m>`` zeros). Patch
embeddings are flax ``nn.Conv`` with its default kernel init, ``lecun_normal``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from avmae.models.vit import Attention, Mlp, init_weights

# flax's variance_scaling(..., "truncated_normal") draws a standard normal truncated to [-2, 2] and divides the
# wanted std by that distribution's std, 0.87962566103423978 (jax/_src/nn/initializers.py), so the result has it.
_TRUNCATED_STD = 0.87962566103423978


@torch.no_grad()
def lecun_normal_(weight: torch.Tensor) -> torch.Tensor:
    """flax's ``lecun_normal``: truncated normal with std 1/sqrt(fan_in), fan_in = all dims but the output one
    (dim 0 in PyTorch's (out, in, *kernel) layout)."""
    fan_in = math.prod(weight.shape[1:])
    std = 1.0 / math.sqrt(fan_in) / _TRUNCATED_STD
    return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


@torch.no_grad()
def init_patch_embedding(conv: nn.Module) -> None:
    lecun_normal_(conv.weight)
    nn.init.zeros_(conv.bias)


@torch.no_grad()
def init_transformer(module: nn.Module) -> None:
    """Every Linear xavier-uniform with zero bias, but the fused qkv as three (width, width) matrices, each with its
    own fan (flax's query / key / value are separate DenseGeneral layers), and MLP biases normal(1e-6); LayerNorms
    to scale 1, bias 0. Heads and tokens that differ (zeros) are set by their owners afterwards."""
    for sub in module.modules():  # MAE's init, in the modules' order (module.apply would draw in another)
        init_weights(sub)
    for sub in module.modules():
        if isinstance(sub, Attention):
            for part in sub.qkv.weight.chunk(3, dim=0):
                nn.init.xavier_uniform_(part)
        elif isinstance(sub, Mlp):
            nn.init.normal_(sub.fc1.bias, std=1e-6)
            nn.init.normal_(sub.fc2.bias, std=1e-6)
