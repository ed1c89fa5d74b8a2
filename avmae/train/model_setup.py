"""The model a run trains, before DeepSpeed wraps it: the pretraining model (with MAViL's teacher for its stage 2)
or the classifier with its heads, then its starting weights (``init``); what was loaded is written to
``init_report.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from avmae.data.spec import DataSpec
from avmae.export.init import initialise
from avmae.export.load import load_model, model_for
from avmae.recipe.config import RunConfig
from avmae.shard.format import LabelMode


def task_heads(config: RunConfig, spec: DataSpec) -> dict[str, int]:
    """Fine-tuning's heads (name -> classes): ``finetune.heads`` or, unset, the shards' labels."""
    return dict(config.finetune.heads) or dict(spec.heads)


def loss_kind(config: RunConfig, spec: DataSpec) -> str:
    """Fine-tuning's loss: ``finetune.loss``, or for ``auto`` BCE on multi-label shards and CE on the others."""
    if config.finetune.loss != "auto":
        return config.finetune.loss
    return "bce" if spec.label_mode == LabelMode.MULTI else "ce"


def _pretraining_model(config: RunConfig) -> tuple[torch.nn.Module, dict[str, Any] | None]:
    model, report = model_for(config, "pretrain", {}), None
    if config.mavil.teacher:
        teacher = load_model(config.mavil.teacher)
        if teacher.task != "pretrain":
            raise ValueError(f"mavil.teacher {teacher.path} is a {teacher.task} export; MAViL's stage 2 "
                             "learns from a stage-1 pretraining export")
        model.attach_teacher(teacher.model)
        report = {"teacher": str(teacher.path)}
    return model, report


def build_model(config: RunConfig, spec: DataSpec, workdir: Path, is_main: bool) -> torch.nn.Module:
    """The run's model with its starting weights; rank 0 writes what its initialisation loaded to
    ``init_report.json``."""
    if config.task == "pretrain":
        model, report = _pretraining_model(config)
    else:
        heads = task_heads(config, spec)
        if not heads:
            raise ValueError(f"{config.data.shards} has no labels to fine-tune on; set finetune.heads")
        model, report = model_for(config, "finetune", heads), None
    if config.init.kind != "none":  # an avmae export or run folder, an ImageNet ViT or a CAV-MAE checkpoint
        report = {**(report or {}), **initialise(model, config.init)}
    if report and is_main:
        (workdir / "init_report.json").write_text(json.dumps(report, indent=1))
    return model
