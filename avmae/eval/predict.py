"""Scores of a classifier on a sharded split: every rank scores its share, the scores are gathered in the global
order, padding and unreadable samples are dropped (and the unreadable ones recorded, avmae/eval/coverage.py)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from avmae import collectives
from avmae.eval.coverage import batch_skips, gather_records
from avmae.eval.predictions import Predictions, task_metrics
from avmae.shard.format import LabelMode


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor from every rank, rank order (all ranks hold the same shape: the loaders pad), on the
    tensor's own device: avmae.collectives moves it to the group's device (the GPU under NCCL) for the gather."""
    return collectives.all_gather_tensor(tensor)


def gather_keys(keys: list[str]) -> list[str]:
    """Every rank's sample keys, in rank order."""
    return [key for part in collectives.all_gather_object(keys) for key in part]


@torch.no_grad()
def predict(model, loader, heads: dict[str, int], label_mode: LabelMode | str, label_names: list[str] | None = None,
            dtype=torch.float32, max_batches: int = 0) -> tuple[Predictions, list[dict[str, Any]]]:
    """Logits per head and targets of the valid samples of the split, in the global order, and the loader's
    records of the samples it could not read (gathered from every rank)."""
    scores: dict[str, list[torch.Tensor]] = {name: [] for name in heads}
    labels: dict[str, list[torch.Tensor]] = {name: [] for name in heads}
    valid, keys, skipped = [], [], []
    for number, batch in enumerate(loader):
        if max_batches and number >= max_batches:
            break
        logits = model(audio=batch["audio"].to(dtype), video=batch["video"].to(dtype))
        for name in heads:
            scores[name].append(logits[name].float().cpu())
            labels[name].append(batch[name].cpu())
        valid.append(batch["valid"].cpu())
        keys += batch["key"]
        skipped += batch_skips(batch)
    mask = gather(torch.cat(valid)).bool()
    kept = [k for k, ok in zip(gather_keys(keys), mask.tolist()) if ok]
    predictions = Predictions(kept, {name: gather(torch.cat(scores[name]))[mask].numpy() for name in heads},
                              {name: gather(torch.cat(labels[name]))[mask].numpy() for name in heads},
                              LabelMode(label_mode), list(label_names or []))
    return predictions, gather_records(skipped)


def evaluate_classifier(model, loader, label_mode: LabelMode | str, heads: dict[str, int], dtype=torch.float32,
                        max_batches: int = 0) -> tuple[dict[str, Any], Predictions]:
    """The task's metrics (plain numbers and lists), with how many samples were scored and skipped."""
    predictions, skipped = predict(model, loader, heads, label_mode, dtype=dtype, max_batches=max_batches)
    metrics = task_metrics(predictions)
    metrics = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in metrics.items()}
    return {**metrics, "samples_scored": len(predictions), "samples_skipped": len(skipped)}, predictions
