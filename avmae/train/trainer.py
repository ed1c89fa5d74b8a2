"""``avmae-train``: one DeepSpeed ZeRO trainer for AV-MAE pretraining and for fine-tuning.

Order of a run: process group -> model -> DeepSpeed engine -> resume from the newest complete checkpoint ->
loader positioned after the batches already consumed -> steps (logging, periodic checkpoints and evaluations,
stop requests from SLURM) -> final checkpoint and fp32 export.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import resource
import signal
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import numpy as np
import torch
from avmae import collectives

from avmae.config import dump
from avmae.data.loader import Loader
from avmae.models.vit import Block
from avmae.files import write_atomically
from avmae.train.checkpoint import Checkpoints, all_ranks_ok, tag_for
from avmae.train.boundaries import Boundaries
from avmae.train.divergence import NonFiniteGuard
from avmae.train.resume_config import check_resumable
from avmae.train.samples import SampleLedger
from avmae.train.stops import JobStopped, is_collective_failure
from avmae.recipe.config import RunConfig
from avmae.recipe.geometry import load_run_spec
from avmae.shard.format import LabelMode
from avmae.distributed import DistInfo, setup_distributed
from avmae.export.format import ExportInfo, export_path, write_export
from avmae.export.load import load_model, model_for
from avmae.train.logging import RunLogger
from avmae.export.init import initialise
from avmae.train.optim import learning_rate, parameter_groups
from avmae.train.reader_positions import ReaderPositions
from avmae.train.signals import StopRequest, requeue
from avmae.train.step import StepResult, TrainStep
from avmae.train.throughput import Throughput


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _deepspeed_config(config: RunConfig, bf16: bool) -> dict[str, Any]:
    bucket = config.zero_bucket_elements
    return {
        "train_micro_batch_size_per_gpu": config.data.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "gradient_clipping": config.optim.grad_clip,
        # A non-finite gradient norm discards the step in bf16 too (avmae/train/divergence.py relies on it).
        "bf16": {"enabled": bf16, "check_grad_overflow": True},
        "zero_optimization": {"stage": config.zero_stage, "overlap_comm": bf16, "contiguous_gradients": True,
                              "reduce_bucket_size": bucket, "allgather_bucket_size": bucket,
                              "stage3_max_live_parameters": 2 * bucket, "stage3_prefetch_bucket_size": bucket // 10},
        # ZeRO shards any torch optimizer's state; DeepSpeed only asks to be told when it is not an Adam.
        "zero_allow_untested_optimizer": config.optim.optimizer != "adamw",
        "steps_per_print": 10**9,  # our own logging says what happens
        "wall_clock_breakdown": False,
    }


def _over_ranks(values: list[float], op: str = "sum") -> list[float]:
    """``values`` reduced over the ranks with ``op`` (sum, max or min), in float64; as they are in a single
    process. One collective: for log and guard boundaries."""
    return collectives.all_reduce_values(values, op)


def _host_peak_rss_gb() -> float:
    """The largest resident-memory high-water mark of any rank's process (getrusage's ru_maxrss, KiB on Linux),
    for logging: on CPU what a rank's model, optimizer and activations need; on GPU their host side (the model is
    built there first). The rank's DataLoader workers are processes of their own and are not counted."""
    return _over_ranks([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20], "max")[0]


def _mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Losses (0-d device tensors) as the mean over ranks (what the global batch saw), read on the host: for
    logging steps only (one collective, one host read)."""
    if not values:
        return {}
    names = sorted(values)
    total = collectives.all_reduce(torch.stack([values[n].float().reshape(()) for n in names]), "sum")
    return {n: v / collectives.world_size() for n, v in zip(names, total.tolist())}


def compile_blocks(model: torch.nn.Module) -> int:
    """torch.compile (inductor) every transformer block of ``model`` in place (``Module.compile``: the parameter
    names, and so checkpoints and exports, stay those of the eager model); how many. The blocks are where the
    FLOPs are, and each compiles once per input shape and modality."""
    blocks = [module for module in model.modules() if isinstance(module, Block)]
    for block in blocks:
        block.compile()
    return len(blocks)


def deepspeed_args(device: torch.device) -> SimpleNamespace | None:
    """The device DeepSpeed's engine puts itself on. Without ``device_rank`` it takes LOCAL_RANK
    (deepspeed/runtime/engine.py ``_set_distributed_vars``), an index that does not exist when each task sees only
    its own GPU (srun --gpus-per-task=1: every rank's GPU is cuda:0); avmae/distributed.py has chosen the device."""
    return SimpleNamespace(device_rank=device.index) if device.type == "cuda" else None


class Evaluator(Protocol):
    """What fine-tuning's periodic evaluation needs (``avmae.eval.during_training.SplitEvaluator``): the metrics
    of ``model`` on the run's evaluation split, identical on every rank. The trainer is handed one; it does not
    reach into the evaluation stage."""

    def __call__(self, model: torch.nn.Module, heads: dict[str, int], *, rank: int, world: int,
                 device: torch.device, dtype: torch.dtype) -> dict[str, Any]: ...


class Trainer:
    def __init__(self, config: RunConfig, dist_info: DistInfo | None = None, evaluator: Evaluator | None = None):
        """``evaluator``: scores fine-tuning every ``finetune.eval_every`` steps and at the end (none: no
        evaluation, and no best weights)."""
        self.config = config.validate()
        self.evaluator = evaluator
        # The shards are checked first: a wrong folder or shards made for another model fail before any process
        # group exists.
        self.spec = load_run_spec(config, config.data.train_split)
        self.workdir = Path(config.workdir)
        self.checkpoints = Checkpoints(self.workdir / "checkpoints", config.checkpoint.keep, is_main=False)
        if self.checkpoints.complete():  # every rank checks, before any collective: all refuse together
            check_resumable(self.workdir / "config.yaml", config)
        self.dist = dist_info or setup_distributed(timeout_s=config.guard.collective_timeout_s)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.is_main = self.checkpoints.is_main = self.dist.is_main
        self.bf16 = config.precision == "bf16" or (config.precision == "auto" and self.dist.device.type == "cuda")
        _seed_everything(config.seed + self.dist.rank)
        if self.is_main:
            write_atomically(self.workdir / "config.yaml", lambda partial: dump(config, partial))
        self.model, self.init_report = self._build_model()
        self.due = Boundaries(config, config.task == "finetune" and evaluator is not None)
        compiled = compile_blocks(self.model) if config.compile else 0
        self.engine = self._build_engine()
        if compiled and self.is_main:  # said, so a run's log shows what ran
            print(f"avmae-train: torch.compile (inductor) {compiled} transformer blocks; the first steps compile "
                  "them", file=sys.stderr, flush=True)

    # --- set-up ---------------------------------------------------------------------------------------------------

    def _heads(self) -> dict[str, int]:
        return dict(self.config.finetune.heads) or dict(self.spec.heads)

    def _build_model(self):
        """The model, and what its initialisation loaded (also written to init_report.json)."""
        config = self.config
        if config.task == "pretrain":
            model, report = model_for(config, "pretrain", {}), None
            if config.mavil.teacher:
                teacher = load_model(config.mavil.teacher)
                if teacher.task != "pretrain":
                    raise ValueError(f"mavil.teacher {teacher.path} is a {teacher.task} export; MAViL's stage 2 "
                                     "learns from a stage-1 pretraining export")
                model.attach_teacher(teacher.model)
                report = {"teacher": str(teacher.path)}
        else:
            heads = self._heads()
            if not heads:
                raise ValueError(f"{config.data.shards} has no labels to fine-tune on; set finetune.heads")
            model, report = model_for(config, "finetune", heads), None
        if config.init.kind != "none":  # an avmae export or run folder, an ImageNet ViT or a CAV-MAE checkpoint
            report = {**(report or {}), **initialise(model, config.init)}
        if report and self.is_main:
            (self.workdir / "init_report.json").write_text(json.dumps(report, indent=1))
        return model, report

    def _build_engine(self):
        import deepspeed

        groups, self.lr_scales = parameter_groups(self.model, self.config.model, self.config.optim)
        optim = self.config.optim
        if optim.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum)
        else:  # fused: one kernel over all parameters (OptimConfig.fused says when)
            optimizer = torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas),
                                          fused=optim.fused_on(self.dist.device.type) or None)
        engine, _, _, _ = deepspeed.initialize(args=deepspeed_args(self.dist.device), model=self.model,
                                               optimizer=optimizer, config=_deepspeed_config(self.config, self.bf16))
        return engine

    def _set_lr(self, step: int) -> float:
        lr = learning_rate(step, self.config.optim)
        for group, scale in zip(self.engine.optimizer.param_groups, self.lr_scales):
            group["lr"] = lr * scale
        return lr

    # --- the run --------------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """The paper's loop: for each step, draw the micro-batches, forward, backward and update (TrainStep); then
        the boundaries: the guard, a log record, the ranks' agreement on a stop signal, a checkpoint."""
        config = self.config
        client, skipped_checkpoints = self.checkpoints.resume(self.engine)
        client = client or {}
        step = start = client.get("step", 0)
        best = client.get("best")
        guard = NonFiniteGuard(config.guard, start, client.get("nonfinite_total", 0))
        ledger = SampleLedger(self.dist.rank, client.get("samples"))
        positions = ReaderPositions(max(1, config.data.workers), self.dist.world, client.get("rank_data"))
        batches = iter(Loader(self.spec, config.data, train=True, rank=self.dist.rank, world=self.dist.world,
                              device=self.dist.device, start_batch=start * config.grad_accum,
                              augment=config.augment, reader_draws=positions.draws))
        logger = self._logger(start, bool(client), skipped_checkpoints)
        stop, throughput = StopRequest(), Throughput(config, self.dist.world, self.dist.device, start)
        train_step = TrainStep(self.engine, config, self.bf16, self._heads() if config.task == "finetune" else {},
                               self._loss_kind() if config.task == "finetune" else "")

        def next_batch() -> dict[str, Any]:
            batch = self._next_batch(batches, step + 1)
            positions.saw(batch)
            ledger.count(batch, step + 1)
            return batch

        ran, signum = 0, 0
        self.engine.train()
        try:
            while step < config.optim.steps:
                lr = self._set_lr(step)
                result = train_step(next_batch)
                step, ran = step + 1, ran + 1
                skipped = guard.record(step, result.parts.get("loss", math.nan), self.engine.was_step_applied(),
                                       result.every_loss_finite)
                if self.due.log(step, skipped):
                    guard.check()
                    values = {**self._losses(result, guard, skipped), **ledger.log_values(), "lr": lr,
                              **throughput.values(step), "host_peak_rss_gb": _host_peak_rss_gb()}
                    logger.step(step, values)
                budget = guard.over_budget()
                if budget:
                    raise guard.stop(step, budget, self._newest_checkpoint_at_or_before(guard.last_applied))
                if self.due.signal_check(step, ran, skipped):
                    signum = stop.agreed()
                leaving = bool(signum) or self.due.process_ends(ran)
                if self.due.checkpoint(step, ran) or leaving:
                    guard.check()  # no checkpoint holds an update made from a non-finite loss
                    counts = {"nonfinite_total": guard.total, "samples": ledger.sync()}
                    best = self._checkpoint(step, best, logger, counts, positions.state(),
                                            self.due.regular_checkpoint(step))
                if leaving:
                    break
        except RuntimeError as err:  # a rank died or hung: a collective failed or timed out
            stopped = self._stopped_by(err, step)
            if stopped is None:
                raise
            raise stopped from err
        finally:
            logger.close()
        finished = step >= config.optim.steps
        if finished:
            self._export(best)
        if signum == signal.SIGUSR1 and self.is_main:  # the time limit is near: come back and resume
            logger.message(f"requeued: {requeue()}")
        return {"step": step, "finished": finished, "signal": signum, "best": best}

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

    @staticmethod
    def _losses(result: StepResult, guard: NonFiniteGuard, skipped: bool) -> dict[str, Any]:
        """The step's loss parts as the mean over ranks (read on the host here, at a logging step), and for a
        skipped step its cause and counts: every skipped step has its record, whatever log.every says."""
        values: dict[str, Any] = _mean_over_ranks(result.parts)
        if skipped:
            values.update({"skipped_step": guard.last_cause, "nonfinite_in_row": guard.in_row,
                           "nonfinite_total": guard.total})
        return values

    def _stopped_by(self, err: RuntimeError, step: int) -> JobStopped | None:
        """A failed collective (a rank died or hung) as the one JobStopped line that ends the job; None for any
        other error, which ends it as it is."""
        if isinstance(err, JobStopped) or not is_collective_failure(err):
            return None
        stopped = JobStopped(f"rank {self.dist.rank}: a collective failed at step {step + 1} "
                             f"({str(err).splitlines()[0]}); another rank died or hung (guard.collective_timeout_s "
                             f"{self.config.guard.collective_timeout_s:g}); newest complete checkpoint: "
                             f"{self.checkpoints.newest() or 'none'}")
        stopped.group_broken = True
        stopped.requeues = self.config.guard.max_requeues if self.dist.launcher == "slurm" else 0
        return stopped

    def _loss_kind(self) -> str:
        if self.config.finetune.loss != "auto":
            return self.config.finetune.loss
        return "bce" if self.spec.label_mode == LabelMode.MULTI else "ce"

    def _next_batch(self, batches, step: int) -> dict[str, Any]:
        """The loader's next batch; a loader that gives up (``SkipBudgetExceeded`` when too many samples are bad, or
        any other failure) ends the job with its own line, and this rank leaves, so the others are not left waiting
        in a collective (torchrun / srun end them, or their collective fails)."""
        try:
            return next(batches)
        except Exception as err:  # noqa: BLE001 -- whatever it is, this rank cannot go on: one line, then leave
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise JobStopped(f"rank {self.dist.rank}: the loader stopped at step {step}: {first}") from err

    def _newest_checkpoint_at_or_before(self, step: int) -> str:
        good = [tag for s, tag in self.checkpoints.complete() if s <= step]
        return str(self.checkpoints.root / good[-1]) if good else ""

    def _eval_due(self, step: int) -> bool:
        return self.due.evaluation(step)

    def _checkpoint(self, step: int, best: dict | None, logger: RunLogger, counts: dict[str, Any],
                    rank_data: dict[str, Any], regular: bool) -> dict | None:
        client: dict[str, Any] = {"best": best, **counts}
        if self._eval_due(step):
            metrics = self.evaluate()
            logger.step(step, {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
            score = metrics.get("mAP", metrics.get("top1", metrics.get("action_top1")))
            if score is not None and (best is None or score > best["score"]):
                best = {"step": step, "score": score, "metrics": {k: v for k, v in metrics.items()
                                                                  if isinstance(v, (int, float))}}
            client["best"] = best
            client["metrics"] = metrics
        self.checkpoints.save(self.engine, step, client, protect=tag_for(best["step"]) if best else None,
                              rank_data=rank_data, regular=regular)
        return best

    def evaluate(self) -> dict[str, Any]:
        self.engine.eval()
        try:
            return self.evaluator(self.engine, self._heads(), rank=self.dist.rank, world=self.dist.world,
                                  device=self.dist.device, dtype=torch.bfloat16 if self.bf16 else torch.float32)
        finally:
            self.engine.train()

    def _exported_config(self) -> RunConfig:
        """The run's config as its exports hold it, with the log-mel normalisation it trained with written in (the
        training build's statistics, where the config left them to the manifest): evaluated on another build (an
        eval-only test split), the model then sees its inputs normalised as in training, not by that build's own
        statistics."""
        data = self.config.data
        mean = data.audio_mean if data.audio_mean is not None else self.spec.logmel_mean
        std = data.audio_std if data.audio_std is not None else self.spec.logmel_std
        return dataclasses.replace(self.config, data=dataclasses.replace(data, audio_mean=mean, audio_std=std))

    def _export(self, best: dict | None) -> None:
        """Consolidated fp32 weights of the final step (and of the best and averaged ones for fine-tuning)."""
        if not self.config.checkpoint.export:
            return
        collectives.barrier()
        error: Exception | None = None
        if self.is_main:
            try:
                self._write_exports(best)
            except (OSError, RuntimeError) as err:  # a full disk: safetensors raises either
                error = err
        # Not a barrier: rank 0's failure must reach every rank, or the others wait in the barrier for the
        # collective timeout while rank 0 leaves.
        if not all_ranks_ok(error is None):
            reason = f": {' '.join(str(error).split())}" if error else " on rank 0"
            raise JobStopped(f"the export to {export_path(self.workdir).parent} could not be written{reason}; the "
                             "run's checkpoints are complete: the same command again writes it")

    def _write_exports(self, best: dict | None) -> None:
        complete = self.checkpoints.complete()
        heads = self._heads() if self.config.task == "finetune" else {}
        config = self._exported_config()

        def export(weights: str, tag_or_state, extra: dict[str, str]) -> None:
            state = self.checkpoints.fp32_state_dict(tag_or_state) if isinstance(tag_or_state, str) else tag_or_state
            info = ExportInfo(task=self.config.task, config=config, label_mode=self.spec.label_mode,
                              label_names=list(self.spec.label_names), heads=heads, extra=extra)
            write_export(export_path(self.workdir, weights), state, info)

        _, last = complete[-1]
        export("model", last, {"tag": last})
        if best is not None and any(tag == tag_for(best["step"]) for _, tag in complete):
            export("best", tag_for(best["step"]), {"best": json.dumps(best)})
        average = self.config.checkpoint.average_last
        if average > 1:  # of the checkpoint.every cycle's checkpoints (the epochs), not of a signal's
            averaged = self.checkpoints.regular()[-average:]
            states = [self.checkpoints.fp32_state_dict(tag) for _, tag in averaged]
            mean = {k: torch.stack([s[k] for s in states]).mean(0) for k in states[0]}
            export("averaged", mean, {"averaged": ",".join(tag for _, tag in averaged)})
        dump(config, export_path(self.workdir).with_name("config.yaml"))
