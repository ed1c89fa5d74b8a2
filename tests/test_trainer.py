"""The trainer for real: DeepSpeed ZeRO-2 and ZeRO-3 over gloo with 2 processes (torchrun), stop-and-resume
equivalence, fine-tuning from the pretraining export, and the sbatch script on a localhost SLURM cluster."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from avmae.shard.format import LOGMEL_MEMBER
from tests.faults.damage import flip_bits_in_place, keys_of
from tests.helpers import REPO, metrics, run_config, torchrun
from tests.slurm_jobs import needs_slurm, submit_and_wait


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_two_process_zero_pretraining_loss_falls(shards, tmp_path, stage):
    config = run_config(tmp_path, shards, optim={"steps": 16, "lr": 3e-3, "warmup_steps": 2},
                        checkpoint={"every": 8, "keep": 1})
    result = torchrun(config, f"zero_stage={stage}")
    assert result == {"step": 16, "finished": True, "signal": 0, "best": None}
    losses = [m["loss"] for m in metrics(tmp_path / "run") if "loss" in m]
    assert len(losses) == 16
    assert sum(losses[-4:]) / 4 < 0.9 * sum(losses[:4]) / 4
    # the largest rank's resident high-water mark: a torch + DeepSpeed process holds a few hundred MB at least
    peaks = [m["host_peak_rss_gb"] for m in metrics(tmp_path / "run") if "loss" in m]
    assert all(0.2 < peak < 24 for peak in peaks) and peaks == sorted(peaks)
    checkpoints = sorted((tmp_path / "run" / "checkpoints").glob("step*/complete.json"))
    assert [c.parent.name for c in checkpoints] == ["step00000016"]  # keep: 1 pruned step 8
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "run" / "export" / "model.safetensors"))
    assert "encoder.joint.blocks.0.attn.qkv.weight" in weights and "decoder.head.audio.weight" in weights
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))


@pytest.mark.slow
def test_stopped_and_resumed_run_matches_an_uninterrupted_one(shards, tmp_path):
    """On shards with bad samples: a reader's batches take its skipped draws too, so the resumed run must start each
    reader after the draws the checkpoint recorded (data_rank<r>.json), or it trains on samples again and drifts."""
    damaged = Path(shutil.copytree(shards, tmp_path / "shards"))
    for tar in sorted(damaged.glob("train-*.tar"))[:3]:  # read by every draw, whatever its frames
        flip_bits_in_place(tar, LOGMEL_MEMBER, len(keys_of(tar)) - 1)
    straight = tmp_path / "straight"
    straight.mkdir()
    torchrun(run_config(straight, damaged))
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    config = run_config(resumed, damaged)
    first = torchrun(config, "stop_after=3")  # leaves after step 3 with a checkpoint (as on SIGUSR1)
    assert first["step"] == 3 and not first["finished"]
    assert metrics(resumed / "run")[2]["samples_skipped"] > 0  # bad samples were met before the stop
    assert sorted(p.name for p in (resumed / "run" / "checkpoints" / "step00000003").glob("data_rank*.json")) == \
        ["data_rank0.json", "data_rank1.json"]
    second = torchrun(config)
    assert second["step"] == 8 and second["finished"]
    expected = {m["step"]: m["loss"] for m in metrics(straight / "run") if "loss" in m}
    got = {m["step"]: m["loss"] for m in metrics(resumed / "run") if "loss" in m}
    assert sorted(got) == list(range(1, 9))
    for step in range(1, 9):
        assert got[step] == pytest.approx(expected[step], rel=1e-4, abs=1e-5), step
    totals = ("samples_drawn", "samples_used", "samples_skipped")  # nothing replayed or counted twice
    assert {k: metrics(resumed / "run")[-1][k] for k in totals} == {k: metrics(straight / "run")[-1][k] for k in totals}


def test_a_checkpoint_off_the_cycle_neither_takes_a_kept_place_nor_joins_the_average(shards, tmp_path):
    """checkpoint.every 4, keep 3, average_last 3, and a stop at step 10 (as SLURM's USR1 would) before the run ends at
    12: the kept and averaged checkpoints are 4, 8 and 12, and 10 goes once 12 exists. It used to push 4 out and be
    averaged with 8 and 12."""
    from avmae.export.format import read_export

    config = run_config(tmp_path, shards, optim={"steps": 12, "lr": 1e-3, "warmup_steps": 1},
                        checkpoint={"every": 4, "keep": 3, "average_last": 3})
    checkpoints = tmp_path / "run" / "checkpoints"
    assert torchrun(config, "stop_after=10", processes=1)["step"] == 10
    assert sorted(p.name for p in checkpoints.glob("step*")) == ["step00000004", "step00000008", "step00000010"]
    assert json.loads((checkpoints / "step00000010" / "complete.json").read_text())["regular"] is False
    assert torchrun(config, processes=1)["finished"]
    assert sorted(p.name for p in checkpoints.glob("step*")) == ["step00000004", "step00000008", "step00000012"]
    _, info, _ = read_export(tmp_path / "run", "averaged")
    assert info.extra["averaged"] == "step00000004,step00000008,step00000012"


@pytest.mark.slow
def test_finetune_from_the_pretraining_export(shards, tmp_path):
    pretrain = tmp_path / "pretrain"
    pretrain.mkdir()
    torchrun(run_config(pretrain, shards), processes=1)
    finetune = tmp_path / "finetune"
    finetune.mkdir()
    config = run_config(finetune, shards, task="finetune",
                        data={"eval_split": "val"}, augment={"mixup": 0.5, "freq_mask": 8, "time_mask": 20},
                        init={"kind": "avmae", "path": str(pretrain / "run")},
                        finetune={"eval_every": 4, "loss": "ce",
                                  "modality_dropout": 0.5},  # ranks must drop the same modality in a step
                        optim={"steps": 8, "lr": 1e-3, "warmup_steps": 1, "layer_decay": 0.75, "head_lr_scale": 10.0},
                        checkpoint={"every": 4, "keep": 2, "average_last": 2})
    result = torchrun(config)
    report = json.loads((finetune / "run" / "init_report.json").read_text())
    assert report["missing"] == [] and report["unexpected"] == [] and len(report["loaded"]) > 20
    assert result["best"]["metrics"]["samples"] == 3  # the val split, every sample once over 2 ranks
    evals = [m for m in metrics(finetune / "run") if "eval/top1" in m]
    assert [m["step"] for m in evals] == [4, 8]
    assert {"model.safetensors", "best.safetensors", "averaged.safetensors"} <= {
        p.name for p in (finetune / "run" / "export").iterdir()}


@pytest.mark.slow
@pytest.mark.slurm
@needs_slurm
def test_sbatch_pretrain_as2m_with_two_tasks(shards, tmp_path):
    config = run_config(tmp_path, shards, optim={"steps": 4, "lr": 1e-3, "warmup_steps": 1},
                        checkpoint={"every": 2, "keep": 2})
    job_id, states = submit_and_wait(
        ["--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=00:10:00",
         f"--output={tmp_path}/job-%j.out", "--export=ALL,OMP_NUM_THREADS=1,AVMAE_CONFIG=" + str(config),
         "slurm/pretrain_as2m.sbatch", "--set", "log.every=1"], cwd=REPO, timeout=600)
    log = "\n".join(p.read_text() for p in tmp_path.glob("job-*.out"))
    assert states == ["COMPLETED"], log[-3000:]
    assert "2 tasks on 1 node(s)" in log
    assert (tmp_path / "run" / "checkpoints" / "step00000004" / "complete.json").exists()
    assert (tmp_path / "run" / "export" / "model.safetensors").exists()
    assert [m["step"] for m in metrics(tmp_path / "run")] == [1, 2, 3, 4]


@pytest.mark.slow
def test_sigusr1_checkpoints_and_stops(shards, tmp_path):
    import signal
    import time

    config = run_config(tmp_path, shards, optim={"steps": 200, "lr": 1e-3, "warmup_steps": 1},
                        checkpoint={"every": 1000, "keep": 2})
    process = subprocess.Popen([sys.executable, "-m", "avmae.cli.train", "--config", str(config)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    log = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 2):
        time.sleep(0.1)
    process.send_signal(signal.SIGUSR1)  # what `sbatch --signal=USR1@300` sends ahead of the time limit
    out, _ = process.communicate(timeout=300)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["signal"] == signal.SIGUSR1 and not result["finished"] and 2 <= result["step"] < 200
    marker = tmp_path / "run" / "checkpoints" / f"step{result['step']:08d}" / "complete.json"
    assert json.loads(marker.read_text())["step"] == result["step"]


@pytest.mark.slow
@pytest.mark.slurm
@needs_slurm
def test_sbatch_job_signalled_before_its_time_limit_requeues_and_resumes(shards, tmp_path):
    import time

    config = run_config(tmp_path, shards, optim={"steps": 30, "lr": 1e-3, "warmup_steps": 1},
                        checkpoint={"every": 1000, "keep": 2})
    out = subprocess.run(
        ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1",
         f"--output={tmp_path}/job-%j.out",
         "--export=ALL,OMP_NUM_THREADS=1,AVMAE_CONFIG=" + str(config), "slurm/pretrain_as2m.sbatch"],
        cwd=REPO, capture_output=True, text=True, check=True)
    job = out.stdout.strip()
    log = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.2)
    # What `--signal=USR1@300` delivers to the job's tasks ahead of the time limit.
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    state = ""
    while time.time() < deadline:
        info = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
        state = info.split("JobState=")[1].split()[0] if "JobState=" in info else ""
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"):
            break
        time.sleep(0.5)
    text = (tmp_path / f"job-{job}.out").read_text()
    assert state == "COMPLETED", text[-3000:]
    assert "Restarts=1" in info
    assert "restart 1" in text and "resumed from step" in text
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps[-1] == 30 and sorted(set(steps)) == list(range(1, 31))


def test_shards_made_for_another_model_are_refused_before_training(shards, tmp_path):
    from avmae.cli.train import main as train_main

    config = run_config(tmp_path, shards)
    assert train_main(["--config", str(config), "--set", "model.audio.frames=1024"]) == 2  # shards hold 208
    assert train_main(["--config", str(config), "--set", f"data.shards={tmp_path / 'nothing'}"]) == 2
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_job_requeues_itself_after_a_lost_rank_at_most_max_requeues_times(monkeypatch, tmp_path):
    from avmae.train.signals import LOST_RANK_REQUEUES, requeue_after_lost_rank

    monkeypatch.setenv("PATH", "")  # no scontrol: SLURM is never really asked here
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    record = tmp_path / LOST_RANK_REQUEUES
    # Three time-limit requeues (SIGUSR1) and no lost rank yet: the budget is whole.
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    assert requeue_after_lost_rank(3, tmp_path) == "SLURM did not requeue the job (another rank may have already)"
    assert json.loads(record.read_text()) == {"4242": [3]}
    assert requeue_after_lost_rank(3, tmp_path).startswith("SLURM did not")  # a second rank reporting the same loss
    assert json.loads(record.read_text()) == {"4242": [3]}  # counts once
    for restart in ("5", "8"):
        monkeypatch.setenv("SLURM_RESTART_COUNT", restart)
        requeue_after_lost_rank(3, tmp_path)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "9")
    said = requeue_after_lost_rank(3, tmp_path)  # the budget is spent: SLURM is not asked
    assert said == ("not requeued: a lost rank requeued the job 3 times already (guard.max_requeues 3); "
                    "scontrol requeue 4242 resumes it")
    assert requeue_after_lost_rank(0, tmp_path / "other").startswith("not requeued")  # guard.max_requeues 0: never
    monkeypatch.delenv("SLURM_JOB_ID")  # not a SLURM job: nothing to requeue
    assert requeue_after_lost_rank(3, tmp_path / "new").startswith("SLURM did not requeue the job")


def test_the_finite_loss_vote_poisons_every_gradient_only_when_a_loss_is_not_finite():
    """One process: the vote is this rank's own. A finite loss keeps its gradient exactly (the factor is a constant
    1, not a branch whose 0 * NaN backward would poison every step); a non-finite one makes every gradient NaN."""
    import torch

    from avmae.train.divergence import poison_unless_every_rank_finite

    weight = torch.tensor([1.5, -2.0], requires_grad=True)
    loss, finite = poison_unless_every_rank_finite((weight ** 2).sum())
    loss.backward()
    assert finite.item() == 1.0 and loss.item() == 6.25 and weight.grad.tolist() == [3.0, -4.0]
    weight.grad = None
    loss, finite = poison_unless_every_rank_finite((weight ** 2).sum() + float("inf"))
    loss.backward()
    assert finite.item() == 0.0 and torch.isnan(loss) and torch.isnan(weight.grad).all()


def test_ranks_meet_at_log_checkpoint_and_signal_check_steps_only():
    from avmae.config import load
    from avmae.recipe.config import RunConfig
    from avmae.train.boundaries import Boundaries

    config = load(RunConfig, REPO / "avmae/configs/demo_pretrain.yaml",
                  ["optim.steps=20", "log.every=4", "checkpoint.every=6", "guard.signal_check_every=5",
                   "stop_after=0", "data.shards=unused"]).validate()
    due = Boundaries(config, finetune_evaluates=False)
    assert [s for s in range(1, 21) if due.log(s, skipped=False)] == [4, 8, 12, 16, 20]
    assert [s for s in range(1, 21) if due.checkpoint(s, ran=s)] == [6, 12, 18, 20]
    assert [s for s in range(1, 21) if due.signal_check(s, ran=s, skipped=False)] == [4, 5, 6, 8, 10, 12, 15, 16,
                                                                                        18, 20]
    assert due.log(7, skipped=True) and due.signal_check(7, ran=7, skipped=True)  # a skipped step is logged
