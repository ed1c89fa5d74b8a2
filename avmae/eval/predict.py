"""Evaluation of a classifier on a sharded split: every rank scores its share, the scores are gathered in the
global order, padding is dropped, and the metrics of the task are computed (on every rank, identically)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from avmae.eval.metrics import epic_metrics, multilabel_metrics, single_label_metrics


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate a tensor from every rank, rank order (all ranks hold the same shape: the loaders pad)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def gather_keys(keys: list[str]) -> list[str]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return keys
    everyone: list[list[str]] = [[] for _ in range(dist.get_world_size())]
    dist.all_gather_object(everyone, keys)
    return [key for part in everyone for key in part]


@torch.no_grad()
def predict(model, loader, heads: dict[str, int], dtype=torch.float32, max_batches: int = 0) -> dict[str, Any]:
    """Scores per head (N, C) and labels for the valid samples of the split, in the global order."""
    scores: dict[str, list[torch.Tensor]] = {name: [] for name in heads}
    labels: dict[str, list[torch.Tensor]] = {name: [] for name in heads}
    valid, keys = [], []
    for number, batch in enumerate(loader):
        if max_batches and number >= max_batches:
            break
        logits = model(audio=batch["audio"].to(dtype), video=batch["video"].to(dtype))
        for name in heads:
            scores[name].append(logits[name].float().cpu())
            labels[name].append(batch[name].cpu())
        valid.append(batch["valid"].cpu())
        keys += batch["key"]
    mask = gather(torch.cat(valid)).bool()
    out = {"keys": [k for k, ok in zip(gather_keys(keys), mask.tolist()) if ok]}
    for name in heads:
        out[f"scores_{name}"] = gather(torch.cat(scores[name]))[mask].numpy()
        out[f"labels_{name}"] = gather(torch.cat(labels[name]))[mask].numpy()
    return out


def task_metrics(label_mode: str, predictions: dict[str, Any]) -> dict[str, Any]:
    if label_mode == "verb_noun":
        return epic_metrics(predictions["scores_verb"], predictions["scores_noun"], predictions["labels_verb"],
                            predictions["labels_noun"])
    if label_mode == "multi":
        return multilabel_metrics(predictions["scores_label"], predictions["labels_label"])
    return single_label_metrics(predictions["scores_label"], predictions["labels_label"])


def evaluate_classifier(model, loader, label_mode: str, heads: dict[str, int], dtype=torch.float32,
                        max_batches: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    predictions = predict(model, loader, heads, dtype, max_batches)
    metrics = task_metrics(label_mode, predictions)
    return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in metrics.items()}, predictions
