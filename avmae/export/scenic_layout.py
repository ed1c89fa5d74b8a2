"""The parameters of Google's released AV-MAE models (google-research/scenic ``scenic/projects/av_mae``) in avmae's
names and layouts: the pieces both models share (blocks, norms, dense layers, patch embeddings), the sizes read off
the shapes, and the model keys under which avmae computes what Scenic computes. ``scenic_mae`` maps the pretraining
model, ``scenic_mbt`` the fine-tuned one, ``avmae.export.scenic`` reads the file and writes the export.

Layouts (Flax ``nn.Dense``, ``nn.MultiHeadDotProductAttention``, ``nn.Conv``): Dense kernels are (in, out), so
PyTorch's Linear weight is the transpose; q / k / v kernels are (D, heads, D / heads) and become the three
row blocks of avmae's fused qkv; the out kernel is (heads, D / heads, D); conv kernels are (t, h, w, c_in, D) for
video and (time, mel, 1, D) for audio, PyTorch's are (D, c_in, t, h, w). Modality ``rgb`` is avmae's video,
``spectrogram`` its audio.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import torch

from avmae.models.config import ENCODER_SIZES

MODALITY = {"rgb": "video", "spectrogram": "audio"}
SCENIC_NAME = {"video": "rgb", "audio": "spectrogram"}
# Scenic's recipes (configs/audioset/*.py, configs/vggsound/*.py): input sizes, which a checkpoint does not record.
AUDIO_FRAMES, MEL_BINS = 1000, 128  # 10 x spec_shape (100, 128): 62 x 8 tokens, the last 8 frames unused
VIDEO_SIZE = 224
VIDEO_FRAMES = {"pretrain": 16, "finetune": 32}


def scenic_audio(patch: int) -> dict:
    """The run's ``model.audio`` of a released model: the recipe's input size, Scenic's time-major token order and
    the log-mels the checkpoints were trained on (Scenic's front end)."""
    return {"frames": AUDIO_FRAMES, "mel_bins": MEL_BINS, "patch": patch, "token_order": "time_major",
            "frontend": "scenic"}


class ScenicLayoutError(ValueError):
    """Parameters that do not have the layout of a released AV-MAE model; the message names what differs."""


def as_tensor(array: np.ndarray) -> torch.Tensor:
    """A float32 copy: one Scenic array can become two avmae tensors (MBT's shared norm), which must not share memory
    (safetensors refuses shared storage)."""
    return torch.tensor(np.asarray(array, dtype=np.float32))


class Params:
    """The checkpoint's params by Flax path, remembering which were used: none may be left over unnoticed."""

    def __init__(self, params: dict[str, np.ndarray]):
        self.params, self.used = params, set()

    def has(self, name: str) -> bool:
        return name in self.params

    def prefixed(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self.params)

    def take(self, name: str) -> np.ndarray:
        if name not in self.params:
            raise ScenicLayoutError(f"parameter {name} is missing")
        self.used.add(name)
        return self.params[name]

    def block_indices(self, stack: str, suffix: str = "") -> list[int]:
        found = {int(m.group(1)) for k in self.params
                 if (m := re.fullmatch(rf"{re.escape(stack)}/encoderblock_(\d+){re.escape(suffix)}/.+", k))}
        indices = sorted(found)
        if indices != list(range(len(indices))):
            raise ScenicLayoutError(f"{stack}: encoderblock numbers {indices} are not 0..n-1")
        return indices

    def left_over(self) -> list[str]:
        return sorted(set(self.params) - self.used)


def linear(p: Params, src: str, dst: str, bias_default: int | None = None) -> dict[str, torch.Tensor]:
    """Flax Dense (in, out) -> Linear weight (out, in). A Dense built without a bias (Scenic's
    ``use_projection_bias: False``) gets a zero bias of ``bias_default`` entries, which computes the same."""
    weight = as_tensor(p.take(f"{src}/kernel")).T.contiguous()
    if p.has(f"{src}/bias") or bias_default is None:
        bias = as_tensor(p.take(f"{src}/bias"))
    else:
        bias = torch.zeros(weight.shape[0])
    return {f"{dst}.weight": weight, f"{dst}.bias": bias}


def layer_norm(p: Params, src: str, dst: str) -> dict[str, torch.Tensor]:
    return {f"{dst}.weight": as_tensor(p.take(f"{src}/scale")), f"{dst}.bias": as_tensor(p.take(f"{src}/bias"))}


def block(p: Params, src: str, dst: str) -> dict[str, torch.Tensor]:
    """A Scenic ``encoderblock`` (pre-norm: LayerNorm_0, attention, LayerNorm_1, MlpBlock_0) -> avmae ``Block``."""
    attn = f"{src}/MultiHeadDotProductAttention_0"
    weights, biases = [], []
    for part in ("query", "key", "value"):  # (D, heads, head_dim) -> rows h * head_dim + j of a (D, D) Linear
        kernel = p.take(f"{attn}/{part}/kernel")
        weights.append(as_tensor(kernel.reshape(kernel.shape[0], -1)).T)
        biases.append(as_tensor(p.take(f"{attn}/{part}/bias").reshape(-1)))
    out = p.take(f"{attn}/out/kernel")  # (heads, head_dim, D): input index h * head_dim + j, as the heads are joined
    state = {f"{dst}.attn.qkv.weight": torch.cat(weights).contiguous(), f"{dst}.attn.qkv.bias": torch.cat(biases),
             f"{dst}.attn.proj.weight": as_tensor(out.reshape(-1, out.shape[-1])).T.contiguous(),
             f"{dst}.attn.proj.bias": as_tensor(p.take(f"{attn}/out/bias"))}
    state.update(layer_norm(p, f"{src}/LayerNorm_0", f"{dst}.norm1"))
    state.update(layer_norm(p, f"{src}/LayerNorm_1", f"{dst}.norm2"))
    state.update(linear(p, f"{src}/MlpBlock_0/Dense_0", f"{dst}.mlp.fc1"))
    state.update(linear(p, f"{src}/MlpBlock_0/Dense_1", f"{dst}.mlp.fc2"))
    return state


def stack(p: Params, src: str, dst: str) -> tuple[dict[str, torch.Tensor], int]:
    """Blocks ``src/encoderblock_i`` -> ``dst.blocks.i``; returns the state and the block count."""
    state = {}
    indices = p.block_indices(src)
    for i in indices:
        state.update(block(p, f"{src}/encoderblock_{i}", f"{dst}.blocks.{i}"))
    return state, len(indices)


def stack_dims(p: Params, src: str, suffix: str = "") -> dict[str, int]:
    """Width, heads and MLP width of the blocks of ``src``, read off block 0's shapes."""
    first = f"{src}/encoderblock_0{suffix}"
    width, heads, _ = p.params[f"{first}/MultiHeadDotProductAttention_0/query/kernel"].shape
    mlp = p.params[f"{first}/MlpBlock_0/Dense_0/kernel"].shape[1]
    return {"width": int(width), "heads": int(heads), "mlp": int(mlp)}


def video_embedding(p: Params, src: str) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """A Flax 3-D conv (t, h, w, 3, D) -> Conv3d (D, 3, t, h, w); the tubelet and patch it implies."""
    kernel = p.take(f"{src}/kernel")
    if kernel.ndim != 5 or kernel.shape[1] != kernel.shape[2] or kernel.shape[3] != 3:
        raise ScenicLayoutError(f"{src}/kernel has shape {kernel.shape}, not (t, p, p, 3, D)")
    state = {"tokenizer.video_embed.weight": as_tensor(kernel).permute(4, 3, 0, 1, 2).contiguous(),
             "tokenizer.video_embed.bias": as_tensor(p.take(f"{src}/bias"))}
    return state, {"tubelet": int(kernel.shape[0]), "patch": int(kernel.shape[1])}


def audio_embedding(p: Params, src: str) -> tuple[dict[str, torch.Tensor], int]:
    """A Flax 2-D conv over the (time, mel) image (time, mel, 1, D) -> Conv2d (D, 1, time, mel): time-major tokens."""
    kernel = p.take(f"{src}/kernel")
    if kernel.ndim != 4 or kernel.shape[0] != kernel.shape[1] or kernel.shape[2] != 1:
        raise ScenicLayoutError(f"{src}/kernel has shape {kernel.shape}, not (p, p, 1, D) (avmae's audio patches "
                                "are square)")
    state = {"tokenizer.audio_embed.weight": as_tensor(kernel).permute(3, 2, 0, 1).contiguous(),
             "tokenizer.audio_embed.bias": as_tensor(p.take(f"{src}/bias"))}
    return state, int(kernel.shape[0])


def encoder_size(width: int, depth: int, heads: int, mlp: int) -> dict:
    """The named ViT size when the dims are one (ViT-L for the released files), else ``custom``."""
    for name, dims in ENCODER_SIZES.items():
        if dims == (width, depth, heads, mlp):
            return {"size": name}
    return {"size": "custom", "width": width, "depth": depth, "heads": heads, "mlp": mlp}


def scenic_numerics() -> dict:
    """The model keys under which avmae computes as Scenic does (public facts, Scenic at
    ``scenic/projects/av_mae``): fixed 1-D sin-cos tables over each modality's flat token index
    (``model_lib/layers/attention_layers.py`` ``Add1DPositionEmbedding``), Flax's tanh-approximated GELU
    (``nn.gelu``), stochastic depth without the 1/(1-p) rescale (``vivit/model.py``), no modality embeddings unless
    the checkpoint has modality tokens, Scenic's initialisers, ``jax.nn.standardize``'s biased variance for
    per-patch targets, and Scenic's layout of the inpainting decoder's input."""
    return {"pos_embed": {"kind": "flat_1d", "stored": False, "trainable": False}, "gelu": "tanh",
            "init": "scenic", "norm_pix_variance": "biased", "inpainting_layout": "scenic"}


@dataclass
class ScenicConversion:
    task: str  # "pretrain" or "finetune"
    state: dict[str, torch.Tensor]  # avmae keys
    run: dict  # the avmae run config, as a nested dict (before --set overrides)
    scenic_config: dict  # the Scenic config the parameters imply (and what had to be assumed)
    heads: dict[str, int] = field(default_factory=dict)
    report: dict = field(default_factory=dict)
    unused_modality: str = ""  # a single-modality MBT: the modality whose avmae weights the checkpoint lacks
