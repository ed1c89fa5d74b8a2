"""Evaluation reports: JSON for scripts, a rich table for people, per-class AP as CSV, and PNG plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from avmae.files import write_text_atomically

HEADLINE = ("mAP", "mAP_sklearn", "mAUC", "d_prime", "top1", "top5", "verb_top1", "noun_top1", "action_top1",
            "action_top5", "samples", "classes", "classes_without_positives")

# The metric that ranks a fine-tuning run's evaluations, to keep its best checkpoint: the first of these its label
# mode reports (mAP for multi-label data, top-1 accuracy for single-label data, action top-1 for Epic-Kitchens).
BEST_CHECKPOINT_METRICS = ("mAP", "top1", "action_top1")


def best_checkpoint_score(metrics: dict[str, Any]) -> float | None:
    """The score of an evaluation's ``metrics`` for keeping the best checkpoint, higher is better (None: none of
    ``BEST_CHECKPOINT_METRICS`` was reported)."""
    for name in BEST_CHECKPOINT_METRICS:
        if name in metrics:
            return metrics[name]
    return None


def write_json(report: dict[str, Any], path: Path) -> None:
    """Written as temp file, sync, rename: a report is there whole or not at all."""
    write_text_atomically(path, json.dumps(report, indent=1, sort_keys=True, default=_plain))


def _plain(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def print_table(report: dict[str, Any], title: str) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    metrics = report.get("metrics", {})
    for name in HEADLINE:
        if name in metrics and isinstance(metrics[name], (int, float)):
            value = metrics[name]
            table.add_row(name, f"{value:.4f}" if isinstance(value, float) else str(value))
    for direction in ("audio_to_video", "video_to_audio", "chance"):
        if direction in metrics:
            table.add_row(direction, "  ".join(f"{k} {v:.3f}" for k, v in metrics[direction].items()))
    for name in ("views", "view_aggregation", "modality", "label_set_hash", "label_order"):
        if name in report:
            table.add_row(name, str(report[name]))
    Console().print(table)


def write_per_class_csv(ap: np.ndarray, names: list[str], targets: np.ndarray, path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "label", "positives", "average_precision"])
        for index, (name, value) in enumerate(zip(names, ap)):
            writer.writerow([index, name, int(targets[:, index].sum()), "" if np.isnan(value) else f"{value:.6f}"])


def plot_per_class_ap(ap: np.ndarray, names: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [i for i in np.argsort(-np.nan_to_num(ap, nan=-1)) if not np.isnan(ap[i])]
    figure, axis = plt.subplots(figsize=(max(6, len(order) * 0.12), 4))
    axis.bar(range(len(order)), ap[order], color="tab:blue")
    axis.axhline(float(np.nanmean(ap)), color="tab:red", linestyle="--", label=f"mAP {np.nanmean(ap):.3f}")
    if len(order) <= 40:
        axis.set_xticks(range(len(order)), [names[i] for i in order], rotation=90, fontsize=7)
    axis.set_ylabel("average precision")
    axis.set_title(f"per-class AP, sorted ({len(order)} classes with positives)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def top_confusions(scores: np.ndarray, labels: np.ndarray, names: list[str], top: int = 15) -> list[dict[str, Any]]:
    predicted = scores.argmax(axis=1)
    pairs: dict[tuple[int, int], int] = {}
    for truth, guess in zip(labels.tolist(), predicted.tolist()):
        if truth != guess:
            pairs[(truth, guess)] = pairs.get((truth, guess), 0) + 1
    ranked = sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
    return [{"true": names[t], "predicted": names[p], "count": n} for (t, p), n in ranked]


def plot_confusions(confusions: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, max(2, 0.35 * len(confusions) + 1)))
    labels = [f"{c['true']} → {c['predicted']}" for c in confusions][::-1]
    axis.barh(range(len(confusions)), [c["count"] for c in confusions][::-1], color="tab:orange")
    axis.set_yticks(range(len(confusions)), labels, fontsize=8)
    axis.set_xlabel("clips")
    axis.set_title("top confusions (true → predicted)" if confusions else "no confusions")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
