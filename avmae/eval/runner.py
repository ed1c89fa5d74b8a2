"""``avmae-eval``'s work: score a split with a checkpoint (one process or distributed, every sample once),
aggregate views, compute the task's metrics, and write what changes the number next to the number."""

from __future__ import annotations

import dataclasses
import platform
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

import avmae
from avmae.data.config import DataConfig
from avmae.data.loader import Loader
from avmae.export.format import label_set_hash
from avmae.export.load import LoadedModel
from avmae.recipe.geometry import load_run_spec
from avmae.eval.retrieval import retrieval_metrics
from avmae.models.avmae import pooled_unimodal
from avmae.eval.predict import gather, predict, task_metrics

TASK_LABEL_MODES = {"audioset": "multi", "vggsound": "single", "epic": "verb_noun"}


def probabilities(scores: np.ndarray, label_mode: str) -> np.ndarray:
    """Sigmoid for multi-label heads, softmax for single-label ones (what views are averaged in)."""
    if label_mode == "multi":
        return 1 / (1 + np.exp(-scores))
    shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _data_config(loaded: LoadedModel, data: str, split: str, batch_size: int, workers: int, backend: str,
                 view: int, views: int) -> DataConfig:
    trained = loaded.config.data
    return dataclasses.replace(trained, shards=data, eval_split=split, batch_size=batch_size, workers=workers,
                               backend=backend, view=view, views=views, mixup=0.0, freq_mask=0, time_mask=0,
                               balanced_sampling=False)


def classify(loaded: LoadedModel, data: str, split: str, task: str, *, views: int, batch_size: int, workers: int,
             backend: str, device: torch.device, rank: int, world: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Metrics and the saved-prediction arrays of a fine-tuned classifier on ``split``."""
    if loaded.task != "finetune":
        raise ValueError(f"{loaded.path} is a {loaded.task} checkpoint; --task {task} needs a fine-tuned one "
                         "(or use --linear-probe / --task retrieval)")
    spec = load_run_spec(loaded.config, split, shards=data)
    wanted = TASK_LABEL_MODES.get(task, spec.label_mode)
    if spec.label_mode != wanted:
        raise ValueError(f"--task {task} needs {wanted} labels but {data} has {spec.label_mode} labels")
    if loaded.label_names and list(spec.label_names) != loaded.label_names:
        raise ValueError(f"the label set of {data} (hash {label_set_hash(list(spec.label_names))}) differs from the "
                         f"one {loaded.path.name} was trained on (hash {label_set_hash(loaded.label_names)})")
    model = loaded.model.to(device)
    per_view = []
    for view in range(views):
        config = _data_config(loaded, data, split, batch_size, workers, backend, view, views)
        loader = Loader(spec, config, train=False, rank=rank, world=world, device=device)
        per_view.append(predict(model, loader, loaded.heads))
    keys = per_view[0]["keys"]
    arrays: dict[str, Any] = {"keys": np.array(keys)}
    for name in loaded.heads:
        # Views are averaged as probabilities: sigmoid for multi-label, softmax for single-label (CAV-MAE).
        arrays[f"scores_{name}"] = np.mean([probabilities(v[f"scores_{name}"], spec.label_mode) for v in per_view], 0)
        arrays[f"targets_{name}"] = per_view[0][f"labels_{name}"]
    metrics = task_metrics(spec.label_mode, {**{k.replace("targets_", "labels_"): v for k, v in arrays.items()}})
    info = {"label_mode": spec.label_mode, "label_names": list(spec.label_names),
            "label_set_hash": label_set_hash(list(spec.label_names)), "features": spec.features,
            "views": views, "view_aggregation": "mean of sigmoid" if spec.label_mode == "multi" else "mean of softmax"}
    return {**metrics, **info}, arrays


@torch.no_grad()
def embeddings(loaded: LoadedModel, data: str, split: str, *, batch_size: int, workers: int, backend: str,
               device: torch.device, rank: int, world: int) -> dict[str, Any]:
    """Pooled unimodal features (audio, video) of every valid sample of a split, in the global order."""
    spec = load_run_spec(loaded.config, split, shards=data)
    config = _data_config(loaded, data, split, batch_size, workers, backend, 0, 1)
    loader = Loader(spec, config, train=False, rank=rank, world=world, device=device)
    model = loaded.model.to(device)
    audio, video, valid, labels = [], [], [], []
    for batch in loader:
        pooled = pooled_unimodal(model.tokenizer, model.encoder, batch["audio"], batch["video"])
        audio.append(pooled["audio"].float().cpu())
        video.append(pooled["video"].float().cpu())
        valid.append(batch["valid"].cpu())
        if "label" in batch:
            labels.append(batch["label"].cpu())
    mask = gather(torch.cat(valid)).bool()
    out = {"audio": gather(torch.cat(audio))[mask], "video": gather(torch.cat(video))[mask], "spec": spec}
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
