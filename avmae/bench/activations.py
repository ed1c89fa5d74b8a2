"""Activation memory of a pretraining step, measured on CPU for a recipe's shapes and extrapolated to its depth.

Method. The AV-MAE model of the recipe, at the recipe's token counts, widths and masks, but with each stack cut to
one or two blocks, runs one forward + backward at batch 1 in bf16 (DeepSpeed's bf16 mode casts the module to
bf16, docs/reference/libraries.md#deepspeed-bf16-mode) under ``LiveTensorBytes``; the peak bytes of tensors made
during the step is measured. Parameter gradients are dropped as soon as they are accumulated, because DeepSpeed moves
them into its own buffers, which the model-state arithmetic (``model_states.py``) already counts. Four such shallow
models give the base (every stack one block) and one more block of each kind of stack (the modality stacks, the joint
stack, the decoder); activation memory is linear in the block count of each stack and in the batch, so

    activations(batch B) = B x [ base + (n_modality - 1) x d_modality + (n_joint - 1) x d_joint
                                      + (n_decoder - 1) x d_decoder ]

The same four runs with the model's own activation checkpointing (``model.activation_checkpointing``) give the
checkpointed figure. The attention kernel CPU SDPA picked is recorded: with the CPU flash kernel, as with flash
attention on the GPU, no token x token matrix is kept.

DeepSpeed does not cover this: its memory estimators (``estimate_zero2/3_model_states_mem_needs``) count model states
only, and leave activations to the user.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from avmae.bench.live_memory import LiveTensorBytes
from avmae.models.avmae import AVMAE
from avmae.models.config import ModelConfig


def stack_depths(config: ModelConfig) -> dict[str, int]:
    """Blocks per kind of stack: ``modality`` (the per-modality stacks, counted once: they grow together),
    ``joint`` (mid fusion's joint layers), ``decoder``."""
    depth = config.encoder.dims()[1]
    if config.encoder.fusion == "mid":
        k = config.encoder.joint_layers
        return {"modality": depth - k, "joint": k, "decoder": config.decoder.depth}
    return {"modality": depth, "joint": 0, "decoder": config.decoder.depth}


def _shallow(config: ModelConfig, depths: dict[str, int], checkpointing: bool) -> ModelConfig:
    width, _, heads, mlp = config.encoder.dims()
    joint = depths["joint"]
    encoder = replace(config.encoder, size="custom", width=width, heads=heads, mlp=mlp,
                      depth=depths["modality"] + joint, joint_layers=joint or config.encoder.joint_layers)
    return replace(config, encoder=encoder, decoder=replace(config.decoder, depth=depths["decoder"]),
                   activation_checkpointing=checkpointing)


def step_peak_bytes(config: ModelConfig, batch: int = 1, seed: int = 0) -> dict[str, Any]:
    """Peak tensor bytes of one bf16 forward + backward of ``AVMAE(config)`` at ``batch``, inputs included,
    parameter gradients excluded (see the module doc)."""
    torch.manual_seed(seed)
    model = AVMAE(config).to(torch.bfloat16).train()
    for parameter in model.parameters():
        parameter.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
    a, v = config.audio, config.video
    with torch.no_grad():  # fills the models' cached sin-cos tables, constants that a training run builds once
        model(torch.zeros(1, a.frames, a.mel_bins, dtype=torch.bfloat16),
              torch.zeros(1, v.frames, 3, v.size, v.size, dtype=torch.bfloat16))
    generator = torch.Generator().manual_seed(seed)
    with LiveTensorBytes() as live:
        audio = torch.randn(batch, a.frames, a.mel_bins, generator=generator).to(torch.bfloat16)
        video = torch.randn(batch, v.frames, 3, v.size, v.size, generator=generator).to(torch.bfloat16)
        loss = model(audio, video, generator=generator)["loss"]
        after_forward = live.settle()
        loss.backward()
    attention = sorted(op for op in live.ops if "scaled_dot_product" in op or "attention" in op)
    return {"peak": live.peak, "after_forward": after_forward, "attention_kernels": attention}


def measure_activations(config: ModelConfig) -> dict[str, Any]:
    """Per-sample activation bytes of the full-depth model, without and with activation checkpointing, from the
    measured shallow models (module doc); every measured number is returned alongside."""
    full = stack_depths(config)
    kinds = [kind for kind in ("modality", "joint", "decoder") if full[kind] > 0]
    base = {kind: 1 if full[kind] > 0 else 0 for kind in full}
    result: dict[str, Any] = {"method": "peak live tensor bytes of one bf16 forward+backward at batch 1 on CPU, "
                                        "shallow models extrapolated linearly in depth",
                              "depths": full}
    for checkpointing in (False, True):
        runs = {"base": step_peak_bytes(_shallow(config, base, checkpointing))}
        per_block = {}
        for kind in kinds:
            grown = {**base, kind: base[kind] + 1}
            runs[kind] = step_peak_bytes(_shallow(config, grown, checkpointing))
            per_block[kind] = runs[kind]["peak"] - runs["base"]["peak"]
        total = runs["base"]["peak"] + sum((full[k] - 1) * per_block[k] for k in kinds)
        result["checkpointed" if checkpointing else "stored"] = {
            "bytes_per_sample": total, "base_peak": runs["base"]["peak"], "per_block": per_block,
            "attention_kernels": runs["base"]["attention_kernels"]}
    return result
