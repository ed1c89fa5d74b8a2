"""Fine-tuning's evaluation during training: the model scored on the run's evaluation split by the evaluator the
trainer is handed (``avmae.eval.during_training.SplitEvaluator``), at the checkpoints ``finetune.eval_every`` makes
due, with its metrics logged as ``eval/<name>``. The trainer does not reach into the evaluation stage."""

from __future__ import annotations

from typing import Any, Protocol

import torch

from avmae.distributed import DistInfo
from avmae.train.logging import RunLogger


class Evaluator(Protocol):
    """The metrics of ``model`` on the run's evaluation split, identical on every rank."""

    def __call__(self, model: torch.nn.Module, heads: dict[str, int], *, rank: int, world: int,
                 device: torch.device, dtype: torch.dtype) -> dict[str, Any]: ...


class InTrainingEvaluation:
    def __init__(self, evaluator: Evaluator, engine, heads: dict[str, int], dist: DistInfo, dtype: torch.dtype):
        self.evaluator, self.engine, self.heads, self.dist, self.dtype = evaluator, engine, heads, dist, dtype

    def __call__(self, step: int, logger: RunLogger) -> dict[str, Any]:
        """The metrics of the weights after ``step`` (the model in eval mode meanwhile), logged."""
        self.engine.eval()
        try:
            metrics = self.evaluator(self.engine, self.heads, rank=self.dist.rank, world=self.dist.world,
                                     device=self.dist.device, dtype=self.dtype)
        finally:
            self.engine.train()
        logger.step(step, {f"eval/{k}": v for k, v in metrics.items() if isinstance(v, (int, float))})
        return metrics
