"""The export format, owned here alone: fp32 safetensors whose metadata carry the run config, the task, the label
set and, for classifiers, the heads. ``avmae-train`` writes exports, ``avmae-convert`` writes them from CAV-MAE
checkpoints, and ``avmae-eval``, fine-tuning initialisation and MAViL's teacher read them, all through this module.

A path given by a user is a ``.safetensors`` file or a run folder, whose exports lie in ``export/<weights>.safetensors``
(``model``: the final step; ``best`` and ``averaged``: fine-tuning)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from avmae.config import ConfigError, to_dict
from avmae.files import write_atomically
from avmae.recipe.config import RunConfig
from avmae.recipe.saved import read_saved_run_config

EXPORT_DIR = "export"
WEIGHTS = ("model", "best", "averaged")


class ExportError(ValueError):
    """A file that is not a usable avmae export; the message names it."""


@dataclass
class ExportInfo:
    """What an export says about the weights it holds."""

    task: str  # "pretrain" or "finetune"
    config: RunConfig
    label_mode: str = ""
    label_names: list[str] = field(default_factory=list)
    heads: dict[str, int] = field(default_factory=dict)
    extra: dict[str, str] = field(default_factory=dict)  # provenance: step tag, best step, conversion report, ...

    def metadata(self) -> dict[str, str]:
        meta = {"task": self.task, "config": json.dumps(to_dict(self.config)), "label_mode": str(self.label_mode),
                "label_names": json.dumps(list(self.label_names)), **self.extra}
        if self.heads:
            meta["heads"] = json.dumps(self.heads)
        return meta


def export_path(run_dir: str | Path, weights: str = "model") -> Path:
    return Path(run_dir) / EXPORT_DIR / f"{weights}.safetensors"


def resolve(path: str | Path, weights: str = "model") -> Path:
    """A .safetensors file, or ``export/<weights>.safetensors`` of a run folder."""
    path = Path(path)
    if path.is_dir():
        path = export_path(path, weights)
    if not path.exists():
        raise FileNotFoundError(f"no export at {path}: give an exported .safetensors file or a finished run folder")
    return path


def label_set_hash(names: list[str]) -> str:
    return hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest()[:16]


def write_export(path: str | Path, state: dict[str, torch.Tensor], info: ExportInfo) -> Path:
    """fp32 weights and their description, written as temp file, sync, rename: a reader never sees half a file."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().float().contiguous() for k, v in state.items()}
    return write_atomically(path, lambda partial: save_file(tensors, str(partial), metadata=info.metadata()))


def read_export(path: str | Path, weights: str = "model") -> tuple[dict[str, torch.Tensor], ExportInfo, Path]:
    """The weights, their description and the resolved file; an error naming the file when it is no avmae export."""
    from safetensors import SafetensorError, safe_open

    path = resolve(path, weights)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata: dict[str, Any] = handle.metadata() or {}
            state = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError) as err:
        raise ExportError(f"{path} is not a readable safetensors file: {err}") from None
    if "config" not in metadata:
        raise ExportError(f"{path} has no avmae run config in its metadata: export it with avmae-train or "
                          "avmae-convert")
    try:
        config = read_saved_run_config(json.loads(metadata["config"]))
    except (ConfigError, ValueError) as err:
        raise ExportError(f"{path}: its run config cannot be read: {err}") from None
    # The heads are read off the weights themselves: name and class count of every heads.<name>.weight.
    heads = {key.split(".")[1]: int(value.shape[0]) for key, value in state.items()
             if key.startswith("heads.") and key.endswith(".weight")}
    known = {"task", "config", "label_mode", "label_names", "heads"}
    info = ExportInfo(task=metadata.get("task", config.task), config=config, label_mode=metadata.get("label_mode", ""),
                      label_names=json.loads(metadata.get("label_names", "[]")), heads=heads,
                      extra={k: v for k, v in metadata.items() if k not in known})
    return state, info, path


def load_weights(path: str | Path, weights: str = "model") -> dict[str, torch.Tensor]:
    """Only the weights of an export (fine-tuning initialisation, continued pretraining)."""
    return read_export(path, weights)[0]
