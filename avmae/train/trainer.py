"""``avmae-train``: one DeepSpeed ZeRO trainer for AV-MAE pretraining and for fine-tuning.

The trainer is built from a checked ``RunStart`` (``run_start.start_run``: the config validated, the shards and a
resume's config checked, the process group, the run folder, the seeds, ``config.yaml``) and is a loop that calls
components, each a small object with its own config section (docs/architecture.md#the-trainer-as-components follows
the config through them):

- ``model_setup``: the model and its starting weights (``init``, ``mavil.teacher``, ``finetune.heads``);
- ``engine``: DeepSpeed's engine and optimizer (``zero_*``, ``optim``) and the learning rate of each step;
- ``data_feed``: this rank's batches (``data``, ``augment``), their reader positions and sample counts;
- ``step``: one optimizer step of ``grad_accum`` micro-batches;
- ``divergence``: the guard against non-finite steps (``guard.nonfinite_*``);
- ``boundaries``: which steps log, agree on signals, checkpoint and evaluate;
- ``step_log``: a logging step's record (``log``);
- ``signals`` and ``requeue``: SLURM's stop requests and requeues (``guard.signal_check_every``,
  ``guard.max_requeues``);
- ``saving``, ``evaluation`` and ``best``: resume and checkpoints (``checkpoint``), with fine-tuning's evaluation and
  its best step (``finetune.eval_every``);
- ``exports``: the final fp32 weights (``checkpoint.export``, ``checkpoint.average_last``);
- ``stops``: why a run ended early, as one typed ``Stop``.
"""

from __future__ import annotations

import math
from contextlib import closing
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch

from avmae.train.best import BestStep, Score
from avmae.train.boundaries import Boundaries
from avmae.train.data_feed import TrainingData
from avmae.train.divergence import NonFiniteGuard
from avmae.train.engine import build_engine
from avmae.train.evaluation import Evaluator, InTrainingEvaluation
from avmae.train.exports import Exports
from avmae.train.logging import RunLogger
from avmae.train.model_setup import build_model, loss_kind, task_heads
from avmae.train.requeue import Requeue
from avmae.train.run_start import RunStart
from avmae.train.saving import Saving
from avmae.train.signals import StopRequest
from avmae.train.step import StepResult, TrainStep
from avmae.train.step_log import StepLog
from avmae.train.stops import JobStopped, collective_failures_stop
from avmae.train.throughput import Throughput


@dataclass
class RunState:
    """One process's run: the per-run components and where the loop is."""

    data: TrainingData
    guard: NonFiniteGuard
    logger: RunLogger
    signals: StopRequest
    log: StepLog
    step: int  # the last step done
    ran: int = 0  # steps this process ran
    signal: int = 0  # the stop signal the ranks agreed on (0: none)
    leaving: bool = False  # this process leaves after the step's checkpoint


class Trainer:
    def __init__(self, start: RunStart, evaluator: Evaluator | None = None, best_score: Score | None = None):
        """``start``: the checked run (``run_start.start_run``). ``evaluator``: scores fine-tuning every
        ``finetune.eval_every`` steps and at the end, and ``best_score`` picks the best of those steps for the
        ``best`` export (``avmae.eval.report.best_checkpoint_score``); no evaluator: no evaluation, and no best
        weights."""
        config = self.config = start.config
        self.spec, self.checkpoints, self.dist, self.workdir = start.spec, start.checkpoints, start.dist, start.workdir
        self.is_main, self.bf16 = start.is_main, start.bf16
        self.model = build_model(config, self.spec, self.workdir, self.is_main)
        finetune = config.task == "finetune"
        self.due = Boundaries(config, finetune and evaluator is not None)
        self.engine, self.lr = build_engine(self.model, config, self.dist.device, self.bf16, say=self.is_main)
        heads, loss = (task_heads(config, self.spec), loss_kind(config, self.spec)) if finetune else ({}, "")
        self.train_step = TrainStep(self.engine, config, self.bf16, heads, loss)
        dtype = torch.bfloat16 if self.bf16 else torch.float32
        evaluation = InTrainingEvaluation(evaluator, self.engine, heads, self.dist, dtype) if evaluator else None
        self.best = BestStep(best_score)
        self.saving = Saving(self.checkpoints, self.engine, self.due, evaluation, self.best)
        self.exports = Exports(config, self.spec, heads, self.checkpoints, self.is_main)
        self.requeue = Requeue.of(config.guard, self.dist, self.workdir)

    def run(self) -> dict[str, Any]:
        """The paper's procedure: for each step, set the step's learning rate, draw ``grad_accum`` micro-batches,
        forward, backward and update (TrainStep); then the step's boundaries. Finished: the fp32 exports."""
        run = self._resume()
        with closing(run.logger), self._collective_failures_stop(run):
            self.engine.train()
            while run.step < self.config.optim.steps and not run.leaving:
                lr = self.lr.set_for(run.step)
                result = self.train_step(partial(run.data.next_batch, run.step + 1))
                run.step, run.ran = run.step + 1, run.ran + 1
                skipped = run.guard.record(run.step, result.parts.get("loss", math.nan),
                                           self.engine.was_step_applied(), result.every_loss_finite)
                self._boundaries(run, result, lr, skipped)
        finished = run.step >= self.config.optim.steps
        if finished:
            self.exports.write(run.step, self.best)
        self.requeue.after_signal(run.signal, run.logger)
        return {"step": run.step, "finished": finished, "signal": run.signal, "best": self.best.value}

    def _boundaries(self, run: RunState, result: StepResult, lr: float, skipped: bool) -> None:
        """After a step: the log record, the guard's budget, the ranks' agreement on a stop signal, a checkpoint.
        Every rank takes the same branches (``Boundaries``), so their collectives line up."""
        if self.due.log(run.step, skipped):
            run.guard.check()
            run.log(run.step, result, run.guard, skipped, lr)
        budget = run.guard.over_budget()
        if budget:
            raise JobStopped(run.guard.stop(run.step, budget, self.saving.newest_at_or_before(run.guard.last_applied)))
        if self.due.signal_check(run.step, run.ran, skipped):
            run.signal = run.signals.agreed()
        run.leaving = bool(run.signal) or self.due.process_ends(run.ran)
        if self.due.checkpoint(run.step, run.ran) or run.leaving:
            run.guard.check()  # no checkpoint holds an update made from a non-finite loss
            counts = {"nonfinite_total": run.guard.total, "samples": run.data.ledger.sync()}
            self.saving.save(run.step, counts, run.data.positions.state(), run.logger)

    def _collective_failures_stop(self, run: RunState):
        """A rank that died or hung, met as a failed collective, ends the job as one ``Stop`` naming the step."""
        return collective_failures_stop(self.dist.rank, self.config.guard.collective_timeout_s,
                                        lambda: run.step + 1, self.checkpoints.newest)

    def _resume(self) -> RunState:
        """The newest sound checkpoint loaded, and the run's components started from it."""
        client, skipped_checkpoints = self.saving.resume()
        start, config = client.get("step", 0), self.config
        guard = NonFiniteGuard(config.guard, start, client.get("nonfinite_total", 0))
        data = TrainingData(self.spec, config.data, config.augment, self.dist, start * config.grad_accum, client)
        logger = self._logger(start, bool(client), skipped_checkpoints)
        signals = StopRequest()
        log = StepLog(logger, data.ledger, Throughput(config, self.dist.world, self.dist.device, start))
        return RunState(data, guard, logger, signals, log, start)

    def _logger(self, start: int, resumed: bool, skipped_checkpoints: list[str]) -> RunLogger:
        logger = RunLogger(self.workdir, self.config.log, self.config.optim.steps, start, enabled=self.is_main)
        for note in skipped_checkpoints:
            logger.message(note)
        if resumed:
            logger.message(f"resumed from step {start} ({self.checkpoints.root})")
        if self.is_main and logger.dropped_records:
            logger.message(f"metrics.jsonl: dropped {logger.dropped_records} records after step {start}, "
                           "logged before the run stopped and run again now")
        return logger
