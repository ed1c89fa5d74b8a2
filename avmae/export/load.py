"""A model back from an export: the model its run config describes, with the export's weights in it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from avmae.export.format import read_export
from avmae.models.build import build_classifier, build_pretraining_model
from avmae.recipe.config import RunConfig


@dataclass
class LoadedModel:
    model: torch.nn.Module
    task: str
    config: RunConfig
    heads: dict[str, int]
    label_mode: str
    label_names: list[str]
    path: Path


def model_for(config: RunConfig, task: str, heads: dict[str, int], modality: str | None = None) -> torch.nn.Module:
    """The model a run config describes: the pretraining model, or the classifier with ``heads``. ``modality``
    overrides ``finetune.modality`` (evaluating an audio-visual model on one modality)."""
    if task == "pretrain":
        return build_pretraining_model(config.model, config.mavil)
    finetune = config.finetune
    return build_classifier(config.model, heads, classifier=finetune.classifier,
                            modality=modality or finetune.modality, modality_dropout=finetune.modality_dropout,
                            bottleneck=finetune.bottleneck, seed=config.seed)


def load_model(path: str | Path, weights: str = "model", modality: str | None = None,
               alone_norms: str | None = None) -> LoadedModel:
    """``alone_norms`` replaces ``model.alone_norms`` of the export's config before the model is built, so the
    config a report saves is the one that produced its numbers."""
    state, info, path = read_export(path, weights)
    config = info.config
    if alone_norms is not None:
        if alone_norms not in ("own", "averaged"):
            raise ValueError(f"alone_norms must be 'own' or 'averaged', got {alone_norms!r}")
        config = dataclasses.replace(config, model=dataclasses.replace(config.model, alone_norms=alone_norms))
    model = model_for(config, info.task, info.heads, modality)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit the model it describes: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return LoadedModel(model.eval(), info.task, config, info.heads, info.label_mode, info.label_names, path)
