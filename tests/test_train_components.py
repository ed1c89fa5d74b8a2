"""The trainer's small components on their own: the typed stop, the conversion of a failed collective into one,
the best evaluated step and the metric the evaluation stage names for it, and the requeue after a stop."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from avmae.distributed import DistInfo
from avmae.eval.report import BEST_CHECKPOINT_METRICS, best_checkpoint_score
from avmae.recipe.config import GuardConfig
from avmae.train.best import BestStep
from avmae.train.requeue import Requeue
from avmae.train.stops import JobStopped, Stop, collective_failures_stop

GLOO_LOST_PEER = "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:547] Connection closed by peer [::1]"


def test_a_stop_is_a_frozen_value_and_only_a_lost_rank_breaks_the_group():
    stop = Stop("loader", 7, "rank 1: the loader stopped at step 7: too many bad samples")
    with pytest.raises(dataclasses.FrozenInstanceError):
        stop.step = 8
    assert not stop.group_broken and stop.exit_code == 1
    assert Stop("collective", 7, "x").group_broken
    error = JobStopped(stop)
    assert str(error) == stop.message and error.stop is stop


def test_a_failed_collective_becomes_one_stop_naming_the_running_step_and_the_newest_checkpoint():
    step = [4]
    with pytest.raises(JobStopped) as raised:
        with collective_failures_stop(1, 20.0, lambda: step[0] + 1, lambda: "/run/checkpoints/step00000004"):
            raise RuntimeError(GLOO_LOST_PEER + "\nmore detail")
    stop = raised.value.stop
    assert (stop.kind, stop.step, stop.group_broken) == ("collective", 5, True)
    assert stop.message == (f"rank 1: a collective failed at step 5 ({GLOO_LOST_PEER}); another rank died or hung "
                            "(guard.collective_timeout_s 20); newest complete checkpoint: /run/checkpoints/step00000004")
    assert isinstance(raised.value.__cause__, RuntimeError)


def test_other_errors_and_stops_pass_through_unchanged():
    diverged = JobStopped(Stop("diverged", 3, "training diverged: step 3"))
    with pytest.raises(JobStopped) as raised:
        with collective_failures_stop(0, 5.0, lambda: 1, lambda: ""):
            raise diverged
    assert raised.value is diverged
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        with collective_failures_stop(0, 5.0, lambda: 1, lambda: ""):
            raise RuntimeError("CUDA out of memory")


def test_the_evaluation_stage_names_the_metric_that_picks_the_best_checkpoint():
    assert BEST_CHECKPOINT_METRICS[0] == "mAP"
    assert best_checkpoint_score({"top1": 0.5, "mAP": 0.25}) == 0.25  # multi-label: mAP, whatever else is there
    assert best_checkpoint_score({"top5": 0.9, "top1": 0.5}) == 0.5
    assert best_checkpoint_score({"verb_top1": 0.4, "action_top1": 0.2}) == 0.2
    assert best_checkpoint_score({"samples": 3}) is None


def test_the_best_step_is_the_highest_score_with_its_numeric_metrics_and_its_checkpoint_is_kept():
    best = BestStep(best_checkpoint_score)
    assert best.checkpoint_tag() is None
    best.consider(2, {"top1": 0.5, "samples": 3, "per_class": [0.1, 0.9]})
    best.consider(4, {"top1": 0.25, "samples": 3})  # lower: the best stays
    assert best.value == {"step": 2, "score": 0.5, "metrics": {"top1": 0.5, "samples": 3}}
    assert best.checkpoint_tag() == "step00000002"
    best.consider(6, {"top1": 0.75})
    assert best.value["step"] == 6
    resumed = BestStep(best_checkpoint_score)
    resumed.value = best.value  # carried over a resume, as Saving.resume sets it
    resumed.consider(8, {"top1": 0.5})
    assert resumed.value["step"] == 6


def test_without_a_score_no_step_is_the_best():
    best = BestStep(None)
    best.consider(2, {"top1": 0.5})
    assert best.value is None


def test_only_a_lost_rank_under_slurm_requeues_after_a_stop(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    lost = Stop("collective", 5, "rank 0: a collective failed at step 5")
    under = {launcher: Requeue.of(GuardConfig(max_requeues=3), DistInfo(1, 2, 1, None, "gloo", launcher), tmp_path)
             for launcher in ("slurm", "torchrun")}
    assert under["torchrun"].after_stop(lost) == ""  # no SLURM: nothing to requeue
    assert under["slurm"].after_stop(Stop("diverged", 5, "training diverged")) == ""  # the same fault again
    assert under["slurm"].after_stop(lost) == "rank 1: SLURM did not requeue the job (another rank may have already)"
    never = Requeue.of(GuardConfig(max_requeues=0), DistInfo(1, 2, 1, None, "gloo", "slurm"), tmp_path)
    assert never.after_stop(lost) == ""


def test_only_rank_0_asks_for_a_requeue_and_only_at_the_time_limit_signal(tmp_path: Path, monkeypatch, capsys):
    import signal

    from avmae.recipe.config import LogConfig
    from avmae.train.logging import RunLogger

    monkeypatch.delenv("SLURM_JOB_ID", raising=False)  # not a SLURM job: the request is refused
    logger = RunLogger(tmp_path, LogConfig(tensorboard=False, progress=False), 10, 0, enabled=True)
    for rank in (0, 1):
        requeue = Requeue.of(GuardConfig(), DistInfo(rank, 2, rank, None, "gloo", "slurm"), tmp_path)
        requeue.after_signal(signal.SIGTERM, logger)  # preemption: leave, do not come back
        requeue.after_signal(0, logger)
        requeue.after_signal(signal.SIGUSR1, logger)
    assert capsys.readouterr().err.splitlines() == ["requeued: False"]
