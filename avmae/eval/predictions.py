"""The predictions contract, owned here alone: the scores of every scored sample of a split, per head, with their
targets, the label mode and the label names; saved as ``predictions.npz`` and scored by the one ``task_metrics``.

File layout (what ``avmae-eval`` has always written, so older files still load): ``keys``; one head called
``label`` as ``scores`` / ``targets``; several heads (Epic-Kitchens' verb and noun) as ``scores_<head>`` /
``targets_<head>``. Since the label mode and names travel with the arrays, ``label_mode`` and ``label_names`` are
stored too; a file without them needs the label mode from its reader (``avmae-eval metrics --task``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avmae.eval.metrics import epic_metrics, multilabel_metrics, single_label_metrics
from avmae.files import write_atomically
from avmae.shard.format import LabelMode

SINGLE_HEAD = "label"  # the head of single- and multi-label data; stored without a suffix


class PredictionsError(ValueError):
    """A predictions file or object that cannot be used; the message names it."""


@dataclass
class Predictions:
    keys: list[str]
    scores: dict[str, np.ndarray]  # head -> (N, classes): probabilities or logits
    targets: dict[str, np.ndarray]  # head -> (N, classes) multi-hot or (N,) class indices
    label_mode: LabelMode
    label_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.label_mode = LabelMode(self.label_mode)
        if set(self.scores) != set(self.targets):
            raise PredictionsError(f"scores for heads {sorted(self.scores)} but targets for {sorted(self.targets)}")
        for head in self.scores:
            if not len(self.scores[head]) == len(self.targets[head]) == len(self.keys):
                raise PredictionsError(f"head {head!r}: {len(self.scores[head])} scores, {len(self.targets[head])} "
                                       f"targets and {len(self.keys)} keys")

    def __len__(self) -> int:
        return len(self.keys)

    def select(self, keys: list[str]) -> "Predictions":
        """The rows of ``keys``, in that order."""
        row = {key: number for number, key in enumerate(self.keys)}
        rows = np.array([row[key] for key in keys], dtype=np.int64)
        return Predictions(list(keys), {h: v[rows] for h, v in self.scores.items()},
                           {h: v[rows] for h, v in self.targets.items()}, self.label_mode, list(self.label_names))

    def arrays(self) -> dict[str, np.ndarray]:
        """The file's arrays (the layout in the module docstring)."""
        out = {"keys": np.array(self.keys, dtype=str), "label_mode": np.array(str(self.label_mode)),
               "label_names": np.array(self.label_names, dtype=str)}
        for head in self.scores:
            suffix = "" if list(self.scores) == [SINGLE_HEAD] else f"_{head}"
            out[f"scores{suffix}"] = self.scores[head]
            out[f"targets{suffix}"] = self.targets[head]
        return out

    def save(self, path: str | Path) -> Path:
        """Written as temp file, sync, rename: a reader never sees half a file."""
        arrays = self.arrays()

        def write(partial: Path) -> None:
            with open(partial, "wb") as handle:  # a handle: np.savez would append ".npz" to the temporary name
                np.savez(handle, **arrays)

        return write_atomically(path, write)

    @classmethod
    def load(cls, path: str | Path, label_mode: LabelMode | str | None = None) -> "Predictions":
        """A saved file; ``label_mode`` is needed only for files written before the mode was stored, and must
        agree with the stored one otherwise."""
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
        except FileNotFoundError:
            raise PredictionsError(f"{path}: no such file") from None
        except (OSError, ValueError) as err:
            raise PredictionsError(f"{path} is not a predictions .npz file: {err}") from None
        stored = str(arrays["label_mode"]) if "label_mode" in arrays else None
        if stored is None and label_mode is None:
            raise PredictionsError(f"{path} does not say its label mode (written before it was stored): give the task")
        if stored is not None and label_mode is not None and LabelMode(label_mode) != LabelMode(stored):
            raise PredictionsError(f"{path} holds {stored} predictions, not {LabelMode(label_mode)} ones")
        if "keys" not in arrays:
            raise PredictionsError(f"{path} has no 'keys' array: not an avmae predictions file")
        if "scores" in arrays:
            heads = [SINGLE_HEAD]
            scores, targets = {SINGLE_HEAD: arrays.get("scores")}, {SINGLE_HEAD: arrays.get("targets")}
        else:
            heads = sorted(name.removeprefix("scores_") for name in arrays if name.startswith("scores_"))
            scores = {h: arrays.get(f"scores_{h}") for h in heads}
            targets = {h: arrays.get(f"targets_{h}") for h in heads}
        lacking = [h for h in heads if targets[h] is None]
        if not heads or lacking:
            raise PredictionsError(f"{path}: no scores, or scores without targets (heads {lacking or heads})")
        names = arrays["label_names"].tolist() if "label_names" in arrays else []
        return cls(arrays["keys"].tolist(), scores, targets, LabelMode(stored or label_mode), names)


def task_metrics(predictions: Predictions) -> dict[str, Any]:
    """The metrics of the label mode: mAP & co. (multi), top-k (single), verb / noun / action top-k (verb_noun)."""
    scores, targets = predictions.scores, predictions.targets
    if predictions.label_mode == LabelMode.VERB_NOUN:
        return epic_metrics(scores["verb"], scores["noun"], targets["verb"], targets["noun"])
    if predictions.label_mode == LabelMode.MULTI:
        return multilabel_metrics(scores[SINGLE_HEAD], targets[SINGLE_HEAD])
    if predictions.label_mode == LabelMode.SINGLE:
        return single_label_metrics(scores[SINGLE_HEAD], targets[SINGLE_HEAD])
    raise PredictionsError("predictions without labels (label mode none) have no metrics")
