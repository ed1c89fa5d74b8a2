"""The trainer under faults, for real (the faults a long run meets): a diverging learning rate, a truncated file in
the newest complete checkpoint, a pickle planted in a checkpoint, a changed config on resume, a full disk during a
save, and a rank killed among 2 under torchrun. Each run is a real ``avmae-train`` process (DeepSpeed over gloo)."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO, free_port, metrics, run_config

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def train(config: Path, *overrides: str, processes: int = 0, timeout: float = 300) -> subprocess.CompletedProcess:
    """avmae-train in one process (processes=0) or under torchrun; returns the finished process, whatever its code."""
    launcher = [sys.executable, "-m", "avmae.cli.train"] if not processes else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
        f"--master_port={free_port()}", "-m", "avmae.cli.train"]
    command = launcher + ["--config", str(config)] + [arg for item in overrides for arg in ("--set", item)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=timeout, env=ENV)


def result_of(process: subprocess.CompletedProcess) -> dict:
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads([line for line in process.stdout.splitlines() if line.startswith("{")][-1])


def stop_line(process: subprocess.CompletedProcess) -> str:
    lines = [line for line in process.stderr.splitlines() if line.startswith("avmae-train: ")]
    assert len(lines) == 1, process.stderr[-3000:]
    return lines[0]


def fp32_weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    return get_fp32_state_dict_from_zero_checkpoint(str(run / "checkpoints"), tag=f"step{step:08d}")


@pytest.mark.slow
def test_a_diverging_run_skips_counts_and_stops_without_an_export(shards, tmp_path):
    config = run_config(tmp_path, shards, optim={"steps": 12, "lr": 1e6, "warmup_steps": 0},
                        checkpoint={"every": 1, "keep": 20}, log={"every": 4, "progress": False},
                        guard={"nonfinite_in_row": 4, "nonfinite_total": 10})
    process = train(config)
    run = tmp_path / "run"
    assert process.returncode == 1
    line = stop_line(process)
    assert "training diverged: step 5" in line and "4 in a row (guard.nonfinite_in_row 4)" in line
    assert "last finite losses: step 1 " in line and f"newest good checkpoint: {run}/checkpoints/step00000001" in line
    assert not (run / "export").exists() and '"finished"' not in process.stdout
    records = metrics(run)
    skipped = [r for r in records if "skipped_step" in r]
    assert [r["step"] for r in skipped] == [2, 3, 4, 5]  # every skipped step, although log.every is 4
    assert [r["nonfinite_in_row"] for r in skipped] == [1, 2, 3, 4]
    # The skipped steps did not touch the weights: DeepSpeed discarded each update (fp32 ZeRO-2 on CPU).
    before, after = fp32_weights(run, 1), fp32_weights(run, 4)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.isfinite(v).all() for v in after.values())


@pytest.mark.slow
def test_a_truncated_file_in_the_newest_checkpoint_falls_back_to_the_previous_one(shards, tmp_path):
    config = run_config(tmp_path, shards, checkpoint={"every": 3, "keep": 3})
    assert result_of(train(config, "stop_after=6"))["step"] == 6
    newest = tmp_path / "run" / "checkpoints" / "step00000006"
    optim = next(newest.glob("*optim_states.pt"))
    size = optim.stat().st_size
    with open(optim, "r+b") as handle:
        handle.truncate(size // 2)
    marker = json.loads((newest / "complete.json").read_text())
    assert marker["files"][optim.name]["bytes"] == size and "crc32" in marker["files"][optim.name]
    second = train(config)
    assert result_of(second) == {"step": 8, "finished": True, "signal": 0, "best": None}
    assert (f"skipped checkpoint {newest}: {optim.name} is {size // 2} bytes, its marker says {size}"
            in second.stderr)
    assert "resumed from step 3" in second.stderr
    steps = [r["step"] for r in metrics(tmp_path / "run")]
    assert steps == list(range(1, 9))  # the steps after 3 were dropped and logged again, once
    last = metrics(tmp_path / "run")[-1]
    assert last["samples_used"] + last["samples_skipped"] == last["samples_drawn"] == 8 * 4


@pytest.mark.slow
def test_a_planted_pickle_in_a_checkpoint_does_not_run_and_a_changed_config_is_refused(shards, tmp_path):
    config = run_config(tmp_path, shards, checkpoint={"every": 2, "keep": 2})
    assert result_of(train(config, "stop_after=2"))["step"] == 2
    folder = tmp_path / "run" / "checkpoints" / "step00000002"
    witness = tmp_path / "pwned"

    class Plant:
        def __reduce__(self):
            return (os.system, (f"touch {witness}",))

    payload = pickle.dumps(Plant())
    for name in ("rng_rank0.pt", "rng_rank0.pkl"):  # where avmae used to keep its random state
        (folder / name).write_bytes(payload)
    assert json.loads((folder / "rng_rank0.json").read_text())["torch"]  # the state avmae reads: JSON

    refused = train(config, "model.encoder.depth=4", "optim.lr=1e-3", "data.workers=2")
    assert refused.returncode == 2
    line = stop_line(refused)
    assert "model.encoder.depth 3 -> 4" in line and "optim.lr 0.002 -> 0.001" in line
    assert "data.workers 0 -> 2" in line  # the readers the shards are dealt to: not a speed setting
    resumed = train(config, "optim.steps=6", "log.every=2", "checkpoint.every=3")  # changes a resume may make
    assert result_of(resumed)["step"] == 6 and "resumed from step 2" in resumed.stderr
    assert not witness.exists()


@pytest.mark.slow
def test_a_full_disk_during_a_save_stops_the_run_and_a_rerun_resumes(shards, tmp_path):
    workdir = tmp_path / "small"
    workdir.mkdir()
    # One checkpoint of the tiny model is ~5.5 MB: 9 MB holds the first one and runs out in the second.
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=9m", "tmpfs", str(workdir)], check=True)
    try:
        config = run_config(tmp_path, shards, workdir=str(workdir / "run"), checkpoint={"every": 2, "keep": 5},
                            log={"every": 1, "progress": False, "tensorboard": False})
        full = train(config)
        assert full.returncode == 1
        line = stop_line(full)
        assert f"checkpoint {workdir}/run/checkpoints/step00000004 (step 4) could not be written" in line
        assert f"the newest complete checkpoint is {workdir}/run/checkpoints/step00000002" in line
        assert not (workdir / "run" / "checkpoints" / "step00000004" / "complete.json").exists()
        assert not (workdir / "run" / "export").exists()
        subprocess.run(["mount", "-o", "remount,size=64m", str(workdir)], check=True)
        second = train(config)
        assert result_of(second)["finished"] and "resumed from step 2" in second.stderr
        assert [r["step"] for r in metrics(workdir / "run")] == list(range(1, 9))
    finally:
        subprocess.run(["umount", "-l", str(workdir)], check=False)


@pytest.mark.slow
@pytest.mark.serial
def test_a_save_that_fails_on_one_rank_stops_every_rank_at_once_saying_why(shards, tmp_path):
    """Only rank 1's write fails: a directory stands where its optimizer shard of step 4 goes (a real error, as a
    full disk or quota on its node would be). It used to leave DeepSpeed's last barrier for the agreement while
    rank 0 waited in it: both waited out the collective timeout and ended "a collective failed at step 5", without
    the error, which the SLURM scripts then requeue as a lost rank."""
    config = run_config(tmp_path, shards, optim={"steps": 6, "lr": 1e-3, "warmup_steps": 1},
                        checkpoint={"every": 2, "keep": 5}, guard={"collective_timeout_s": 120})
    checkpoints = tmp_path / "run" / "checkpoints"
    blocked = checkpoints / "step00000004" / "zero_pp_rank_1_mp_rank_00_optim_states.pt"
    blocked.mkdir(parents=True)
    started = time.time()
    failed = train(config, processes=2, timeout=600)
    took = time.time() - started
    assert failed.returncode != 0 and took < 110, (took, failed.stderr[-3000:])  # not the collective timeout
    assert "a collective failed" not in failed.stderr, failed.stderr[-3000:]
    written = f"checkpoint {checkpoints}/step00000004 (step 4) could not be written"
    assert f"{written}: {blocked}: " in failed.stderr and "Is a directory" in failed.stderr, failed.stderr[-3000:]
    assert f"{written} on another rank" in failed.stderr
    assert f"the newest complete checkpoint is {checkpoints}/step00000002" in failed.stderr
    assert not (checkpoints / "step00000004" / "complete.json").exists()
    blocked.rmdir()
    resumed = train(config, processes=2)
    assert result_of(resumed)["step"] == 6 and "resumed from step 2" in resumed.stderr
    assert [r["step"] for r in metrics(tmp_path / "run")] == list(range(1, 7))


@pytest.mark.slow
def test_a_resume_on_another_number_of_ranks_is_refused_in_one_line(shards, tmp_path):
    config = run_config(tmp_path, shards, checkpoint={"every": 2, "keep": 2})
    assert result_of(train(config, "stop_after=2"))["step"] == 2  # one rank
    refused = train(config, processes=2)
    assert refused.returncode != 0
    said = (f"avmae-train: {tmp_path}/run/checkpoints/step00000002 was written by 1 ranks and this run has 2: ZeRO's "
            "partitioned optimizer state resumes only on as many ranks (relaunch with 1, or start a new run from its "
            "export with init)")
    lines = [line for line in refused.stderr.splitlines() if line.startswith("avmae-train: ")]
    assert lines and all(line == said for line in lines), refused.stderr[-3000:]  # each rank's line whole (say())
    assert "Traceback" not in refused.stderr.split("torch/distributed/elastic")[0], refused.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.serial
def test_an_export_that_cannot_be_written_stops_every_rank_in_one_line_and_a_rerun_writes_it(shards, tmp_path):
    """A directory stands where rank 0 writes the export (a real error, as a full disk would be): rank 0 used to
    raise a traceback while rank 1 waited in the barrier after the export for the collective timeout."""
    config = run_config(tmp_path, shards, optim={"steps": 4, "lr": 1e-3, "warmup_steps": 1},
                        checkpoint={"every": 2, "keep": 2}, guard={"collective_timeout_s": 120})
    blocked = tmp_path / "run" / "export" / "model.safetensors"
    blocked.mkdir(parents=True)
    started = time.time()
    failed = train(config, processes=2, timeout=600)
    assert failed.returncode != 0 and time.time() - started < 110, failed.stderr[-3000:]
    lines = [line for line in failed.stderr.splitlines() if line.startswith("avmae-train: ")]
    assert any(line.startswith(f"avmae-train: the export to {blocked.parent} could not be written: ")
               and "Is a directory" in line and line.endswith("the same command again writes it") for line in lines)
    assert f"avmae-train: the export to {blocked.parent} could not be written on rank 0; the run's" in failed.stderr
    assert "Traceback" not in failed.stderr.split("torch/distributed/elastic")[0], failed.stderr[-3000:]  # torchrun's
    blocked.rmdir()
    again = train(config, processes=2)
    assert result_of(again)["finished"] and blocked.is_file()


def fault_a_rank_mid_run(tmp_path: Path, config: Path, signum: int) -> tuple[float, str]:
    """Start 2 ranks under torchrun, send ``signum`` to rank 1 after step 6; how long the job took to end, and its
    stderr (the job must have failed)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "-m", "avmae.cli.train", "--config", str(config)]
    # Output goes to files, not pipes: nobody reads a pipe before the fault, and ranks blocked on a full one would
    # never reach the step the fault waits for.
    err_path = tmp_path / "launcher.err"
    with open(err_path, "w") as err:
        launcher = subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=err, text=True)
    log = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 6):
        time.sleep(0.1)
    ranks = subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True, text=True).stdout.split()
    assert len(ranks) == 2
    faulted_at = time.time()
    os.kill(int(ranks[1]), signum)
    try:
        launcher.wait(timeout=300)
        stderr = err_path.read_text()
    finally:
        if launcher.poll() is None:  # a failed test leaves nothing running
            os.kill(int(ranks[1]), signal.SIGKILL)
            launcher.kill()
    assert launcher.returncode != 0, stderr[-3000:]
    return time.time() - faulted_at, stderr


@pytest.mark.slow
@pytest.mark.serial
def test_a_hung_rank_ends_the_job_after_the_collective_timeout(shards, tmp_path):
    config = run_config(tmp_path, shards, optim={"steps": 200, "lr": 1e-3, "warmup_steps": 1},
                        checkpoint={"every": 1000, "keep": 2}, guard={"collective_timeout_s": 5})
    ended_after, stderr = fault_a_rank_mid_run(tmp_path, config, signal.SIGSTOP)  # alive, but never answers
    # 5 s of collective timeout, then torchrun's 30 s before it SIGKILLs the stopped rank (36.5 s measured)
    assert ended_after < 60, stderr[-3000:]
    assert "avmae-train: rank 0: a collective failed at step" in stderr
    assert "another rank died or hung (guard.collective_timeout_s 5)" in stderr
    print(f"job ended {ended_after:.1f} s after a rank hung")


@pytest.mark.slow
@pytest.mark.serial
def test_a_killed_rank_ends_the_job_promptly_and_a_rerun_resumes(shards, tmp_path):
    config = run_config(tmp_path, shards, optim={"steps": 40, "lr": 1e-3, "warmup_steps": 1},
                        checkpoint={"every": 4, "keep": 2}, guard={"collective_timeout_s": 20})
    ended_after, stderr = fault_a_rank_mid_run(tmp_path, config, signal.SIGKILL)
    assert ended_after < 60, stderr[-3000:]
    second = train(config, processes=2)
    assert result_of(second)["step"] == 40 and "resumed from step" in second.stderr
    assert [r["step"] for r in metrics(tmp_path / "run")] == list(range(1, 41))
    print(f"job ended {ended_after:.1f} s after a rank was killed")


def copy_of(shards: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(shards, tmp_path / "shards"))


@pytest.mark.slow
def test_skipped_samples_of_both_ranks_are_named_and_counted_in_metrics(shards, tmp_path):
    from tests.faults.damage import flip_bits_in_place

    damaged = copy_of(shards, tmp_path)
    bad_key = flip_bits_in_place(damaged / "train-000000.tar", "01.jpg")  # the checksum sidecar now disagrees
    config = run_config(tmp_path, damaged, data={"max_skip_fraction": 1.0, "max_skip_run": 50},
                        optim={"steps": 6, "lr": 1e-3, "warmup_steps": 1}, checkpoint={"every": 3, "keep": 2})
    result_of(train(config, processes=2))
    records = metrics(tmp_path / "run")
    named = [s for r in records for s in r.get("skipped", [])]
    assert named and {s["key"] for s in named} == {bad_key} and all(s["shard"] for s in named)
    last = records[-1]
    assert last["samples_used"] == 6 * 4 * 2  # 6 steps, 4 samples per rank, 2 ranks
    assert last["samples_used"] + last["samples_skipped"] == last["samples_drawn"]
    assert last["samples_skipped"] == len(named)


@pytest.mark.slow
@pytest.mark.serial
def test_a_rank_past_its_skip_budget_ends_the_job_with_one_line(shards, tmp_path):
    from tests.faults.damage import flip_every_sample

    damaged = copy_of(shards, tmp_path)
    flip_every_sample(sorted(damaged.glob("train-*.tar")), "01.jpg")
    config = run_config(tmp_path, damaged, data={"max_skip_fraction": 0.01, "max_skip_run": 3},
                        guard={"collective_timeout_s": 20})
    started = time.time()
    process = train(config, processes=2, timeout=120)
    assert process.returncode != 0 and time.time() - started < 90
    assert "the loader stopped at step 1" in process.stderr and "data.max_skip_run=3" in process.stderr
    assert not (tmp_path / "run" / "export").exists()
