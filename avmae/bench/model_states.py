"""Model and optimizer memory per GPU under DeepSpeed ZeRO with bf16 and Adam, by component.

Bytes per parameter, P parameters, N GPUs (data-parallel ranks), L parameters in the largest layer:

  component                         stage 1    stage 2    stage 3
  bf16 parameters                   2 P        2 P        2 P / N
  bf16 gradients                    2 P        2 P / N    2 P / N
  fp32 gradients (the partition)    4 P / N    4 P / N    4 P / N
  fp32 master parameters            4 P / N    4 P / N    4 P / N
  Adam m and v (fp32)               8 P / N    8 P / N    8 P / N
  gathered largest layer            -          -          4 L  (bf16 weights + gradients while it runs)

This is DeepSpeed's own accounting: stage 2 equals ``estimate_zero2_model_states_mem_needs`` (without offload:
2 P + 18 P / N, its comment: "18 = 2 grads_16bit + 4 grads_32bit + 4 params_32bit + 8 optimizer_states");
stage 3 equals ``estimate_zero3_model_states_mem_needs`` (18 P / N + 4 L) plus the 2 P / N of the bf16
parameter partition, which that estimator leaves out (ZeRO-3 keeps it: stage3.py's fp16 partitioned groups);
DeepSpeed has no stage-1 estimator, and stage 1 is stage 2 with whole bf16 gradients (the ZeRO paper, Rajbhandari
et al. 2020, Fig. 1: stage 1 = 4 P + K P / N). Tested against both estimators.

Beside them, the trainer's DeepSpeed config (avmae/train/engine.py) asks for ``reduce_bucket_size`` of
``zero_bucket_elements`` (5e7 by default) with ``contiguous_gradients`` and ``overlap_comm`` in bf16: stages 1 and 2
then keep two bf16 gradient buckets of that size (stage_1_and_2.py's ``ipg_buffer``), 0.2 GB; listed apart, as an
estimate from the source.
"""

from __future__ import annotations

from avmae.models.config import ModelConfig
from avmae.models.counts import parameter_counts
from avmae.recipe.config import RunConfig

BF16, FP32 = 2, 4
REDUCE_BUCKET_ELEMENTS = RunConfig.zero_bucket_elements  # the default (the trainer's reduce_bucket_size)
GRADIENT_BUCKETS_WITH_OVERLAP = 2  # DeepSpeed stage_1_and_2.py: two ipg buffers when overlap_comm is on


def largest_layer_parameters(config: ModelConfig) -> int:
    """Parameters of the largest module that holds parameters of its own (what ZeRO-3 gathers at once, and what
    DeepSpeed's ``estimate_zero3_model_states_mem_needs_all_live`` takes as the largest layer)."""
    width, _, _, mlp = config.encoder.dims()
    a, v, d = config.audio, config.video, config.decoder
    bias = 3 * width if config.encoder.qkv_bias else 0
    candidates = [width * mlp + mlp, mlp * width + width, 3 * width * width + bias,  # MLP in, MLP out, qkv
                  3 * v.tubelet * v.patch * v.patch * width + width,  # video tubelet embedding
                  a.patch * a.patch * width + width,  # audio patch embedding
                  d.width * d.mlp + d.mlp, d.mlp * d.width + d.width, width * d.width + d.width,
                  d.width * v.tubelet * v.patch * v.patch * 3 + v.tubelet * v.patch * v.patch * 3]
    return max(candidates)


def model_state_bytes(parameters: int, gpus: int, stage: int, largest_layer: int = 0) -> dict[str, float]:
    """Bytes per GPU of each component for ``parameters`` trained on ``gpus`` ranks at ZeRO ``stage``."""
    if stage not in (1, 2, 3):
        raise ValueError(f"ZeRO stage must be 1, 2 or 3, got {stage}")
    p, n = parameters, gpus
    parts = {
        "bf16_parameters": BF16 * p / (n if stage == 3 else 1),
        "bf16_gradients": BF16 * p / (1 if stage == 1 else n),
        "fp32_gradient_partition": FP32 * p / n,
        "fp32_master_parameters": FP32 * p / n,
        "adam_moments": 2 * FP32 * p / n,
        "gathered_largest_layer": 2 * BF16 * largest_layer if stage == 3 else 0.0,
    }
    parts["total"] = sum(parts.values())
    return parts


def gradient_bucket_bytes(stage: int) -> float:
    """The trainer's reduce buckets (module doc); ZeRO-3 reduces through its own, smaller, buffers (not counted)."""
    return GRADIENT_BUCKETS_WITH_OVERLAP * REDUCE_BUCKET_ELEMENTS * BF16 if stage in (1, 2) else 0.0


def trained_parameters(config: ModelConfig) -> int:
    counts = parameter_counts(config)
    return counts["total"] - counts["frozen"]
