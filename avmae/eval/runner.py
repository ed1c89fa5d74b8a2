"""``avmae-eval``'s work: score a split with a checkpoint (one process or distributed, every sample once),
aggregate views, compute the task's metrics, and write what changes the number next to the number."""

from __future__ import annotations

import dataclasses
import logging
import platform
from typing import Any

import numpy as np
import torch

import avmae
from avmae.data.config import DataConfig
from avmae.data.loader import Loader
from avmae.export.format import label_set_hash
from avmae.export.load import LoadedModel
from avmae.recipe.geometry import load_run_spec
from avmae.eval.retrieval import retrieval_metrics
from avmae.models.avmae import pooled_unimodal
from avmae.eval.coverage import batch_skips, gather_records
from avmae.eval.metrics import softmax
from avmae.eval.predict import gather, gather_keys, predict
from avmae.eval.predictions import Predictions
from avmae.shard.format import LabelMode

log = logging.getLogger(__name__)

TASK_LABEL_MODES = {"audioset": LabelMode.MULTI, "vggsound": LabelMode.SINGLE, "epic": LabelMode.VERB_NOUN}


def probabilities(scores: np.ndarray, label_mode: LabelMode | str) -> np.ndarray:
    """Sigmoid for multi-label heads, softmax for single-label ones (what views are averaged in)."""
    if label_mode == LabelMode.MULTI:
        return 1 / (1 + np.exp(-scores))
    return softmax(scores)


def _data_config(loaded: LoadedModel, data: str, split: str, batch_size: int, workers: int, backend: str,
                 view: int, views: int) -> DataConfig:
    """The trained run's loader settings (geometry, normalisation) on another split; its augment section, training
    only, is never read."""
    return dataclasses.replace(loaded.config.data, shards=data, eval_split=split, batch_size=batch_size,
                               workers=workers, backend=backend, view=view, views=views)


def _average_views(per_view: list[Predictions], average: str) -> Predictions:
    """The views of each sample combined, for the samples every view scored (a view that could not read a sample
    leaves it unscored, and recorded): ``average`` "probabilities", the mean of the views' sigmoids (multi-label) or
    softmaxes (CAV-MAE's testing); "logits", the sigmoid or softmax of the mean of the views' logits (Scenic's MBT
    testing, scenic/projects/mbt: its test clips' logits are averaged). Scores come out as probabilities either way."""
    scored_by_all = set.intersection(*(set(p.keys) for p in per_view))
    keys = [key for key in per_view[0].keys if key in scored_by_all]
    views = [p.select(keys) for p in per_view]
    first = views[0]
    if average == "logits":
        scores = {head: probabilities(np.mean([v.scores[head] for v in views], 0), first.label_mode)
                  for head in first.scores}
    else:
        scores = {head: np.mean([probabilities(v.scores[head], first.label_mode) for v in views], 0)
                  for head in first.scores}
    return dataclasses.replace(first, scores=scores)


def _aggregation(label_mode: LabelMode, average: str) -> str:
    squash = "sigmoid" if label_mode == LabelMode.MULTI else "softmax"
    return f"{squash} of mean logits" if average == "logits" else f"mean of {squash}"


def classify(loaded: LoadedModel, data: str, split: str, task: str, *, views: int, batch_size: int, workers: int,
             backend: str, device: torch.device, rank: int, world: int, view_average: str = "probabilities"
             ) -> tuple[Predictions, list[dict[str, Any]], dict[str, Any]]:
    """The predictions of a fine-tuned classifier on ``split`` (views averaged), the loader's records of what it
    could not read, and what changes the numbers (features, views, label set)."""
    if loaded.task != "finetune":
        raise ValueError(f"{loaded.path} is a {loaded.task} checkpoint; task {task} needs a fine-tuned one "
                         "(or a linear probe, or the retrieval task)")
    spec = load_run_spec(loaded.config, split, shards=data)
    wanted = TASK_LABEL_MODES.get(task, spec.label_mode)
    if spec.label_mode != wanted:
        raise ValueError(f"task {task} needs {wanted} labels but {data} has {spec.label_mode} labels")
    if loaded.heads != spec.heads:
        raise ValueError(f"{loaded.path.name} has the heads {loaded.heads} (classes per head) but {data} has "
                         f"{spec.heads}: it was trained on another label set")
    if loaded.label_names and list(spec.label_names) != loaded.label_names:
        raise ValueError(f"the label set of {data} (hash {label_set_hash(list(spec.label_names))}) differs from the "
                         f"one {loaded.path.name} was trained on (hash {label_set_hash(loaded.label_names)})")
    # A converted CAV-MAE checkpoint may hold no label names (avmae-convert without --labels): the class count is
    # checked above, the order cannot be. Shards in another order (AudioSet built without --class-labels) would
    # score near chance with no error, so the report says the order was taken on trust.
    if spec.label_mode == LabelMode.VERB_NOUN:
        label_order = "class indices"  # Epic-Kitchens' verb_class and noun_class: the dataset's numbering
    elif loaded.label_names:
        label_order = "checked"
    else:
        label_order = "unchecked: the checkpoint holds no label names"
        log.warning("%s holds no label names: the class order of %s is taken on trust (convert it with --labels to "
                    "check it)", loaded.path.name, data)
    model = loaded.model.to(device)
    per_view, skipped = [], []
    for view in range(views):
        config = _data_config(loaded, data, split, batch_size, workers, backend, view, views)
        loader = Loader(spec, config, train=False, rank=rank, world=world, device=device)
        predictions, view_skipped = predict(model, loader, loaded.heads, spec.label_mode, list(spec.label_names))
        per_view.append(predictions)
        skipped += [{**record, "view": view} for record in view_skipped]
    info = {"label_set_hash": label_set_hash(list(spec.label_names)), "label_order": label_order,
            "features": spec.features, "views": views, "view_aggregation": _aggregation(spec.label_mode, view_average)}
    return _average_views(per_view, view_average), skipped, info


@torch.no_grad()
def embeddings(loaded: LoadedModel, data: str, split: str, *, batch_size: int, workers: int, backend: str,
               device: torch.device, rank: int, world: int) -> dict[str, Any]:
    """Pooled unimodal features (audio, video) of every valid sample of a split, in the global order, their keys,
    and the loader's records of the samples it could not read."""
    spec = load_run_spec(loaded.config, split, shards=data)
    config = _data_config(loaded, data, split, batch_size, workers, backend, 0, 1)
    loader = Loader(spec, config, train=False, rank=rank, world=world, device=device)
    model = loaded.model.to(device)
    audio, video, valid, labels, keys, skipped = [], [], [], [], [], []
    for batch in loader:
        pooled = pooled_unimodal(model.tokenizer, model.encoder, batch["audio"], batch["video"])
        audio.append(pooled["audio"].float().cpu())
        video.append(pooled["video"].float().cpu())
        valid.append(batch["valid"].cpu())
        keys += batch["key"]
        skipped += batch_skips(batch)
        if "label" in batch:
            labels.append(batch["label"].cpu())
    mask = gather(torch.cat(valid)).bool()
    out = {"audio": gather(torch.cat(audio))[mask], "video": gather(torch.cat(video))[mask], "spec": spec,
           "keys": [k for k, ok in zip(gather_keys(keys), mask.tolist()) if ok], "skipped": gather_records(skipped)}
    if labels:
        out["label"] = gather(torch.cat(labels))[mask]
    return out


def retrieve(loaded: LoadedModel, data: str, split: str, **kwargs) -> dict[str, Any]:
    features = embeddings(loaded, data, split, **kwargs)
    return retrieval_metrics(features["audio"], features["video"])


def versions() -> dict[str, str]:
    import scipy

    return {"avmae": avmae.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "python": platform.python_version(),
            "average_precision": "avmae (equals scikit-learn average_precision_score; tested)"}
