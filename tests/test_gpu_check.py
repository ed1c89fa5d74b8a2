"""pipelines/gpu_check.sh in its CPU mode: the same steps as on a GPU at tiny size, so the script is known to work
before a GPU sees it. One run of the script; the tests read its JSON and table. On a machine whose driver shows a GPU
the same run is a rehearsal only: it must not say PASSED."""

from __future__ import annotations

import json
import os
import subprocess

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
    for row in ("DALI cpu decode", "DALI feed, data.workers 1 (no decode)", "recipe step", "peak memory", "all-reduce bus bandwidth",
                "all-gather bus bandwidth", "16-step run, stop at 8 + resume", "avmae-eval: DALI = webdataset"):
        assert row in table, row


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
    assert 0.001 < recipe["step_seconds"] < 30
    assert recipe["samples_per_s"] == pytest.approx(4 / recipe["step_seconds"])
    assert recipe["achieved_tflops"] == pytest.approx(recipe["samples_per_s"] * recipe["gflops_per_sample"] / 1e3)
    assert recipe["mfu"] is None and recipe["peak_gpu_memory_gib"] is None  # no GPU: nothing to claim
    assert 0.1 < recipe["peak_host_rss_gib"] < 8
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
    assert resume["max_rel_gap_before_stop"] <= 1e-4 and resume["max_rel_gap_after_resume"] <= 1e-4
    assert resume["last_loss"] < resume["first_loss"]
    # the resumed run really resumed: its log says so, and its metrics continue from step 9
    assert "resumed from step 8" in (out / "resumed_train.err").read_text() + (out / "resumed_train.out").read_text()
    steps = [json.loads(line)["step"] for line in (out / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 17))


@pytest.mark.slow
@pytest.mark.dali
def test_eval_through_dali_equals_webdataset(check):
    _, data, out = check
    evaluation = data["steps"]["eval"]
    assert evaluation["ok"] and evaluation["metrics_equal"] and evaluation["same_keys"]
    assert evaluation["samples"] == data["steps"]["shards"]["splits"]["val"]
    assert evaluation["max_score_gap"] <= 1e-4
    reports = {b: json.loads((out / f"eval_{b}" / "report.json").read_text()) for b in ("dali", "webdataset")}
    assert reports["dali"]["metrics"]["top1"] == reports["webdataset"]["metrics"]["top1"]


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
