"""What ``avmae-eval`` is asked to do: ``EvalRequest``, the one argument of ``avmae.eval.evaluate.evaluate``.

Each field with a ``help`` in its metadata is also a flag of ``avmae-eval`` (avmae/cli/flags.py builds the parser from
the fields: name, type, choices, default). The module imports no torch, so that ``avmae-eval --help`` stays fast."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from avmae.data.config import Backend
from avmae.recipe.config import GuardConfig

Task = Literal["audioset", "vggsound", "epic", "retrieval"]
TASKS = typing.get_args(Task)
ViewAverage = Literal["probabilities", "logits"]
VIEW_AVERAGES = typing.get_args(ViewAverage)


def _flag(text: str, **options) -> typing.Any:
    """A field that is also a flag, with ``text`` as its help (a field named in backquotes is shown as its flag)."""
    return field(metadata={"help": text}, **options)


@dataclass
class EvalRequest:
    ckpt: str = _flag("exported .safetensors or a run folder")
    data: str = _flag("shard folder (avmae-shard build), or a URL (s3://, gs://, https://) or pipe: command with {} "
                      "for the file name")
    task: Task = _flag("what is scored, and by which metrics (listed above)")
    split: str = _flag("the split scored", default="test")
    weights: Literal["model", "best", "averaged"] = _flag("which export of a run folder", default="model")
    modality: Literal["av", "audio", "video"] | None = _flag("inputs used (default: as trained)", default=None)
    # model.alone_norms for the evaluated model
    alone_norms: Literal["own", "averaged"] = _flag(
        "one modality given to a model with per-modality norms (CAV-MAE): its own norms (CAV-MAE's "
        "audioonly/videoonly) or the mean of that and the joint norms (missingaudioonly/missingvideoonly)",
        default="own")
    views: int = _flag("temporal views per clip (evenly spread frame sets of the stored frames), combined as "
                       "`view_average` says", default=1)
    view_average: ViewAverage = _flag(
        "how views are combined: the mean of their sigmoids/softmaxes (CAV-MAE) or the sigmoid/softmax of the mean "
        "of their logits (Scenic's MBT)", default="probabilities")
    linear_probe: bool = _flag("train a linear head on frozen features of `train_split`, score `split`",
                               default=False)
    train_split: str = _flag("the linear probe's training split", default="train")
    out: Path | None = _flag("report folder (default: <run>/eval_<task>_<split>)", default=None)
    batch_size: int = _flag("clips per batch on each rank", default=16)
    workers: int = _flag("readers per rank: DataLoader workers (torch) or DALI feed processes", default=2)
    backend: Backend = _flag("auto: DALI when CUDA is present, torch otherwise; webdataset is torch's older name",
                             default="auto")
    device: Literal["cpu", "cuda"] | None = _flag("where the model runs (default: CUDA when present)", default=None)
    allow_missing: bool = _flag("accept samples of the split that could not be read (the report lists them and "
                                "says so)", default=False)
    ids: str | None = _flag("another lab's clip list (avmae-shard ids): score only the clips of `split` it holds; "
                            "the report counts both sides", default=None)
    collective_timeout_s: float = _flag(
        "under torchrun / srun: how long a collective waits for a rank that died or hangs before the job ends with "
        "an error, as training's guard.collective_timeout_s", default=GuardConfig.collective_timeout_s)

    def validate(self) -> EvalRequest:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.view_average not in VIEW_AVERAGES:
            raise ValueError(f"view_average must be {' or '.join(VIEW_AVERAGES)}, got {self.view_average!r}")
        for name in ("views", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.workers < 0:
            raise ValueError(f"workers must be 0 or more, got {self.workers}")
        if not self.collective_timeout_s > 0:
            raise ValueError(f"collective_timeout_s must be more than 0, got {self.collective_timeout_s}")
        return self

    def out_dir(self) -> Path:
        if self.out:
            return Path(self.out)
        ckpt = Path(self.ckpt)
        run = ckpt if ckpt.is_dir() else ckpt.parent.parent
        return run / f"eval_{self.task}_{self.split}{'_probe' if self.linear_probe else ''}"
