"""``avmae-bench plan``: what a pretraining recipe needs of a cluster, line by line, each line measured here or
computed from a stated formula with stated constants (``source`` says which).

The model states (parameters, gradients, optimizer states per GPU by ZeRO stage) are DeepSpeed's own estimates plus
what they leave out (``model_states``). Everything else here DeepSpeed does not estimate: its estimators stop at model
states, so activations, the batch that fits, throughput, the loader's feed, storage and the shard build are avmae's.

Inputs: the recipe (model, per-GPU batch, ZeRO stage), the GPU count and kind, an MFU, and three measurements:
activation bytes per sample (``activations.measure_activations``, on this CPU), shard bytes per sample
(``shard_size``), and the shard build's clips/s per core (docs/performance.md#shard-build-throughput, ``avmae-bench shard``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from avmae.bench.model_states import (GRADIENT_BUCKETS_SOURCE, gradient_bucket_bytes, largest_layer_parameters,
                                      model_state_bytes, model_state_sources, trained_parameters)
from avmae.models.counts import pretraining_flops
from avmae.recipe.config import RunConfig

GIB = 2**30
# Dense bf16 tensor-core peaks (NVIDIA datasheets: H100 SXM5 989 TFLOP/s, A100 SXM4 312 TFLOP/s) and the 80 GB
# parts' memory (nvidia-smi reports 80 GiB less a little; the headroom below covers that).
GPUS = {"h100": {"peak_flops": 989e12, "memory_bytes": 80 * GIB},
        "a100": {"peak_flops": 312e12, "memory_bytes": 80 * GIB}}
# Left free for the CUDA context, NCCL buffers and the caching allocator's fragmentation: our margin, not a
# measurement (fragmentation of 5-15 % is what PyTorch's memory snapshots commonly show).
HEADROOM = 0.10
# AudioSet-2M as AV-MAE trained on it: 1,857,210 training clips (docs/reference/avmae_scenic.md#data,
# configs/pretrain_as2m.yaml).
AUDIOSET_2M_CLIPS = 1_857_210
# Shard bytes per sample (tars + DALI indexes + CRC sidecars) measured here: `avmae-shard build --workers 1` at the
# defaults (16 frames, short side 256, 1024 x 128 log-mel, 10 s) on 12 clips from avmae.bench.shard.make_bench_clips
# (10 s 640x360 H.264 testsrc2 + noise, 44.1 kHz AAC), Debian ffmpeg 5.1. Real YouTube frames compress differently;
# pass --shards or --bytes-per-sample for your own.
MEASURED_BYTES_PER_SAMPLE = 543_705  # 6,524,457 bytes for 12 samples (avmae.bench.shard_size)
# Shard build rate per core: docs/performance.md#shard-build-throughput, avmae-bench shard, 1 worker: 4.40 clips/s (10 s clips).
BUILD_CLIPS_PER_CORE_S = 4.40
# The recipe's ranks: configs/pretrain_as2m.yaml runs on 8 nodes of 8 GPUs (slurm/pretrain_as2m.sbatch -N 8), 8 samples
# per GPU: AV-MAE's global batch of 512 (AV-MAE, Georgescu et al. 2023, appendix: batch 512 on AudioSet).
RECIPE_GPUS = 64
# With activation checkpointing every block's forward runs again in backward: hardware FLOPs = 4/3 of the model
# FLOPs (forward 1 + backward 2 + recompute 1), so at the same hardware FLOP/s the samples/s fall to 3/4.
RECOMPUTE_RATE = 3 / 4


@dataclass(frozen=True)
class PlanInputs:
    gpus: int
    gpu: str = "h100"
    zero_stage: int = 2
    batch_per_gpu: int = 8
    mfu: float = 0.40
    gpus_per_node: int = 8
    clips: int = AUDIOSET_2M_CLIPS
    bytes_per_sample: float = MEASURED_BYTES_PER_SAMPLE
    bytes_source: str = "measured here: avmae-shard build of 12 generated 10 s 360p clips (plan.py)"
    build_clips_per_core_s: float = BUILD_CLIPS_PER_CORE_S
    global_batch: int | None = None  # the batch to keep on these GPUs; None: the recipe's (batch_plan)
    mfu_batch: int | None = None  # smallest per-GPU batch known to reach ``mfu``; None: the recipe's per-GPU batch


@dataclass(frozen=True)
class _Sizes:
    """What every memory check of a plan starts from: the model's trained parameters and its largest layer's (ZeRO-3
    gathers one layer at a time), and the GPU memory usable below the headroom, in bytes."""
    params: int
    largest_layer: int
    usable: float


def _memory_total(states: dict[str, float], buckets: float, activations_per_sample: float, batch: int) -> float:
    return states["total"] + buckets + activations_per_sample * batch


def _fit(inputs: PlanInputs, activations: dict[str, Any], sizes: _Sizes) -> dict[str, Any]:
    """The first setting that fits, cheapest first: no recompute before recompute, lower ZeRO stages (less
    communication) before higher ones; and the largest per-GPU batch it allows. DeepSpeed's estimators size one
    given setting's model states; choosing among settings is avmae's."""
    params, largest, usable = sizes.params, sizes.largest_layer, sizes.usable
    for checkpointing in (False, True):
        per_sample = activations["checkpointed" if checkpointing else "stored"]["bytes_per_sample"]
        for stage in (1, 2, 3):
            fixed = model_state_bytes(params, inputs.gpus, stage, largest)["total"] + gradient_bucket_bytes(stage)
            total = fixed + per_sample * inputs.batch_per_gpu
            if total <= usable:
                return {"zero_stage": stage, "activation_checkpointing": checkpointing, "total_gib": total / GIB,
                        "max_batch_per_gpu": int((usable - fixed) // per_sample)}
    return {"zero_stage": None, "activation_checkpointing": None, "total_gib": None, "max_batch_per_gpu": 0}


def largest_batch_that_fits(config: RunConfig, inputs: PlanInputs, activations: dict[str, Any],
                            sizes: _Sizes) -> dict[str, Any]:
    """The most samples per GPU at the plan's ZeRO stage: activations stored (unless the recipe checkpoints), and
    checkpointed when not even one stored sample fits. DeepSpeed has no activation estimate, hence no batch chooser."""
    usable = sizes.usable
    fixed = model_state_bytes(sizes.params, inputs.gpus, inputs.zero_stage, sizes.largest_layer)["total"] + \
        gradient_bucket_bytes(inputs.zero_stage)
    for checkpointing in ((True,) if config.model.activation_checkpointing else (False, True)):
        per_sample = activations["checkpointed" if checkpointing else "stored"]["bytes_per_sample"]
        most = int(max(usable - fixed, 0) // per_sample)
        if most >= 1:
            return {"max_batch_per_gpu": most, "activation_checkpointing": checkpointing}
    return {"max_batch_per_gpu": 0, "activation_checkpointing": None}


def batch_plan(config: RunConfig, inputs: PlanInputs, activations: dict[str, Any],
               sizes: _Sizes) -> dict[str, Any]:
    """Per-GPU batch and gradient accumulation that keep the global batch on ``inputs.gpus`` GPUs.

    The global batch is the recipe's (data.batch_size x RECIPE_GPUS x grad_accum: the paper's 512), unless given.
    Each GPU's share of it is split into micro-batches: the largest divisor of the share that fits in memory (largest
    batch that fits, above), accumulated share / batch times, so batch x accumulation x GPUs is the global batch
    exactly and the optimizer sees the paper's batch whatever the GPU count.
    Assumption (stated, not measured here): MFU does not fall as the per-GPU batch grows, up to memory: larger GEMMs
    fill the tensor cores better and the fixed per-step costs (optimizer step, launch latency, the gradient
    reduction's latency) are spread over more samples. So the largest micro-batch that fits is also the fastest, and
    the target MFU is taken to hold from ``mfu_batch`` up (the per-GPU batch it was measured or assumed at; the GPU
    check's batch sweep, pipelines/gpu_check.sh, measures the real curve and recommends a batch). Below it the plan
    says the target is not assured."""
    global_batch = inputs.global_batch or config.data.batch_size * RECIPE_GPUS * config.grad_accum
    mfu_batch = inputs.mfu_batch or config.data.batch_size
    share, remainder = divmod(global_batch, inputs.gpus)
    fit = largest_batch_that_fits(config, inputs, activations, sizes)
    result = {"global_batch": global_batch, "global_batch_source": "given" if inputs.global_batch else
              f"recipe: data.batch_size {config.data.batch_size} x {RECIPE_GPUS} GPUs x grad_accum "
              f"{config.grad_accum}", "per_gpu_share": global_batch / inputs.gpus, "kept": remainder == 0 and share >= 1,
              "target_mfu": inputs.mfu, "mfu_batch": mfu_batch, **fit}
    if not result["kept"]:
        result.update(batch_per_gpu=None, grad_accum=None, meets_target=False,
                      note=f"global batch {global_batch} is not a whole number of samples per GPU on {inputs.gpus} "
                           f"GPUs: pick a GPU count that divides it, or --global-batch")
        return result
    if fit["max_batch_per_gpu"] < 1:
        result.update(batch_per_gpu=None, grad_accum=None, meets_target=False, note="not one sample fits")
        return result
    batch = max(b for b in range(1, min(share, fit["max_batch_per_gpu"]) + 1) if share % b == 0)
    samples_per_s = inputs.mfu * GPUS[inputs.gpu]["peak_flops"] / pretraining_flops(
        config.model, global_batch=global_batch)["forward_backward"]
    if fit["activation_checkpointing"]:
        samples_per_s *= RECOMPUTE_RATE
    result.update(batch_per_gpu=batch, grad_accum=share // batch, meets_target=batch >= mfu_batch,
                  optimizer_step_seconds=share / samples_per_s, samples_per_s_per_gpu=samples_per_s)
    if batch < mfu_batch:
        result["note"] = (f"{batch} per GPU is below the batch {mfu_batch} at which {inputs.mfu:.0%} MFU is assumed: "
                          f"expect less (fewer GPUs, or a larger global batch, raise it)")
    return result


def capacity_plan(config: RunConfig, inputs: PlanInputs, activations: dict[str, Any]) -> dict[str, Any]:
    _check(inputs)
    model, gpu = config.model, GPUS[inputs.gpu]
    params, largest = trained_parameters(model), largest_layer_parameters(model)
    sizes = _Sizes(params, largest, gpu["memory_bytes"] * (1 - HEADROOM))
    flops = pretraining_flops(model, global_batch=inputs.gpus * inputs.batch_per_gpu)["forward_backward"]
    per_gpu = inputs.mfu * gpu["peak_flops"] / flops  # samples/s: model FLOPs at the stated MFU
    return {
        "inputs": {**inputs.__dict__, "nodes": -(-inputs.gpus // inputs.gpus_per_node),
                   "global_batch": inputs.gpus * inputs.batch_per_gpu, "gpu_peak_tflops": gpu["peak_flops"] / 1e12,
                   "gpu_memory_gib": gpu["memory_bytes"] / GIB, "headroom": HEADROOM},
        "model": {"parameters": params, "largest_layer_parameters": largest,
                  "gflops_per_sample": flops / 1e9, "video_frames": model.video.frames},
        "memory_gib_per_gpu": _memory(inputs, activations, sizes),
        "batch_plan": batch_plan(config, inputs, activations, sizes),
        **_rates(inputs, per_gpu, model.video.frames),
    }


def _check(inputs: PlanInputs) -> None:
    if inputs.gpu not in GPUS:
        raise ValueError(f"unknown GPU {inputs.gpu!r}; known: {', '.join(GPUS)}")
    if inputs.gpus < 1 or inputs.batch_per_gpu < 1 or not 0 < inputs.mfu <= 1 or inputs.bytes_per_sample <= 0:
        raise ValueError("gpus and batch per GPU must be at least 1, mfu in (0, 1], bytes per sample above 0")
    if any(value is not None and value < 1 for value in (inputs.global_batch, inputs.mfu_batch)):
        raise ValueError("global batch and the MFU's batch must be at least 1")


def _memory(inputs: PlanInputs, activations: dict[str, Any], sizes: _Sizes) -> dict[str, Any]:
    """Per GPU, in GiB: model states, buckets and activations (stored and checkpointed), their totals, and whether
    they fit below the headroom."""
    states = model_state_bytes(sizes.params, inputs.gpus, inputs.zero_stage, sizes.largest_layer)
    buckets = gradient_bucket_bytes(inputs.zero_stage)
    stored = activations["stored"]["bytes_per_sample"]
    checkpointed = activations["checkpointed"]["bytes_per_sample"]
    total = {"stored": _memory_total(states, buckets, stored, inputs.batch_per_gpu),
             "checkpointed": _memory_total(states, buckets, checkpointed, inputs.batch_per_gpu)}
    usable = sizes.usable
    return {
        "model_states": {k: v / GIB for k, v in states.items()},
        "gradient_buckets": buckets / GIB,
        "sources": {**{f"model_states.{k}": v for k, v in model_state_sources(inputs.zero_stage).items()},
                    "gradient_buckets": GRADIENT_BUCKETS_SOURCE},
        "activations_per_sample": {"stored": stored / GIB, "checkpointed": checkpointed / GIB},
        "activations": {"stored": stored * inputs.batch_per_gpu / GIB,
                        "checkpointed": checkpointed * inputs.batch_per_gpu / GIB},
        "total": {k: v / GIB for k, v in total.items()},
        "usable": usable / GIB,
        "fits": {k: v <= usable for k, v in total.items()},
        "suggested": _fit(inputs, activations, sizes),
        "activation_method": activations["method"],
        "attention_kernels": activations["stored"]["attention_kernels"],
    }


def _rates(inputs: PlanInputs, per_gpu: float, frames: int) -> dict[str, Any]:
    """Throughput, the loader's and storage's rates, and the shard build's cost, from the samples/s of one GPU."""
    cluster = per_gpu * inputs.gpus
    epoch_s = inputs.clips / cluster
    node_samples = per_gpu * min(inputs.gpus, inputs.gpus_per_node)
    build_core_s = inputs.clips / inputs.build_clips_per_core_s
    return {
        "throughput": {
            "samples_per_s_per_gpu": per_gpu, "samples_per_s": cluster,
            "samples_per_s_per_gpu_checkpointed": per_gpu * RECOMPUTE_RATE,
            "epoch_hours": epoch_s / 3600, "epoch_days": epoch_s / 86400,
            "epoch_days_checkpointed": epoch_s / RECOMPUTE_RATE / 86400,
        },
        "loader": {"frames_per_s_per_gpu": per_gpu * frames, "samples_per_s_per_gpu": per_gpu},
        "storage": {
            "bytes_per_sample": inputs.bytes_per_sample, "bytes_source": inputs.bytes_source,
            "dataset_tb": inputs.clips * inputs.bytes_per_sample / 1e12,
            "read_mb_per_s_per_node": node_samples * inputs.bytes_per_sample / 1e6,
            "read_gb_per_s_cluster": cluster * inputs.bytes_per_sample / 1e9,
        },
        "shard_build": {"clips_per_core_s": inputs.build_clips_per_core_s, "core_hours": build_core_s / 3600,
                        "hours_on_one_16_core_node": build_core_s / 16 / 3600},
    }
