"""A model back from an exported checkpoint: the safetensors file carries the run config, the task and, for
fine-tuned models, the heads and label names they were trained with."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from avmae.config import from_dict
from avmae.train.models import build_classifier, build_pretraining_model
from avmae.train.config import RunConfig


@dataclass
class LoadedModel:
    model: torch.nn.Module
    task: str
    config: RunConfig
    heads: dict[str, int]
    label_mode: str
    label_names: list[str]
    path: Path


def resolve(path: str | Path, weights: str = "model") -> Path:
    """A .safetensors file, or ``export/<weights>.safetensors`` of a run folder (model, best or averaged)."""
    path = Path(path)
    if path.is_dir():
        path = path / "export" / f"{weights}.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}: give an exported .safetensors file or a finished run folder")
    return path


def label_set_hash(names: list[str]) -> str:
    return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()[:16]


def load_model(path: str | Path, weights: str = "model", modality: str | None = None) -> LoadedModel:
    path = resolve(path, weights)
    with safe_open(str(path), framework="pt") as handle:
        metadata: dict[str, Any] = handle.metadata() or {}
        state = {key: handle.get_tensor(key) for key in handle.keys()}
    if "config" not in metadata:
        raise ValueError(f"{path} has no avmae run config in its metadata: export it with avmae-train")
    config = from_dict(RunConfig, json.loads(metadata["config"]))
    task = metadata.get("task", config.task)
    # The heads are read off the weights themselves: name and class count of every heads.<name>.weight.
    heads = {key.split(".")[1]: int(value.shape[0]) for key, value in state.items()
             if key.startswith("heads.") and key.endswith(".weight")}
    if task == "pretrain":
        model: torch.nn.Module = build_pretraining_model(config)
    else:
        model = build_classifier(config, heads, modality)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit the model it describes: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return LoadedModel(model.eval(), task, config, heads, metadata.get("label_mode", ""),
                       json.loads(metadata.get("label_names", "[]")), path)
