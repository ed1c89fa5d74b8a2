"""Fine-tuning's periodic evaluation, handed to the trainer (``avmae.train.trainer.Evaluator``): the classifier
scored on the run's evaluation split with the metrics ``avmae-eval`` reports."""

from __future__ import annotations

from typing import Any

import torch

from avmae.data.loader import Loader
from avmae.eval.predict import evaluate_classifier
from avmae.recipe.config import RunConfig
from avmae.recipe.geometry import load_run_spec


class SplitEvaluator:
    def __init__(self, config: RunConfig):
        self.config = config

    def __call__(self, model: torch.nn.Module, heads: dict[str, int], *, rank: int, world: int,
                 device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
        config = self.config
        spec = load_run_spec(config, config.data.eval_split)
        loader = Loader(spec, config.data, train=False, rank=rank, world=world, device=device)
        metrics, _ = evaluate_classifier(model, loader, spec.label_mode, heads, dtype=dtype,
                                         max_batches=config.finetune.eval_batches)
        # how many were scored of how many (finetune.eval_batches may cap it on purpose; skips are faults)
        return {**metrics, "samples_in_split": spec.samples}
