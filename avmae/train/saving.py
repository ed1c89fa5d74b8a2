"""The run's checkpoints as the loop uses them (``checkpoint.every``, ``checkpoint.keep``): the resume from the newest
sound one, and a save at each checkpoint step with the client state a resume starts from (the step, the skipped-step
and sample counts, the best evaluated step) and this rank's reader positions. A fine-tuning evaluation comes with
its checkpoint, so the best weights can always be exported."""

from __future__ import annotations

from typing import Any

from avmae.train.best import BestStep
from avmae.train.boundaries import Boundaries
from avmae.train.checkpoint import Checkpoints
from avmae.train.evaluation import InTrainingEvaluation
from avmae.train.logging import RunLogger


class Saving:
    def __init__(self, checkpoints: Checkpoints, engine, due: Boundaries, evaluation: InTrainingEvaluation | None,
                 best: BestStep):
        self.checkpoints, self.engine, self.due, self.evaluation, self.best = checkpoints, engine, due, evaluation, best

    def resume(self) -> tuple[dict[str, Any], list[str]]:
        """The newest sound checkpoint loaded into the engine: its client state ({} for a fresh start; the best step
        it recorded is the best so far) and a line for each newer checkpoint skipped."""
        client, skipped = self.checkpoints.resume(self.engine)
        client = client or {}
        self.best.value = client.get("best")
        return client, skipped

    def save(self, step: int, counts: dict[str, Any], rank_data: dict[str, Any], logger: RunLogger) -> None:
        """A checkpoint of ``step`` (every rank), after its evaluation when one is due. ``counts``: the run's totals
        (the same on every rank); ``rank_data``: this rank's own state."""
        client: dict[str, Any] = {"best": self.best.value, **counts}
        if self.due.evaluation(step):  # never without an evaluator: Boundaries' finetune_evaluates says there is one
            metrics = self.evaluation(step, logger)
            self.best.consider(step, metrics)
            client["best"] = self.best.value
            client["metrics"] = metrics
        self.checkpoints.save(self.engine, step, client, protect=self.best.checkpoint_tag(), rank_data=rank_data,
                              regular=self.due.regular_checkpoint(step))

    def newest_at_or_before(self, step: int) -> str:
        """The newest complete checkpoint of ``step`` or before, as a path for messages ("" when there is none)."""
        good = [tag for s, tag in self.checkpoints.complete() if s <= step]
        return str(self.checkpoints.root / good[-1]) if good else ""
