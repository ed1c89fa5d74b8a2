"""A CAV-MAE checkpoint as an avmae export: converted (avmae/models/convert_cavmae.py), checked to load into the
avmae model with no missing or unexpected key, and written as fp32 safetensors with the run config and label
metadata that ``avmae-eval`` and ``finetune.init`` read, like an export of ``avmae-train``."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import torch

from avmae.config import apply_overrides, from_dict, to_dict
from avmae.data.config import DataConfig
from avmae.models.convert_cavmae import cavmae_base, convert_cavmae
from avmae.models.state_dicts import read_state_dict
from avmae.export.format import ExportInfo, write_export
from avmae.export.load import model_for
from avmae.recipe.config import FinetuneConfig, RunConfig

VGGSOUND_CLASSES = 309  # CAV-MAE's VGGSound fine-tunes (--n_class 309, methods.md B.3): single-label


def cavmae_data() -> DataConfig:
    """CAV-MAE's inputs (methods.md B.1, B.2): one 224 px frame, Resize(224) + CenterCrop(224) with no random crop or
    flip, ImageNet normalisation; log-mel normalised with its fixed (x + 5.081) / 4.4849."""
    return DataConfig(num_frames=1, crop_size=224, eval_short_side=224, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                      flip=False, video_norm="imagenet", audio_mean=-5.081, audio_std=4.4849)


def cavmae_run_config(finetuned: bool) -> RunConfig:
    """The run config a converted checkpoint carries when none is given."""
    return RunConfig(task="finetune" if finetuned else "pretrain", model=cavmae_base(finetune=finetuned),
                     data=cavmae_data(), finetune=FinetuneConfig(modality="av"))


def read_label_names(path: str | Path) -> list[str]:
    """Class ids in index order from CAV-MAE's label CSV (``index,mid,display_name``, as AudioSet's
    class_labels_indices.csv): the ``mid`` column, which is what avmae's AudioSet shards name their labels."""
    with open(path, newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: int(row["index"]))
    return [row["mid"] for row in rows]


def _expected_shapes(config: RunConfig, heads: dict[str, int]) -> dict[str, torch.Size]:
    """The shapes of the model ``avmae-eval`` will build from the export (the trainer's builders)."""
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        model = model_for(config, config.task, heads)
    return {k: v.shape for k, v in model.state_dict().items()}


def export_cavmae(src: str | Path, out: str | Path, run_config: RunConfig | None = None,
                  label_names: list[str] | None = None, label_mode: str | None = None,
                  overrides: list[str] | None = None) -> dict:
    """Convert ``src`` (a CAVMAE or CAVMAEFT state dict) and write ``out``; returns the conversion report.

    ``run_config``: the avmae run the model belongs to (model geometry, data settings used by ``avmae-eval``);
    default: cavmae_base with CAV-MAE's data settings, with ``overrides`` (``key=value``) applied. ``label_mode``:
    multi (AudioSet) or single; default single for 309 classes (VGGSound), multi otherwise."""
    state = read_state_dict(src)
    finetuned = any(k.startswith("mlp_head.") for k in state)
    config = run_config
    if config is None:
        config = from_dict(RunConfig, apply_overrides(to_dict(cavmae_run_config(finetuned)), list(overrides or [])))
    task = "finetune" if finetuned else "pretrain"
    heads = {"label": int(state["mlp_head.1.weight"].shape[0])} if finetuned else {}
    config = dataclasses.replace(config, task=task)
    # every avmae key and every shape of the model the export describes, or an error naming what differs
    conversion = convert_cavmae(state, config.model, expected=_expected_shapes(config, heads))
    classes = conversion.heads.get("label", 0)
    if label_names and classes and len(label_names) != classes:
        raise ValueError(f"{len(label_names)} label names for a head of {classes} classes")
    mode = label_mode or ("" if not classes else "single" if classes == VGGSOUND_CLASSES else "multi")
    info = ExportInfo(task=conversion.task, config=config, label_mode=mode, label_names=list(label_names or []),
                      heads=dict(conversion.heads), extra={"converted_from": str(src),
                                                           "conversion": json.dumps(conversion.report)})
    write_export(out, conversion.state, info)
    return {**conversion.report, "task": conversion.task, "label_mode": mode, "out": str(out)}
