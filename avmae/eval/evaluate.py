"""``avmae-eval``'s one library call: an evaluation request in, a report out (and on disk).

``evaluate`` starts the process group (one process, torchrun or srun: avmae/distributed.py), loads the export,
scores the split (a fine-tuned classifier, a linear probe on frozen features, or audio<->video retrieval), accounts
for every sample of the split (avmae/eval/coverage.py), and has rank 0 write the outputs. Errors name the request's
fields; the CLI maps them to its flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from avmae.config import to_dict
from avmae.eval.clip_set import keep_listed, load_clip_set
from avmae.eval.coverage import Coverage, coverage
from avmae.eval.outputs import summarise, write_outputs
from avmae.eval.predictions import Predictions, task_metrics
from avmae.shard.format import LabelMode

TASKS = ("audioset", "vggsound", "epic", "retrieval")
REPORT = "report.json"


@dataclass
class EvalRequest:
    ckpt: str  # an export .safetensors or a run folder
    data: str  # shard folder
    task: Literal["audioset", "vggsound", "epic", "retrieval"]
    split: str = "test"
    weights: str = "model"  # which export of a run folder
    modality: str | None = None  # inputs used; None: as trained
    alone_norms: Literal["own", "averaged"] = "own"  # model.alone_norms for the evaluated model
    views: int = 1
    linear_probe: bool = False
    train_split: str = "train"  # the linear probe's training split
    out: Path | None = None  # default: <run>/eval_<task>_<split>
    batch_size: int = 16
    workers: int = 2
    backend: str = "auto"
    device: str | None = None
    allow_missing: bool = False  # accept samples of the split that could not be scored (recorded in the report)
    ids: str | None = None  # another lab's clip list (avmae-shard ids): score only the split's clips it holds

    def validate(self) -> "EvalRequest":
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        for name in ("views", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"workers must be 0 or more, got {self.workers}")
        return self

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        ckpt = Path(self.ckpt)
        run = ckpt if ckpt.is_dir() else ckpt.parent.parent
        return run / f"eval_{self.task}_{self.split}{'_probe' if self.linear_probe else ''}"


@dataclass
class EvalResult:
    report: dict[str, Any]
    out: Path
    is_main: bool  # rank 0, which wrote the outputs
    predictions: Predictions | None = None
    coverages: list[Coverage] = field(default_factory=list)


def evaluate(request: EvalRequest) -> EvalResult:
    """Score ``request`` and write its outputs; raises IncompleteEvaluation (after writing the report, which lists
    the missing samples) when samples could not be scored and ``allow_missing`` is off."""
    import torch.distributed as dist

    from avmae.distributed import setup_distributed

    request.validate()
    dist_info = setup_distributed(request.device)
    try:
        result = _score(request, dist_info)
        if result.is_main:
            write_outputs(result.report, result.predictions, result.out)
        for cover in result.coverages:
            cover.check(str(result.out / REPORT))
        return result
    finally:
        if dist.is_initialized():  # every rank leaves together; a rank exiting alone aborts the others in gloo
            dist.barrier()
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
                                              views=request.views, **common)
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
