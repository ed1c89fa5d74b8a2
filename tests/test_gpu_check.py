"""pipelines/gpu_check.sh in its CPU mode: the same steps as on a GPU at tiny size, so the script is known to work
before a GPU sees it. One run of the script; the tests read its JSON and table. On a machine whose driver shows a GPU
the same run is a rehearsal only: it must not say PASSED."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avmae.bench.gpu_check_table import check_table
from avmae.distributed import gpus_of_machine
from tests.helpers import REPO

slow_check = [pytest.mark.slow, pytest.mark.dali]
GPU_HERE = gpus_of_machine().count > 0  # the driver's view, whatever torch makes of it


@pytest.fixture(scope="module")
def check(tmp_path_factory):
    pytest.importorskip("nvidia.dali")
    out = tmp_path_factory.mktemp("gpu_check") / "out"
    result = subprocess.run(["bash", "pipelines/gpu_check.sh"], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OUT": str(out), "AVMAE_SETUP": "0", "AVMAE_CHECK_MODE": "cpu",
                                 "AVMAE_PYTHON": os.environ.get("AVMAE_PYTHON", "python3")})
    return result, json.loads((out / "gpu_check.json").read_text()), out


@pytest.mark.slow
@pytest.mark.dali
def test_the_cpu_mode_passes_and_prints_one_table(check):
    result, data, _ = check
    assert data["machine"]["mode"] == "cpu" and data["machine"]["visible_gpus"] == gpus_of_machine().count
    assert list(data["steps"]) == ["shards", "decode", "recipe", "feed", "collectives", "resume", "eval"]
    assert all(step["ok"] for step in data["steps"].values()), data["steps"]
    table = result.stdout
    if GPU_HERE:  # a rehearsal beside a GPU never passes
        assert result.returncode == 1 and not data["passed"] and "PASSED" not in table
        assert "CPU REHEARSAL ONLY" in table
    else:
        assert result.returncode == 0, result.stderr[-3000:]
        assert data["passed"] and "PASSED" in table
    assert table.count("pass ") == 3  # shards, resume, eval: the checks that can fail
    for row in ("DALI cpu decode", "DALI feed, data.workers 1 (no decode)", "recipe step, batch 4",
                "recipe step, batch 8", "recommended batch per GPU", "all-reduce bus bandwidth",
                "all-gather bus bandwidth", "16-step run, stop at 8 + resume", "avmae-eval: DALI = torch"):
        assert row in table, row
    assert "equal bit for bit" in table


@pytest.mark.slow
@pytest.mark.dali
def test_measurements_are_present_and_sane(check):
    _, data, _ = check
    steps = data["steps"]
    assert steps["shards"]["samples"] == 12 and steps["shards"]["failures"] == 0
    assert steps["shards"]["splits"]["val"] >= 2
    decode = steps["decode"]
    assert decode["dali_device"] == "cpu" and decode["video"] == [4, 4, 3, 64, 64]
    assert decode["samples_per_s"] > 1 and decode["frames_per_s"] == pytest.approx(4 * decode["samples_per_s"])
    recipe = steps["recipe"]
    assert recipe["precision"] == "fp32" and recipe["batch_per_gpu"] == 4 and recipe["steps_timed"] == 3
    # the sweep: the recipe's batch, then twice it; no GPU memory to run out of, so both fit
    assert [run["batch_per_gpu"] for run in recipe["sweep"]] == [4, 8] and recipe["out_of_memory_at"] is None
    for run in recipe["sweep"]:
        assert run["steps_timed"] == 3 and run["fits"] and 0.001 < run["step_seconds"] < 30
        assert run["samples_per_s"] == pytest.approx(run["batch_per_gpu"] / run["step_seconds"])
        assert run["achieved_tflops"] == pytest.approx(run["samples_per_s"] * run["gflops_per_sample"] / 1e3)
        assert run["mfu"] is None and run["peak_gpu_memory_gib"] is None  # no GPU: nothing to claim
        assert 0.1 < run["peak_host_rss_gib"] < 8
    assert recipe["step_seconds"] == recipe["sweep"][0]["step_seconds"]
    fastest = max(recipe["sweep"], key=lambda run: run["samples_per_s"])
    assert recipe["recommended_batch_per_gpu"] == fastest["batch_per_gpu"] and recipe["memory_limit_gib"] is None
    feed = steps["feed"]
    assert feed["workers"] == 1 and feed["batch_size"] == 4 and feed["frames_per_sample"] == 4
    assert feed["samples_per_s"] > 1 and feed["worker_cpu_ms_per_sample"] > 0
    assert feed["times_the_recipe_step"] == pytest.approx(feed["samples_per_s"] / recipe["samples_per_s"])
    collectives = steps["collectives"]
    assert collectives["backend"] == "gloo" and collectives["processes"] == 2
    for op, factor in (("all_reduce", 1.0), ("all_gather", 0.5)):  # nccl-tests' bus factors for 2 ranks
        assert collectives[op]["algbw_gb_s"] > 0.001
        assert collectives[op]["busbw_gb_s"] == pytest.approx(collectives[op]["algbw_gb_s"] * factor)


@pytest.mark.slow
@pytest.mark.dali
def test_resumed_run_equals_the_uninterrupted_one(check):
    _, data, out = check
    resume = data["steps"]["resume"]
    assert resume["ok"] and resume["stopped_at"] == 8 and resume["resumed_to"] == 16 and resume["all_steps_logged"]
    # fp32 on a CPU, deterministic algorithms on: equal bit for bit, and no kernel warned
    assert resume["max_rel_gap_before_stop"] == 0.0 and resume["max_rel_gap_after_resume"] == 0.0
    assert resume["exact"] and resume["rtol"] == 0.0 and resume["nondeterministic_ops"] == []
    assert resume["last_loss"] < resume["first_loss"]
    # the resumed run really resumed: its log says so, and its metrics continue from step 9
    assert "resumed from step 8" in (out / "resumed_train.err").read_text() + (out / "resumed_train.out").read_text()
    steps = [json.loads(line)["step"] for line in (out / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 17))


@pytest.mark.slow
@pytest.mark.dali
def test_eval_through_dali_equals_torch(check):
    _, data, out = check
    evaluation = data["steps"]["eval"]
    assert evaluation["ok"] and evaluation["metrics_equal"] and evaluation["same_keys"]
    assert evaluation["samples"] == data["steps"]["shards"]["splits"]["val"]
    assert evaluation["max_score_gap"] <= 1e-4
    assert set(evaluation["metric_tolerances"]) == {"classes", "samples", "top1", "top5"}
    assert evaluation["metric_tolerances"]["samples"] == 0.0 and evaluation["metrics_within"]
    reports = {b: json.loads((out / f"eval_{b}" / "report.json").read_text()) for b in ("dali", "torch")}
    assert reports["dali"]["metrics"]["top1"] == reports["torch"]["metrics"]["top1"]


# --- beside a GPU (avmae.distributed.gpus_of_machine: the driver's view) a CPU rehearsal never passes ------------


def _result(**extra) -> dict:
    steps = {"shards": {"ok": True, "samples": 12, "failures": 0, "shards": 4, "build_seconds": 1.0,
                        "splits": {"train": 9, "val": 3}}}
    return {"machine": {"host": "node", "cpus": 16, "torch": "2.11.0", "mode": "cpu", "visible_gpus": 1},
            "notes": [], "steps": steps, "wall_seconds": 1.0, "passed": True, **extra}


def test_a_cpu_rehearsal_beside_a_gpu_never_prints_passed():
    from avmae.bench.gpu_check import rehearsal_only
    from avmae.bench.gpu_check_mode import CPU, GPU

    assert rehearsal_only(CPU, 0) is None and rehearsal_only(GPU, 2) is None
    assert rehearsal_only(CPU, 2).startswith("2 GPU(s) visible")
    assert "PASSED" in check_table(_result())
    table = check_table(_result(passed=False, rehearsal_only="1 GPU(s) visible"))
    assert "PASSED" not in table and "CPU REHEARSAL ONLY" in table and "1 GPU(s) visible" in table.splitlines()[0]


def test_cuda_mode_where_torch_has_no_gpu_fails_in_one_line(tmp_path):
    """The check's own guard: CUDA mode where torch has no CUDA stops before any step, naming both sides."""
    import torch

    from avmae.bench import gpu_check
    from avmae.bench.gpu_check_mode import GPU

    if torch.cuda.is_available():
        pytest.skip("torch can use a GPU here")
    result = gpu_check.run_check(tmp_path / "out", GPU, log=lambda line: None)
    assert not result["passed"] and list(result["steps"]) == ["cuda"]
    error = result["steps"]["cuda"]["error"]
    assert f"cannot use a GPU here ({gpus_of_machine().count} shown by the NVIDIA driver)" in error
    assert f"torch {torch.__version__} (CUDA " in error
    assert json.loads((tmp_path / "out" / "gpu_check.json").read_text())["passed"] is False


# --- the parts of the check that need no run: out-of-memory, determinism warnings, the sweep's rows ---------------


def test_out_of_memory_and_nondeterministic_kernels_are_read_from_the_logs(tmp_path):
    from avmae.bench.gpu_check import nondeterministic_ops, out_of_memory

    (tmp_path / "recipe_b64_train.err").write_text(
        "Traceback (most recent call last):\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    (tmp_path / "recipe_b8_train.err").write_text("RuntimeError: DataLoader worker exited\n")
    assert out_of_memory(tmp_path / "recipe_b64_train") and not out_of_memory(tmp_path / "recipe_b8_train")
    assert not out_of_memory(tmp_path / "never_ran")
    flash = ("UserWarning: Flash Attention defaults to a non-deterministic algorithm. To explicitly enable determinism "
             "call torch.use_deterministic_algorithms(True, warn_only=False).")
    scatter = "UserWarning: index_add_cuda_ does not have a deterministic implementation, but you set ..."
    assert nondeterministic_ops([f"a\n{flash}\n", f"{flash}\n{scatter}\n", "step 3\n"]) == [flash, scatter]


def _sweep_step() -> dict:
    def run(batch, seconds, memory):
        return {"batch_per_gpu": batch, "model_parameters_millions": 596.0, "precision": "bf16", "steps_timed": 10,
                "step_seconds": seconds, "samples_per_s": batch / seconds, "achieved_tflops": 1.0, "mfu": 0.3,
                "peak_tflops": 989.0, "peak_gpu_memory_gib": memory, "peak_host_rss_gib": 3.0, "fits": memory < 70}
    sweep = [run(8, 0.05, 6.0), run(32, 0.15, 20.0), {"batch_per_gpu": 64, "out_of_memory": True}]
    return {**sweep[0], "sweep": sweep, "recommended_batch_per_gpu": 32, "memory_limit_gib": 70.4, "headroom": 0.1,
            "out_of_memory_at": 64, "ok": True}


def test_the_table_shows_each_batch_the_out_of_memory_and_the_recommendation():
    result = _result()
    result["steps"]["recipe"] = _sweep_step()
    table = check_table(result)
    assert "recipe step, batch 8 (596 M params, bf16)" in table and "50 ms = 160.0 samples/s" in table
    assert "recipe step, batch 32" in table and "150 ms = 213.3 samples/s" in table
    assert "recipe step, batch 64" in table and "out of GPU memory" in table
    assert "32: the most samples/s with peak under 70.4 GiB (10% kept free)" in table


def test_metric_tolerance_is_the_share_of_close_calls():
    import numpy as np

    from avmae.bench.score_agreement import close_calls, metric_tolerances

    scores = np.array([[0.50, 0.30, 0.20],   # label 0, 0.20 clear of the next: no flip with a gap of 0.05
                       [0.40, 0.35, 0.25],   # label 1, 0.05 below the top: flips if both move 0.025 or more
                       [0.10, 0.20, 0.70],   # label 2, clear
                       [0.34, 0.33, 0.33]])  # label 0, 0.01 above the others
    labels = np.array([0, 1, 2, 0])
    assert close_calls(scores, labels, 1, 0.03) == 2 and close_calls(scores, labels, 1, 0.006) == 1
    assert close_calls(scores, labels, 1, 0.0) == 0
    # top-2: label 1 against the 2nd highest other class (0.25), 0.10 apart; label 0 of the last row 0.01 apart
    assert close_calls(scores, labels, 2, 0.06) == 2 and close_calls(scores, labels, 2, 0.04) == 1
    assert close_calls(scores, labels, 5, 1.0) == 0  # 3 classes: a top-5 always holds the label
    assert metric_tolerances(scores, labels, 0.03, ["top1", "samples"]) == {"top1": 0.5, "samples": 0.0}


def test_the_sweep_stops_at_the_first_out_of_memory_and_recommends_what_fits(tmp_path):
    """The sweep's decisions, with the trainer runs replaced by what a GPU reports (a CUDA out-of-memory cannot
    happen on this CPU): batch 32 over the memory limit, 64 out of memory, 128 never tried."""
    from dataclasses import replace

    from avmae.bench.gpu_check import GpuCheck, StepFailed, recommend_batch
    from avmae.bench.gpu_check_mode import CPU

    reported = {8: (160.0, 30.0), 16: (230.0, 50.0), 32: (260.0, 75.0)}  # samples/s, peak GiB

    class Sweep(GpuCheck):
        def recipe_at(self, batch):
            if batch not in reported:
                (self.out / f"recipe_b{batch}_train.err").write_text("torch.OutOfMemoryError: CUDA out of memory.\n")
                raise StepFailed(f"recipe batch {batch} exited 1")
            rate, memory = reported[batch]
            return {"batch_per_gpu": batch, "samples_per_s": rate, "peak_gpu_memory_gib": memory}

    step = Sweep(replace(CPU, batch_size=8, sweep_batches=(8, 16, 32, 64, 128)), tmp_path).recipe_step()
    assert [run["batch_per_gpu"] for run in step["sweep"]] == [8, 16, 32, 64] and step["out_of_memory_at"] == 64
    assert step["samples_per_s"] == 160.0 and step["recommended_batch_per_gpu"] == 32  # no limit on a CPU
    assert recommend_batch(step["sweep"], 70.4) == 16 and not step["sweep"][2]["fits"]
    assert recommend_batch(step["sweep"], 20.0) is None
    with pytest.raises(StepFailed, match="the recipe's own batch 8 runs out of GPU memory"):
        reported.pop(8)
        Sweep(replace(CPU, batch_size=8, sweep_batches=(8, 16)), tmp_path).recipe_step()


# --- a child of the check: its deadline, its exit status, its own peak memory -------------------------------------

def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


# Touches ``MIB`` MiB (a bytes object filled with ones), in this process or, with "grandchild", in one it waits for.
ALLOCATE = "import sys; data = b'\\1' * (int(sys.argv[1]) << 20)"
ALLOCATE_IN_GRANDCHILD = ("import subprocess, sys; "
                          f"subprocess.run([sys.executable, '-c', {ALLOCATE!r}, sys.argv[1]], check=True)")


def test_each_child_reports_its_own_peak_memory_and_that_of_what_it_waited_for(tmp_path):
    """A child's figure is its own, not the largest of the children before it: 300 MiB, then 20 MiB, then 300 MiB
    held by a process the child waited for."""
    from avmae.bench.gpu_check_child import run_child

    big = run_child([*_python(ALLOCATE), "300"], tmp_path / "big", dict(os.environ), timeout_s=60)
    small = run_child([*_python(ALLOCATE), "20"], tmp_path / "small", dict(os.environ), timeout_s=60)
    nested = run_child([*_python(ALLOCATE_IN_GRANDCHILD), "300"], tmp_path / "nested", dict(os.environ), timeout_s=60)
    assert 300 / 1024 < big.max_rss_gib < 400 / 1024
    assert 20 / 1024 < small.max_rss_gib < 100 / 1024
    assert 300 / 1024 < nested.max_rss_gib < 400 / 1024
    assert big.seconds > 0 and small.seconds > 0 and nested.seconds > 0


def test_a_child_past_its_deadline_is_killed_with_what_it_started(tmp_path):
    from avmae.bench.gpu_check_child import StepFailed, run_child

    pid_file = tmp_path / "grandchild.pid"
    hang = ("import subprocess, sys, time; "
            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
            f"open({str(pid_file)!r}, 'w').write(str(child.pid)); time.sleep(120)")
    started = time.perf_counter()
    with pytest.raises(StepFailed, match=r"hang \(python -c\) ran past 3 s and was killed \(log: .*hang.err\)"):
        run_child(_python(hang), tmp_path / "hang", dict(os.environ), timeout_s=3)
    assert time.perf_counter() - started < 30
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 10
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(grandchild)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a reaper has ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_a_failed_child_is_named_with_its_exit_status_and_last_line(tmp_path):
    from avmae.bench.gpu_check_child import StepFailed, run_child

    failing = "import sys; print('first', file=sys.stderr); print('the reason', file=sys.stderr); sys.exit(3)"
    with pytest.raises(StepFailed, match=r"failing \(python -c\) exited 3: the reason \(log: .*failing.err\)"):
        run_child(_python(failing), tmp_path / "failing", dict(os.environ), timeout_s=60)
    killed = "import os, signal; os.kill(os.getpid(), signal.SIGTERM)"
    with pytest.raises(StepFailed, match=r"exited -15: \(no output\)"):
        run_child(_python(killed), tmp_path / "killed", dict(os.environ), timeout_s=60)
    assert (tmp_path / "failing.out").exists() and "the reason" in (tmp_path / "failing.err").read_text()
