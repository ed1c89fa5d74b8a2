"""The GPU check's result (gpu_check.run_check) as the one table a person reads: a row per measurement, its value,
and pass / FAIL for the checks that can fail."""

from __future__ import annotations

from typing import Any


def _value(name: str, step: dict[str, Any]) -> list[tuple[str, str]]:
    """(row label, value) pairs of one passed step."""
    if name == "shards":
        splits = ", ".join(f"{k} {v}" for k, v in sorted(step["splits"].items()))
        return [("shards (avmae-shard build)", f"{step['samples']} samples ({splits}) in {step['shards']} shards, "
                                               f"{step['failures']} failures, {step['build_seconds']:.1f} s")]
    if name == "decode":
        return [(f"DALI {step['dali_device']} decode", f"{step['samples_per_s']:.1f} samples/s = "
                 f"{step['frames_per_s']:.0f} frames/s ({step['frames_per_sample']} frames -> {step['crop']} px, "
                 f"batch {step['batch_size']}, {step['threads']} threads)")]
    if name == "feed":
        times = step.get("times_the_recipe_step")
        against = f"; {times:.1f}x the recipe step's rate (needed: 4x)" if times else ""
        return [(f"DALI feed, data.workers {step['workers']} (no decode)",
                 f"{step['samples_per_s']:.0f} samples/s{against}; CPU per sample: training process "
                 f"{step['trainer_cpu_ms_per_sample']:.2f} ms, each worker {step['worker_cpu_ms_per_sample']:.2f} ms "
                 f"(batch {step['batch_size']}, {step['frames_per_sample']} frames)")]
    if name == "recipe":
        return _recipe_rows(step)
    if name == "collectives":
        if "note" in step:
            return [("all-reduce / all-gather", step["note"])]
        where = f"{step['backend']}, {step['processes']} processes, {step['bytes'] / 2**20:.0f} MiB {step['dtype']}"
        return [(f"{op.replace('_', '-')} bus bandwidth", f"{step[op]['busbw_gb_s']:.2f} GB/s "
                 f"(algorithm {step[op]['algbw_gb_s']:.2f} GB/s; {where})") for op in ("all_reduce", "all_gather")]
    if name == "resume":
        exact = "equal bit for bit" if step["exact"] else (
            f"max relative gap to the uninterrupted run {step['max_rel_gap_before_stop']:.1e} before the stop, "
            f"{step['max_rel_gap_after_resume']:.1e} after (tolerance {step['rtol']:.0e})")
        kernels = f"; non-deterministic kernels: {len(step['nondeterministic_ops'])} (gpu_check.json)" \
            if step["nondeterministic_ops"] else ""
        return [(f"{step['steps']}-step run, stop at {step['stopped_at']} + resume",
                 f"loss {step['first_loss']:.4f} -> {step['last_loss']:.4f}; {exact}{kernels}")]
    if name == "eval":
        shown = ", ".join(f"{k} {v:.3f}" for k, v in step["metrics_dali"].items() if k not in ("classes", "samples"))
        allowed = ", ".join(f"{k} {v:.3f}" for k, v in step["metric_tolerances"].items() if v)
        verdict = "equal" if step["metrics_equal"] else "within tolerance" if step["metrics_within"] else "DIFFERENT"
        return [("avmae-eval: DALI = torch", f"{step['samples']} samples, {shown} (both: {verdict}"
                 f"{'; allowed: ' + allowed if allowed else ''}); max score gap {step['max_score_gap']:.1e} "
                 f"(tolerance {step['score_atol']:.0e})")]
    return [(name, "")]


def _recipe_rows(step: dict[str, Any]) -> list[tuple[str, str]]:
    """A row per batch of the sweep, its peak memory, and the batch recommended."""
    rows = []
    for run in step["sweep"]:
        if run.get("out_of_memory"):
            rows.append((f"recipe step, batch {run['batch_per_gpu']}", "out of GPU memory: the sweep ends here"))
            continue
        mfu = f", MFU {run['mfu']:.1%} of {run['peak_tflops']:g} TFLOP/s" if run["mfu"] is not None else ""
        memory = f"GPU {run['peak_gpu_memory_gib']:.1f} GiB allocated" if run["peak_gpu_memory_gib"] else \
            f"host {run['peak_host_rss_gib']:.2f} GiB resident"
        rows.append((f"recipe step, batch {run['batch_per_gpu']} ({run['model_parameters_millions']:.0f} M params, "
                     f"{run['precision']})", f"{run['step_seconds'] * 1e3:.0f} ms = {run['samples_per_s']:.1f} "
                     f"samples/s, {run['achieved_tflops']:.2f} TFLOP/s{mfu}; peak {memory}"
                     f"{'' if run['fits'] else ' (over the memory limit)'}"))
    limit = f"peak under {step['memory_limit_gib']:.1f} GiB ({step['headroom']:.0%} kept free)" \
        if step["memory_limit_gib"] else "no GPU memory limit on a CPU"
    recommended = step["recommended_batch_per_gpu"]
    rows.append(("recommended batch per GPU", f"{recommended if recommended else 'none fits'}: the most samples/s "
                 f"with {limit}"))
    return rows


CAN_FAIL = {"shards", "resume", "eval"}


def check_table(result: dict[str, Any]) -> str:
    rows = []
    for name, step in result["steps"].items():
        if not step["ok"]:
            rows.append((name, f"FAIL: {step['error']}" if "error" in step else "FAIL", "FAIL"))
            continue
        verdict = "pass" if name in CAN_FAIL else ""
        rows += [(label, value, verdict) for label, value in _value(name, step)]
    machine = result["machine"]
    where = ", ".join(machine.get("gpus") or [f"CPU only, {machine['cpus']} cores"])
    outcome = "PASSED" if result["passed"] else "FAILED"
    if "rehearsal_only" in result:  # every step may have run well: still no word on this machine's GPUs
        where = f"CPU mode, {machine['cpus']} cores; {machine['visible_gpus']} GPU(s) visible"
        outcome = "CPU REHEARSAL ONLY, NO VERDICT ON THE GPU"
    head = f"avmae GPU check on {machine['host']} ({where}), torch {machine['torch']}: " \
           f"{outcome} in {result['wall_seconds']:.0f} s"
    width = max(len(label) for label, _, _ in rows)
    lines = [head, *result["notes"], ""]
    lines += [f"{label:<{width}}  {verdict:<4}  {value}" for label, value, verdict in rows]
    return "\n".join(lines)
