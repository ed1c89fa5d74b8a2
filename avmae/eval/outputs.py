"""What an evaluation leaves on disk, chosen by its label mode: ``report.json`` and ``predictions.npz`` (each
written as temp file, sync, rename), per-class AP as CSV and a plot (multi-label), the top confusions plotted
(single-label). ``summarise`` puts the figures people read into the report; ``write_outputs`` writes the files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from avmae.eval import report as reports
from avmae.eval.metrics import average_precision
from avmae.eval.predictions import SINGLE_HEAD, Predictions
from avmae.shard.format import LabelMode

EMPTY_CLASS_HANDLING = ("classes without positives are left out of mAP (and counted); mAP_sklearn scores them 0 "
                        "like scikit-learn >= 1.1")


def summarise(metrics: dict[str, Any], predictions: Predictions) -> dict[str, Any]:
    """Report entries beside the metrics: the metrics without their per-class array, and the top confusions of
    single-label data."""
    metrics = {k: v for k, v in metrics.items() if k != "per_class_ap"}
    entries: dict[str, Any] = {"metrics": metrics}
    if predictions.label_mode == LabelMode.MULTI:
        metrics["empty_class_handling"] = EMPTY_CLASS_HANDLING
    elif predictions.label_mode == LabelMode.SINGLE:
        entries["top_confusions"] = reports.top_confusions(predictions.scores[SINGLE_HEAD],
                                                           predictions.targets[SINGLE_HEAD], predictions.label_names)
    return entries


def write_outputs(report: dict[str, Any], predictions: Predictions | None, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if predictions is not None:
        predictions.save(out / "predictions.npz")
        names = predictions.label_names
        if predictions.label_mode == LabelMode.MULTI:
            targets = predictions.targets[SINGLE_HEAD]
            ap = average_precision(predictions.scores[SINGLE_HEAD], targets)
            reports.write_per_class_csv(ap, names, targets, out / "per_class_ap.csv")
            reports.plot_per_class_ap(ap, names, out / "per_class_ap.png")
        elif predictions.label_mode == LabelMode.SINGLE:
            reports.plot_confusions(report.get("top_confusions", []), out / "confusions.png")
    # the report last: its presence says the evaluation's files are all there
    reports.write_json(report, out / "report.json")
