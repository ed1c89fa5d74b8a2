"""``avmae-eval``'s one library call: an evaluation request (avmae/eval/request.py) in, a report out (and on disk).

``evaluate`` starts the process group (one process, torchrun or srun: avmae/distributed.py), loads the export,
scores the split (a fine-tuned classifier, a linear probe on frozen features, or audio<->video retrieval), accounts
for every sample of the split (avmae/eval/coverage.py), and has rank 0 write the outputs. Errors name the request's
fields; the CLI maps them to its flags.

A rank whose scoring fails (its loader past the skip budget, its storage unreadable) may leave its peers inside a
collective (predict.py gathers), which a barrier of its own would never match: every rank would wait for the whole
collective timeout, and the barrier's timeout would replace the real error. So that rank raises RankFailed and
enters no other collective; the CLI prints its line and ends the process at once, and the peers' collective fails
as soon as it is gone (or the launcher ends them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avmae.config import to_dict
from avmae.eval.clip_set import keep_listed, load_clip_set
from avmae.eval.coverage import Coverage, coverage
from avmae.eval.outputs import summarise, write_outputs
from avmae.eval.predictions import Predictions, task_metrics
from avmae.eval.request import EvalRequest
from avmae.shard.format import LabelMode

REPORT = "report.json"


@dataclass
class EvalResult:
    report: dict[str, Any]
    out: Path
    is_main: bool  # rank 0, which wrote the outputs
    predictions: Predictions | None = None
    coverages: list[Coverage] = field(default_factory=list)


class RankFailed(RuntimeError):
    """One rank of several could not score its share; ``__cause__`` is its error. Its peers may be waiting in a
    collective for it, so the process group is left as it is (a barrier would not match their collective, and
    tearing the group down waits on them): the process must print the line and leave at once (``os._exit``)."""

    def __init__(self, rank: int, world: int, cause: BaseException):
        line = " ".join(str(cause).split()) or type(cause).__name__  # one line, whatever the library wrote
        if not line.startswith(f"rank {rank} "):  # a loader's message names its rank already
            line = f"rank {rank} of {world}: {line}"
        super().__init__(line)
        self.rank, self.world = rank, world


def evaluate(request: EvalRequest) -> EvalResult:
    """Score ``request`` and write its outputs; raises IncompleteEvaluation (after writing the report, which lists
    the missing samples) when samples could not be scored and ``allow_missing`` is off, and RankFailed when one
    rank of several failed while scoring (the module's docstring says why that one differs)."""
    from avmae.distributed import setup_distributed

    request.validate()
    dist_info = setup_distributed(request.device, request.collective_timeout_s)
    try:
        result = _score(request, dist_info)
    except Exception as err:
        if dist_info.world > 1:
            raise RankFailed(dist_info.rank, dist_info.world, err) from err
        _leave_group()  # alone: no peer to wait for
        raise
    try:  # every rank gets here with the same results, past the last gather: their barriers match
        if result.is_main:
            write_outputs(result.report, result.predictions, result.out)
        for cover in result.coverages:
            cover.check(str(result.out / REPORT))
        return result
    finally:
        _leave_group(together=True)


def _leave_group(together: bool = False) -> None:
    """Tear the process group down; ``together``: after a barrier, because a rank exiting alone aborts the others
    in gloo (rank 0 may still be writing the outputs)."""
    import torch.distributed as dist

    from avmae import collectives

    if dist.is_initialized():
        if together:
            collectives.barrier()
        dist.destroy_process_group()


def _score(request: EvalRequest, dist_info) -> EvalResult:
    from avmae.eval.probe import linear_probe
    from avmae.eval.retrieval import retrieval_metrics
    from avmae.eval.runner import classify, embeddings, versions
    from avmae.export.load import load_model

    loaded = load_model(request.ckpt, request.weights, request.modality, request.alone_norms)
    common = dict(batch_size=request.batch_size, workers=request.workers, backend=request.backend,
                  device=dist_info.device, rank=dist_info.rank, world=dist_info.world)
    report: dict[str, Any] = {"checkpoint": str(loaded.path), "task": request.task, "data": request.data,
                              "split": request.split, "modality": request.modality or loaded.config.finetune.modality,
                              "alone_norms": loaded.config.model.alone_norms, "config": to_dict(loaded.config),
                              "versions": versions(), "world_size": dist_info.world}
    predictions, coverages = None, []
    clips = load_clip_set(request.data, request.split, request.ids)
    only = clips.only
    if request.task == "retrieval" or request.linear_probe:
        test = keep_listed(embeddings(loaded, request.data, request.split, **common), only)
        coverages.append(coverage(test["spec"], request.split, test["keys"], test["skipped"], request.allow_missing,
                                  only))
        scored_keys = test["keys"]
        if request.task == "retrieval":
            report["metrics"] = retrieval_metrics(test["audio"], test["video"])
        else:
            train = embeddings(loaded, request.data, request.train_split, **common)
            coverages.append(coverage(train["spec"], request.train_split, train["keys"], train["skipped"],
                                      request.allow_missing))
            spec = test["spec"]
            report["metrics"] = linear_probe(train, test, spec.label_mode == LabelMode.MULTI, len(spec.label_names))
            report["linear_probe"] = {"train_split": request.train_split,
                                      "features": "audio and video pooled, concatenated"}
    else:
        from avmae.recipe.geometry import load_run_spec

        predictions, skipped, info = classify(loaded, request.data, request.split, request.task,
                                              views=request.views, view_average=request.view_average, **common)
        spec = load_run_spec(loaded.config, request.split, shards=request.data)
        if only is not None:
            predictions = predictions.select([key for key in predictions.keys if key in only])
            skipped = [record for record in skipped if record.get("key") in only]
        coverages.append(coverage(spec, request.split, predictions.keys, skipped, request.allow_missing, only))
        scored_keys = predictions.keys
        report.update(info)
        report.update(summarise(task_metrics(predictions), predictions))
    report["coverage"] = coverages[0].as_dict()
    report["clip_set"] = clips.report(scored_keys)
    if len(coverages) > 1:
        report["train_coverage"] = coverages[1].as_dict()
    return EvalResult(report, request.out_dir(), dist_info.rank == 0, predictions, coverages)


def recompute_metrics(path: str | Path, task: str | None = None) -> dict[str, Any]:
    """The metrics of a saved predictions file (``task`` only for files that do not store their label mode)."""
    from avmae.eval.runner import TASK_LABEL_MODES

    if task is not None and task not in TASK_LABEL_MODES:
        raise ValueError(f"task must be one of {', '.join(TASK_LABEL_MODES)}, got {task!r}")
    metrics = task_metrics(Predictions.load(path, TASK_LABEL_MODES[task] if task else None))
    metrics.pop("per_class_ap", None)
    return metrics
