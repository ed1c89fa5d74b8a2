"""An avmae encoder (and decoder) initialised from an ImageNet ViT in the common timm / MAE layout, as CAV-MAE's
``adapt_vmae_weights.py`` does (YuanGongND/cav-mae src/adapt_vmae_weights.py):

- ViT block i goes to every avmae block at depth i: both modality stacks below the joint layers, the joint (or
  early / shared) stack above; its norm1/norm2 also to the joint blocks' per-modality norms, and the ViT's final
  ``norm`` to the last stack's norm and its per-modality twins;
- the audio patch embedding is the RGB kernel summed over its 3 input channels, laid out so that the image's rows
  become the mel axis, as in CAV-MAE whose audio is a (mel x time) image;
- the video patch embedding is the 2-D kernel inflated to the tubelet: ``average`` (I3D: the kernel / tubelet in
  every frame, so a still clip gives the image model's response) or ``central`` (ViViT: the kernel in the middle
  frame, zeros elsewhere). ``average`` is the default because it is defined for even tubelets (AV-MAE's 2), where a
  "central" frame is not; with CAV-MAE's tubelet of 1 the two are the same;
- an MAE checkpoint *with decoder* (``decoder_*``) also fills a decoder of the same depth and width: its blocks,
  norm, input projection and mask token; the video head takes ``decoder_pred`` (repeated per tubelet frame) and the
  audio head its first rows, as CAV-MAE takes the first 256;
- ``cls_token``, ``pos_embed`` (avmae has no CLS token and builds its own sin-cos tables), ``fc_norm`` and ``head``
  (a classifier's) are skipped, each with its reason in the report.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from avmae.models.config import ModelConfig

BLOCK_PARTS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
SKIPPED = {
    "cls_token": "avmae has no CLS token",
    "pos_embed": "avmae's position embeddings are its own sin-cos tables of its token grids",
    "decoder_pos_embed": "avmae's position embeddings are its own sin-cos tables of its token grids",
    "fc_norm": "a fine-tuned ViT's pooling norm; avmae's classifier has its own",
    "head": "an ImageNet classifier head",
}


def encoder_blocks(config: ModelConfig) -> list[list[str]]:
    """For each layer i of the encoder (counted from the input), the avmae block prefixes that sit at depth i."""
    _, depth, _, _ = config.encoder.dims()
    fusion = config.encoder.fusion
    if fusion in ("early", "shared"):
        stack = "joint" if fusion == "early" else "shared"
        return [[f"encoder.{stack}.blocks.{i}"] for i in range(depth)]
    if fusion == "late":
        return [[f"encoder.audio.blocks.{i}", f"encoder.video.blocks.{i}"] for i in range(depth)]
    split = depth - config.encoder.joint_layers
    return [[f"encoder.audio.blocks.{i}", f"encoder.video.blocks.{i}"] if i < split
            else [f"encoder.joint.blocks.{i - split}"] for i in range(depth)]


def final_norms(config: ModelConfig) -> list[str]:
    """The avmae LayerNorms that end the encoder (where the ViT's ``norm`` sits)."""
    fusion = config.encoder.fusion
    if fusion == "late":
        return ["encoder.audio.norm", "encoder.video.norm"]
    return [f"encoder.{'shared' if fusion == 'shared' else 'joint'}.norm"]


def inflate(kernel: torch.Tensor, tubelet: int, mode: str) -> torch.Tensor:
    """(C, 3, p, p) -> (C, 3, tubelet, p, p)."""
    if mode == "average":
        return kernel.unsqueeze(2).repeat(1, 1, tubelet, 1, 1) / tubelet
    if mode == "central":
        out = torch.zeros(*kernel.shape[:2], tubelet, *kernel.shape[2:], dtype=kernel.dtype)
        out[:, :, tubelet // 2] = kernel
        return out
    raise ValueError(f"unknown inflation {mode!r}: use average or central")


def audio_kernel(kernel: torch.Tensor, token_order: str) -> torch.Tensor:
    """(C, 3, p, p) RGB kernel -> (C, 1, p, p) audio kernel: summed over colours (CAV-MAE), image rows on the mel
    axis. avmae's freq-major conv runs over a (mel x time) image as CAV-MAE's does; the time-major one over
    (time x mel), so its kernel is the transpose."""
    summed = kernel.sum(dim=1, keepdim=True)
    return summed if token_order == "freq_major" else summed.transpose(2, 3)


def _vit_depth(vit: dict) -> int:
    return len({int(m.group(1)) for k in vit if (m := re.match(r"blocks\.(\d+)\.", k))})


def _fill_decoder(vit: dict, config: ModelConfig, own: dict, put) -> str | None:
    """Put an MAE decoder's weights into avmae's decoder; the reason it does not fit, if it does not."""
    d = config.decoder
    depth = len({int(m.group(1)) for k in vit if (m := re.match(r"decoder_blocks\.(\d+)\.", k))})
    width = vit["decoder_embed.weight"].shape[0]
    if depth != d.depth or width != d.width:
        return f"MAE decoder of depth {depth} and width {width} does not fit avmae's decoder ({d.depth} x {d.width})"
    stacks = ["decoder.blocks.audio", "decoder.blocks.video"] if d.kind == "separate" else ["decoder.blocks"]
    for stack in stacks:
        for i in range(depth):
            for part in BLOCK_PARTS:
                for p in ("weight", "bias"):
                    put(f"{stack}.blocks.{i}.{part}.{p}", f"decoder_blocks.{i}.{part}.{p}")
        for p in ("weight", "bias"):
            put(f"{stack}.norm.{p}", f"decoder_norm.{p}")
    for embed in ["decoder.embed"] if d.shared_input else ["decoder.embed.audio", "decoder.embed.video"]:
        for p in ("weight", "bias"):
            put(f"{embed}.{p}", f"decoder_embed.{p}")
    for token in ["decoder.mask_token"] if d.shared_input else ["decoder.mask_token.audio", "decoder.mask_token.video"]:
        put(token, "mask_token")
    for p in ("weight", "bias"):
        pred = vit[f"decoder_pred.{p}"]
        audio_rows, video_rows = own[f"decoder.head.audio.{p}"].shape[0], own[f"decoder.head.video.{p}"].shape[0]
        put(f"decoder.head.audio.{p}", f"decoder_pred.{p}", f"first {audio_rows} rows", pred[:audio_rows])
        if video_rows % pred.shape[0] == 0:  # rows ordered (tubelet, p, p, 3): the image prediction in every frame
            repeats = video_rows // pred.shape[0]
            put(f"decoder.head.video.{p}", f"decoder_pred.{p}", f"repeated for {repeats} frames" if repeats > 1 else "",
                pred.repeat(repeats, *([1] * (pred.dim() - 1))))
    return None


class _Filled:
    """The avmae entries taken from the ViT so far, each with its ViT key and how it was changed."""

    def __init__(self, vit: dict[str, torch.Tensor], own: dict[str, torch.Tensor]):
        self.vit, self.own = vit, own
        self.entries: dict[str, torch.Tensor] = {}
        self.sources: dict[str, tuple[str, str]] = {}  # avmae key -> (ViT key, how it was changed)

    def put(self, ours: str, source: str, how: str = "", tensor: torch.Tensor | None = None) -> None:
        """``ours`` from ViT key ``source`` (or ``tensor``, made from it), where both exist."""
        if ours in self.own and source in self.vit:
            self.entries[ours] = self.vit[source] if tensor is None else tensor
            self.sources[ours] = (source, how)


def _check_vit_fits(vit: dict[str, torch.Tensor], config: ModelConfig) -> None:
    width, depth, _, _ = config.encoder.dims()
    kernel = vit["patch_embed.proj.weight"]
    if kernel.shape[0] != width or _vit_depth(vit) != depth:
        raise ValueError(f"a ViT of width {kernel.shape[0]} and depth {_vit_depth(vit)} cannot initialise an encoder "
                         f"of width {width} and depth {depth}")
    if kernel.shape[1] != 3 or kernel.shape[-1] != config.video.patch or kernel.shape[-1] != config.audio.patch:
        raise ValueError(f"patch embedding {tuple(kernel.shape)} does not fit 3-channel {config.video.patch} px video "
                         f"patches and {config.audio.patch} px audio patches")


def _fill_embeddings(kernel: torch.Tensor, config: ModelConfig, inflation: str, put) -> None:
    put("tokenizer.audio_embed.weight", "patch_embed.proj.weight", "summed over RGB, image rows on the mel axis",
        audio_kernel(kernel, config.audio.token_order))
    put("tokenizer.video_embed.weight", "patch_embed.proj.weight",
        f"inflated ({inflation}) to {config.video.tubelet} frame(s)", inflate(kernel, config.video.tubelet, inflation))
    for name in ("audio_embed", "video_embed"):
        put(f"tokenizer.{name}.bias", "patch_embed.proj.bias")


def _fill_encoder(config: ModelConfig, put) -> None:
    """ViT block i into every avmae block at depth i, its norms also into their per-modality twins; the ViT's final
    norm into the encoder's last norms."""
    for i, prefixes in enumerate(encoder_blocks(config)):
        for prefix in prefixes:
            for part in BLOCK_PARTS:
                for p in ("weight", "bias"):
                    put(f"{prefix}.{part}.{p}", f"blocks.{i}.{part}.{p}")
            for m in ("audio", "video"):  # per-modality twins of the joint norms (CAV-MAE: norm1 -> norm1_a/_v)
                for n in ("norm1", "norm2"):
                    for p in ("weight", "bias"):
                        put(f"{prefix}.modality_{n}.{m}.{p}", f"blocks.{i}.{n}.{p}")
    for norm in final_norms(config):
        stack = norm.removesuffix(".norm")
        for p in ("weight", "bias"):
            put(f"{norm}.{p}", f"norm.{p}")
            for m in ("audio", "video"):  # CAV-MAE: norm -> norm_a / norm_v
                put(f"{stack}.modality_norm.{m}.{p}", f"norm.{p}")


def _skipped_decoder(vit: dict, config: ModelConfig, own: dict, put) -> dict[str, str]:
    """Fill the decoder from an MAE checkpoint's; the ViT keys skipped, with the reason, when it does not fit."""
    if "decoder_embed.weight" not in vit:
        return {}
    reason = _fill_decoder(vit, config, own, put) if any(k.startswith("decoder.") for k in own) \
        else "this model has no decoder"
    return {k: reason for k in vit if k.startswith("decoder") or k == "mask_token"} if reason else {}


def vit_entries(vit: dict[str, torch.Tensor], config: ModelConfig, own: dict[str, torch.Tensor],
                inflation: str = "average") -> tuple[dict[str, torch.Tensor], dict]:
    """avmae key -> tensor for the model whose state dict is ``own``, and a report (ViT key of every avmae key
    filled, ViT keys skipped with their reason, avmae keys left at their initialisation)."""
    _check_vit_fits(vit, config)
    filled = _Filled(vit, own)
    _fill_embeddings(vit["patch_embed.proj.weight"], config, inflation, filled.put)
    _fill_encoder(config, filled.put)
    skipped = _skipped_decoder(vit, config, own, filled.put)
    entries, sources = filled.entries, filled.sources
    shapes = [f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in entries.items() if v.shape != own[k].shape]
    if shapes:
        raise ValueError(f"ViT weights do not fit this model: {shapes[:3]}")
    used = {source for source, _ in sources.values()}
    for key in vit:
        if key not in used and key not in skipped:
            skipped[key] = SKIPPED.get(key.split(".")[0], "no counterpart in this avmae model")
    report = {"loaded": {k: f"{source} ({how})" if how else source for k, (source, how) in sources.items()},
              "skipped": skipped,
              "kept_at_initialisation": sorted(k for k in own if k not in entries),
              "video_inflation": inflation}
    return entries, report


def init_from_vit(model: nn.Module, vit: dict[str, torch.Tensor], inflation: str = "average") -> dict:
    """Load the ViT's weights into ``model`` (an AVMAE or AVClassifier) in place; returns the report."""
    own = model.state_dict()
    entries, report = vit_entries(vit, model.config, own, inflation)
    with torch.no_grad():
        for key, value in entries.items():
            own[key].copy_(value.to(own[key].dtype))
    return report
