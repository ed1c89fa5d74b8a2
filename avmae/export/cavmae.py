"""A CAV-MAE checkpoint as an avmae export: converted (avmae/models/convert_cavmae.py), checked to load into the
avmae model with no missing or unexpected key, and written as fp32 safetensors with the run config and label
metadata that ``avmae-eval`` and ``init`` (kind avmae) read, like an export of ``avmae-train``."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import torch

from avmae.config import apply_overrides, from_dict, to_dict
from avmae.data.config import AugmentConfig, DataConfig
from avmae.export.cavmae_options import CavmaeOptions
from avmae.models.convert_cavmae import cavmae_base, convert_cavmae
from avmae.files import write_text_atomically
from avmae.models.state_dicts import read_state_dict
from avmae.export.format import ExportInfo, write_export
from avmae.export.load import model_for
from avmae.recipe.config import FinetuneConfig, RunConfig
from avmae.shard.format import LabelMode

def cavmae_data() -> DataConfig:
    """CAV-MAE's inputs (docs/reference/cavmae.md, "Log-mel front end", "Frames"): one 224 px frame, Resize(224) +
    CenterCrop(224), ImageNet normalisation; log-mel normalised with its fixed (x + 5.081) / 4.4849."""
    return DataConfig(num_frames=1, crop_size=224, eval_short_side=224, video_norm="imagenet", audio_mean=-5.081,
                      audio_std=4.4849)


def cavmae_run_config(finetuned: bool) -> RunConfig:
    """The run config a converted checkpoint carries when none is given (CAV-MAE: no random crop or flip)."""
    return RunConfig(task="finetune" if finetuned else "pretrain", model=cavmae_base(finetune=finetuned),
                     data=cavmae_data(), finetune=FinetuneConfig(modality="av"),
                     augment=AugmentConfig(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False))


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


def classifier_label_mode(label_mode: LabelMode | str | None, config: RunConfig | None) -> LabelMode:
    """The label mode of a converted classifier: as given, or as its run config's loss implies (BCE: multi-label,
    CE: single-label). A class count says nothing about it (VGGSound has 309 classes, so may any other set)."""
    if label_mode:
        mode = LabelMode(label_mode)
        if mode not in (LabelMode.MULTI, LabelMode.SINGLE):
            raise ValueError(f"label_mode must be multi or single for a CAV-MAE classifier, got {label_mode!r}")
        return mode
    loss = config.finetune.loss if config is not None else "auto"
    if loss.startswith("bce"):
        return LabelMode.MULTI
    if loss == "ce":
        return LabelMode.SINGLE
    raise ValueError("a fine-tuned CAV-MAE checkpoint needs its label mode: give label_mode multi (AudioSet-like, "
                     "multi-hot) or single (VGGSound-like, one class per clip), or a run config with finetune.loss "
                     "bce or ce")


def export_cavmae(src: str | Path, out: str | Path, run_config: RunConfig | None = None,
                  label_names: list[str] | None = None, label_mode: LabelMode | str | None = None,
                  overrides: list[str] | None = None) -> dict:
    """Convert ``src`` (a CAVMAE or CAVMAEFT state dict) and write ``out`` and, beside it, the conversion report
    (``<out>.report.json``); returns the report.

    ``run_config``: the avmae run the model belongs to (model geometry, data settings used by ``avmae-eval``);
    default: cavmae_base with CAV-MAE's data settings, with ``overrides`` (``key=value``) applied. ``label_mode``
    (multi or single) is needed for a fine-tuned checkpoint unless ``run_config`` says it (finetune.loss)."""
    state = read_state_dict(src)
    finetuned = any(k.startswith("mlp_head.") for k in state)
    mode = classifier_label_mode(label_mode, run_config) if finetuned else ""
    config = run_config
    if config is None:
        config = from_dict(RunConfig, apply_overrides(to_dict(cavmae_run_config(finetuned)), list(overrides or [])))
    task = "finetune" if finetuned else "pretrain"
    if finetuned and "mlp_head.1.weight" not in state:
        raise ValueError(f"{src}: a fine-tuned CAV-MAE checkpoint without mlp_head.1.weight (keys "
                         f"{sorted(k for k in state if k.startswith('mlp_head.'))})")
    heads = {"label": int(state["mlp_head.1.weight"].shape[0])} if finetuned else {}
    config = dataclasses.replace(config, task=task)
    # every avmae key and every shape of the model the export describes, or an error naming what differs
    conversion = convert_cavmae(state, config.model, expected=_expected_shapes(config, heads))
    classes = conversion.heads.get("label", 0)
    if label_names and classes and len(label_names) != classes:
        raise ValueError(f"{len(label_names)} label names for a head of {classes} classes")
    info = ExportInfo(task=conversion.task, config=config, label_mode=str(mode), label_names=list(label_names or []),
                      heads=dict(conversion.heads), extra={"converted_from": str(src),
                                                           "conversion": json.dumps(conversion.report)})
    write_export(out, conversion.state, info)
    report = {**conversion.report, "task": conversion.task, "label_mode": str(mode), "out": str(out)}
    report["report"] = str(write_text_atomically(report_path(out), json.dumps(report, indent=1)))
    return report


def report_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name.removesuffix(".safetensors") + ".report.json")


def convert_files(src: str | Path, out: str | Path, overrides: list[str] | None = None,
                  labels: str | Path | None = None, options: CavmaeOptions = CavmaeOptions()) -> dict:
    """``export_cavmae`` from files: the run YAML ``options.config`` (with ``overrides``; without it, the overrides
    apply to the default cavmae_base run) and CAV-MAE's label CSV ``labels``."""
    from avmae.config import load

    config = options.config
    run_config = load(RunConfig, config, list(overrides or [])) if config else None
    names = read_label_names(labels) if labels else None
    return export_cavmae(src, out, run_config, names, options.label_mode, overrides=[] if config else overrides)
