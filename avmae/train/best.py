"""The best evaluated step of a fine-tuning run: its step, score and numeric metrics. Its checkpoint survives pruning,
it is carried in every checkpoint's client state (``best``) so a resume keeps it, and at the end its weights are
exported as ``best``. Which metric is the score is the evaluation stage's choice: the trainer is handed it
(``avmae.eval.report.best_checkpoint_score``), as it is handed the evaluator."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from avmae.train.checkpoint import tag_for

# The score of an evaluation's metrics, higher is better; None when they have no score.
Score = Callable[[dict[str, Any]], "float | None"]


class BestStep:
    def __init__(self, score: Score | None):
        """``score``: none, no step is ever the best. ``value``, the best so far, starts as none; a resume sets it to
        the best its checkpoint recorded."""
        self.score = score
        self.value: dict[str, Any] | None = None

    def consider(self, step: int, metrics: dict[str, Any]) -> None:
        """The evaluation of ``step`` becomes the best when its score beats the best so far."""
        score = self.score(metrics) if self.score else None
        if score is not None and (self.value is None or score > self.value["score"]):
            numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            self.value = {"step": step, "score": score, "metrics": numeric}

    def checkpoint_tag(self) -> str | None:
        """The best step's checkpoint, kept when older ones are pruned (None: no best yet)."""
        return tag_for(self.value["step"]) if self.value else None
