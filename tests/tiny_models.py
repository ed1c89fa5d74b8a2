"""The small model configs and inputs that several test modules build on: the AV-MAE family at test size
(``tiny``, ``inputs``), cavmae_base at test size (``tiny_cavmae``), and a random ViT / MAE state dict in the timm
layout of the same width and depth (``timm_vit``), and the tiny geometry of the Scenic fixtures with every Scenic option
on (``scenic_like``, ``late_scenic``)."""

from __future__ import annotations

import dataclasses

import torch

from avmae.models.config import (AudioInput, ContrastiveConfig, DecoderConfig, EncoderConfig, MaskConfig,
                                 ModelConfig, PosEmbedConfig, VideoInput)
from avmae.models.convert_cavmae import cavmae_base

# The encoder of tiny_cavmae and of timm_vit: the ViT it is initialised from must have its width and depth.
VIT_WIDTH, VIT_DEPTH, VIT_MLP = 64, 3, 256


def tiny(fusion="mid", decoder="shared", objective="reconstruction", audio_mode="random", video_mode="random",
         contrastive=0.0, **extra) -> ModelConfig:
    return ModelConfig(
        encoder=EncoderConfig(size="custom", width=32, depth=3, heads=2, mlp=64, fusion=fusion, joint_layers=1),
        decoder=DecoderConfig(kind=decoder, width=16, depth=1, heads=2, mlp=32), objective=objective,
        mask=MaskConfig(audio_ratio=0.7, video_ratio=0.75, audio_mode=audio_mode, video_mode=video_mode),
        contrastive=ContrastiveConfig(weight=contrastive), audio=AudioInput(frames=64, mel_bins=32),
        video=VideoInput(frames=4, size=32), **extra)


def inputs(batch=2, seed=0, frames=64, video_frames=4, size=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, frames, 32, generator=g), torch.randn(batch, video_frames, 3, size, size, generator=g)


def tiny_cavmae(finetune: bool = False) -> ModelConfig:
    """cavmae_base at test size: width 64, 2 + 1 layers, 64-frame audio, 32 px frames."""
    config = cavmae_base(finetune)
    config.encoder.size, config.encoder.width, config.encoder.depth = "custom", VIT_WIDTH, VIT_DEPTH
    config.encoder.heads, config.encoder.mlp = 2, VIT_MLP
    config.decoder.width, config.decoder.depth, config.decoder.heads, config.decoder.mlp = 32, 2, 2, 128
    config.audio.frames, config.audio.mel_bins, config.video.size = 64, 32, 32
    return config.validate()


def timm_vit(seed: int = 0, decoder_depth: int = 2, decoder_width: int = 32) -> dict[str, torch.Tensor]:
    """A random ViT / MAE-with-decoder state dict in the timm layout (MAE's mae_pretrain_vit_base_full keys)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    width = VIT_WIDTH
    state = {"cls_token": r(1, 1, width), "pos_embed": r(1, 1 + 4, width),
             "patch_embed.proj.weight": r(width, 3, 16, 16), "patch_embed.proj.bias": r(width),
             "norm.weight": r(width), "norm.bias": r(width)}

    def block(prefix: str, width: int) -> None:
        state.update({f"{prefix}.norm1.weight": r(width), f"{prefix}.norm1.bias": r(width),
                      f"{prefix}.attn.qkv.weight": r(3 * width, width) * 0.1, f"{prefix}.attn.qkv.bias": r(3 * width),
                      f"{prefix}.attn.proj.weight": r(width, width) * 0.1, f"{prefix}.attn.proj.bias": r(width),
                      f"{prefix}.norm2.weight": r(width), f"{prefix}.norm2.bias": r(width),
                      f"{prefix}.mlp.fc1.weight": r(4 * width, width) * 0.1, f"{prefix}.mlp.fc1.bias": r(4 * width),
                      f"{prefix}.mlp.fc2.weight": r(width, 4 * width) * 0.1, f"{prefix}.mlp.fc2.bias": r(width)})

    for i in range(VIT_DEPTH):
        block(f"blocks.{i}", width)
    if decoder_depth:
        state.update({"decoder_embed.weight": r(decoder_width, width), "decoder_embed.bias": r(decoder_width),
                      "mask_token": r(1, 1, decoder_width), "decoder_pos_embed": r(1, 5, decoder_width),
                      "decoder_norm.weight": r(decoder_width), "decoder_norm.bias": r(decoder_width),
                      "decoder_pred.weight": r(16 * 16 * 3, decoder_width), "decoder_pred.bias": r(16 * 16 * 3)})
        for i in range(decoder_depth):
            block(f"decoder_blocks.{i}", decoder_width)
    return state


def scenic_like(width=32, depth=4, decoder_width=16, frames=100, **extra) -> ModelConfig:
    """The fixtures' tiny geometry (config.json) with every Scenic option on."""
    fields = dict(
        encoder=EncoderConfig(size="custom", width=width, depth=depth, heads=4, mlp=4 * width, fusion="mid",
                              joint_layers=2, drop_path_rescale=False),
        decoder=DecoderConfig(kind="shared", width=decoder_width, depth=2, heads=2, mlp=4 * decoder_width),
        mask=MaskConfig(audio_ratio=0.7, video_ratio=0.9), audio=AudioInput(frames=frames, mel_bins=128),
        video=VideoInput(frames=4, size=64), modality_embeddings=False, pos_embed=PosEmbedConfig(kind="flat_1d"),
        gelu="tanh", init="scenic", norm_pix_variance="biased")
    fields.update(extra)
    return ModelConfig(**fields)


def late_scenic(**extra) -> ModelConfig:
    config = scenic_like(**extra)
    return dataclasses.replace(config, encoder=dataclasses.replace(config.encoder, fusion="late"))
