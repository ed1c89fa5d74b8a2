"""The capacity plan as one rich table: each line with its value and where the number comes from."""

from __future__ import annotations

from typing import Any

from rich.table import Table

MEASURED, COMPUTED, STATED = "measured here", "computed", "stated constant"


def model_state_rows(states: dict[str, float], sources: dict[str, str], stage: int) -> list[tuple[str, str, str]]:
    """DeepSpeed's estimate, avmae's additions where the stage has any, and their sum; each with its source."""
    names = {"deepspeed_estimate": f"model states, DeepSpeed's estimate (ZeRO-{stage})",
             "zero1_whole_bf16_gradients": "+ whole bf16 gradients (ZeRO-1)",
             "zero3_bf16_parameter_partition": "+ bf16 parameter partition (ZeRO-3)",
             "total": "model states per GPU"}
    return [(name, f"{states[key]:.2f} GiB", sources[f"model_states.{key}"]) for key, name in names.items()
            if key in ("deepspeed_estimate", "total") or states[key]]


def suggestion_text(fit: dict[str, Any]) -> str:
    """The cheapest ZeRO stage and checkpointing setting that fits, with its memory and largest batch."""
    if fit["zero_stage"] is None:
        return "nothing fits"
    return (f"ZeRO-{fit['zero_stage']}, checkpointing {'on' if fit['activation_checkpointing'] else 'off'}: "
            f"{fit['total_gib']:.1f} GiB; up to {fit['max_batch_per_gpu']} samples/GPU")


def batch_plan_text(b: dict[str, Any], gpus: int) -> str:
    """The per-GPU batch and accumulation that keep the global batch, or why there is none."""
    if b["batch_per_gpu"] is None:
        return f"none: {b['note']}"
    return (f"{b['batch_per_gpu']}/GPU x accumulation {b['grad_accum']} x {gpus} GPUs = {b['global_batch']} "
            f"({b['optimizer_step_seconds']:.2f} s per optimizer step at {b['target_mfu']:.0%} MFU"
            f"{', checkpointed' if b['activation_checkpointing'] else ''}); "
            + (b["note"] if "note" in b else f"at or above batch {b['mfu_batch']}: target MFU assumed met"))


def memory_rows(plan: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Model states, gradient buckets and activations per GPU, their total against the usable memory, and the
    cheapest setting that fits."""
    i, mem = plan["inputs"], plan["memory_gib_per_gpu"]
    fits = {k: "fits" if v else "does NOT fit" for k, v in mem["fits"].items()}
    per_sample = mem["activations_per_sample"]
    return [
        *model_state_rows(mem["model_states"], mem["sources"], i["zero_stage"]),
        ("gradient buckets", f"{mem['gradient_buckets']:.2f} GiB", mem["sources"]["gradient_buckets"]),
        ("activations per sample: stored / checkpointed",
         f"{per_sample['stored'] * 1024:.0f} / {per_sample['checkpointed'] * 1024:.0f} MiB",
         MEASURED + " (CPU, bf16, scaled by depth)"),
        (f"activations at batch {i['batch_per_gpu']}: stored / checkpointed",
         f"{mem['activations']['stored']:.2f} / {mem['activations']['checkpointed']:.2f} GiB", MEASURED + " x batch"),
        (f"total per GPU vs {mem['usable']:.0f} GiB usable",
         f"{mem['total']['stored']:.1f} GiB ({fits['stored']}) / checkpointed {mem['total']['checkpointed']:.1f} GiB "
         f"({fits['checkpointed']})", f"sum; {i['headroom']:.0%} of {i['gpu_memory_gib']:.0f} GiB kept free"),
        ("suggested", suggestion_text(mem["suggested"]), "first that fits, cheapest first"),
    ]


def throughput_rows(plan: dict[str, Any]) -> list[tuple[str, str, str]]:
    """FLOPs per sample, samples per second per GPU and in all, one epoch's time and the loader's frame rate."""
    i, m, t = plan["inputs"], plan["model"], plan["throughput"]
    return [
        ("GFLOPs per sample (fwd + bwd)", f"{m['gflops_per_sample']:.0f}", "closed form (models/counts.py)"),
        (f"samples/s per GPU at {i['mfu']:.0%} MFU", f"{t['samples_per_s_per_gpu']:.0f} "
         f"({t['samples_per_s_per_gpu_checkpointed']:.0f} checkpointed)",
         f"{i['mfu']:.0%} x {i['gpu_peak_tflops']:.0f} TFLOP/s / FLOPs; recompute = 4/3 FLOPs"),
        ("samples/s, all GPUs", f"{t['samples_per_s']:,.0f}", COMPUTED),
        (f"one epoch of {i['clips']:,} clips", f"{t['epoch_hours'] * 60:,.1f} min = {t['epoch_days']:.4f} days "
         f"({t['epoch_days_checkpointed'] * 1440:,.1f} min checkpointed)", COMPUTED),
        ("decoded frames/s per GPU (loader)", f"{plan['loader']['frames_per_s_per_gpu']:,.0f} "
         f"({m['video_frames']} frames x samples/s)", COMPUTED),
    ]


def storage_rows(plan: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The shards: bytes per sample, the dataset's size, the read rate per node and the cost of building them."""
    storage, build = plan["storage"], plan["shard_build"]
    return [
        ("shard bytes per sample", f"{storage['bytes_per_sample'] / 1e3:,.0f} kB", storage["bytes_source"]),
        ("AudioSet-2M shards", f"{storage['dataset_tb']:.2f} TB", COMPUTED),
        ("shard reads per node", f"{storage['read_mb_per_s_per_node']:,.0f} MB/s "
         f"({storage['read_gb_per_s_cluster']:.1f} GB/s all nodes)", COMPUTED + " (one read per sample)"),
        ("shard build", f"{build['core_hours']:,.0f} core-hours "
         f"({build['hours_on_one_16_core_node']:.1f} h on one 16-core node)",
         f"{build['clips_per_core_s']} clips/s per core (docs/performance.md, avmae-bench shard)"),
    ]


def plan_rows(plan: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Every line of the plan in the table's order, each as (quantity, value, source)."""
    i, m, b = plan["inputs"], plan["model"], plan["batch_plan"]
    return [
        ("GPUs (nodes x GPUs/node)", f"{i['gpus']} {i['gpu'].upper()} ({i['nodes']} x {i['gpus_per_node']}), "
                                     f"batch {i['batch_per_gpu']}/GPU = {i['global_batch']}", "input"),
        ("parameters (trained) / largest layer",
         f"{m['parameters'] / 1e6:.2f} M / {m['largest_layer_parameters'] / 1e6:.2f} M",
         "closed form (models/counts.py), tested equal to DeepSpeed's model_to_params"),
        *memory_rows(plan),
        (f"batch for global batch {b['global_batch']} (fits: up to {b['max_batch_per_gpu']}/GPU)",
         batch_plan_text(b, i["gpus"]),
         "largest divisor of the per-GPU share that fits; assumed: MFU does not fall with batch (plan.py)"),
        *throughput_rows(plan),
        *storage_rows(plan),
    ]


def plan_table(plan: dict[str, Any], title: str) -> Table:
    table = Table(title=title)
    for column in ("quantity", "value", "source"):
        table.add_column(column)
    for row in plan_rows(plan):
        table.add_row(*row)
    return table
