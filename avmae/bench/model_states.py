"""Model and optimizer memory per GPU under DeepSpeed ZeRO with bf16 and Adam, no offload: DeepSpeed's own
estimators, and beside them only what they leave out.

P parameters trained on N GPUs (data-parallel ranks), L parameters in the largest layer, bytes per GPU:

  figure                                   stage 1              stage 2        stage 3        given by
  DeepSpeed's estimate                     2 P + 18 P / N       2 P + 18 P / N 18 P / N + 4 L DeepSpeed
  whole bf16 gradients                     2 P - 2 P / N        -              -              avmae
  bf16 parameter partition                 -                    -              2 P / N        avmae
  reduce buckets (gradient_bucket_bytes)   2 x 2 x bucket       2 x 2 x bucket -              avmae

DeepSpeed's estimates are ``estimate_zero2_model_states_mem_needs`` (deepspeed/runtime/zero/stage_1_and_2.py; its
comment: "18 = 2 grads_16bit + 4 grads_32bit + 4 params_32bit + 8 optimizer_states") and
``estimate_zero3_model_states_mem_needs`` (stage3.py: 4 L for the gathered largest layer's 16-bit weights and
gradients). Their GPU figure depends on the GPU count only; the node split changes their host figure, which the
plan does not use. What avmae adds, because the estimators do not cover it:

- ZeRO-1: DeepSpeed has no stage-1 estimator. Stage 1 is stage 2 with whole 16-bit gradients instead of a 1/N
  partition (the ZeRO paper, Rajbhandari et al. 2020, Fig. 1: stage 1 = 4 P + K P / N), so its figure is the stage-2
  estimate plus the gradients' unpartitioned remainder.
- ZeRO-3: the 16-bit parameter partition (each parameter's ``ds_tensor``, stage3.py's fp16 partitioned groups),
  which the no-offload estimate leaves out; the same estimator's optimizer-offload row does count it on the GPU
  (4 L + 2 P / N).
- The trainer's reduce buckets: the DeepSpeed config (avmae/train/engine.py) asks for ``reduce_bucket_size`` of
  ``zero_bucket_elements`` (5e7 by default) with ``contiguous_gradients`` and ``overlap_comm`` in bf16; stages 1 and
  2 then keep two bf16 buckets of that size (stage_1_and_2.py's ``ipg_buffer``), 0.19 GiB: an estimate from the
  source, listed apart. ZeRO-3 reduces through its own smaller buffers (not counted).
"""

from __future__ import annotations

import contextlib
import sys

from avmae.models.config import ModelConfig
from avmae.models.counts import parameter_counts
from avmae.recipe.config import RunConfig

BF16 = 2
REDUCE_BUCKET_ELEMENTS = RunConfig.zero_bucket_elements  # the default (the trainer's reduce_bucket_size)
GRADIENT_BUCKETS_WITH_OVERLAP = 2  # DeepSpeed stage_1_and_2.py: two ipg buffers when overlap_comm is on
ZERO2_ESTIMATOR = "estimate_zero2_model_states_mem_needs"  # in deepspeed.runtime.zero.stage_1_and_2
ZERO3_ESTIMATOR = "estimate_zero3_model_states_mem_needs"  # in deepspeed.runtime.zero.stage3
# Where each figure of ``model_state_bytes`` comes from, by stage; the plan prints these beside the figures.
SOURCES = {
    "deepspeed_estimate": {1: f"DeepSpeed {ZERO2_ESTIMATOR} (no stage-1 estimator: stage 2's)",
                           2: f"DeepSpeed {ZERO2_ESTIMATOR}", 3: f"DeepSpeed {ZERO3_ESTIMATOR}"},
    "zero1_whole_bf16_gradients": "avmae: stage 1 keeps whole bf16 gradients (ZeRO paper, Fig. 1)",
    "zero3_bf16_parameter_partition": "avmae: the bf16 partition DeepSpeed's stage-3 estimate leaves out",
    "total": "sum",
}
GRADIENT_BUCKETS_SOURCE = "avmae: the trainer's reduce buckets (DeepSpeed's estimators leave them out)"


def largest_layer_parameters(config: ModelConfig) -> int:
    """Parameters of the largest module that holds parameters of its own: what ZeRO-3 gathers at once, and what
    DeepSpeed's ``model_to_params`` (stage3.py) finds as the largest layer. DeepSpeed counts on a built model, which
    for ViT-L is 2.4 GB of fp32 weights, and tells shared parameters apart by address (all zero on the meta
    device); this closed form needs no model and is tested equal to DeepSpeed's count on a built one."""
    width, _, _, mlp = config.encoder.dims()
    a, v, d = config.audio, config.video, config.decoder
    bias = 3 * width if config.encoder.qkv_bias else 0
    candidates = [width * mlp + mlp, mlp * width + width, 3 * width * width + bias,  # MLP in, MLP out, qkv
                  3 * v.tubelet * v.patch * v.patch * width + width,  # video tubelet embedding
                  a.patch * a.patch * width + width,  # audio patch embedding
                  d.width * d.mlp + d.mlp, d.mlp * d.width + d.width, width * d.width + d.width,
                  d.width * v.tubelet * v.patch * v.patch * 3 + v.tubelet * v.patch * v.patch * 3]
    return max(candidates)


def deepspeed_estimate(parameters: int, gpus: int, stage: int, largest_layer: int = 0) -> int:
    """DeepSpeed's per-GPU bytes of model states without offload (stage 1: its stage-2 figure, see module doc)."""
    # DeepSpeed logs which accelerator it found to stdout when first imported; the plan's --json output is stdout.
    with contextlib.redirect_stdout(sys.stderr):
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    if stage == 3:
        return estimate_zero3_model_states_mem_needs(parameters, largest_layer, num_gpus_per_node=gpus, num_nodes=1,
                                                     cpu_offload=False, cpu_offload_params=False)[1]
    return estimate_zero2_model_states_mem_needs(parameters, num_gpus_per_node=gpus, num_nodes=1,
                                                 cpu_offload=False)[1]


def model_state_bytes(parameters: int, gpus: int, stage: int, largest_layer: int = 0) -> dict[str, float]:
    """Bytes per GPU for ``parameters`` trained on ``gpus`` ranks at ZeRO ``stage``: DeepSpeed's estimate, what avmae
    adds to it (module doc; ``SOURCES`` names the giver of each) and their total."""
    if stage not in (1, 2, 3):
        raise ValueError(f"ZeRO stage must be 1, 2 or 3, got {stage}")
    p, n = parameters, gpus
    parts = {
        "deepspeed_estimate": float(deepspeed_estimate(p, n, stage, largest_layer)),
        "zero1_whole_bf16_gradients": BF16 * (p - p / n) if stage == 1 else 0.0,
        "zero3_bf16_parameter_partition": BF16 * p / n if stage == 3 else 0.0,
    }
    parts["total"] = sum(parts.values())
    return parts


def model_state_sources(stage: int) -> dict[str, str]:
    """Which estimator gave each figure of ``model_state_bytes`` at ``stage``."""
    return {key: source[stage] if isinstance(source, dict) else source for key, source in SOURCES.items()}


def gradient_bucket_bytes(stage: int) -> float:
    """The trainer's reduce buckets (module doc), which DeepSpeed's estimators leave out; ZeRO-3 reduces through
    its own, smaller, buffers (not counted)."""
    return GRADIENT_BUCKETS_WITH_OVERLAP * REDUCE_BUCKET_ELEMENTS * BF16 if stage in (1, 2) else 0.0


def trained_parameters(config: ModelConfig) -> int:
    """The parameters the optimizer updates, the ``total_params`` given to DeepSpeed's estimators; counted in closed
    form (models/counts.py) for the reason ``largest_layer_parameters`` gives."""
    counts = parameter_counts(config)
    return counts["total"] - counts["frozen"]
