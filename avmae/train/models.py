"""The models a run config describes, for the trainer and for evaluation of its exports."""

from __future__ import annotations

from avmae.models.avmae import AVMAE
from avmae.models.bottleneck import BottleneckClassifier
from avmae.models.classifier import AVClassifier
from avmae.models.mavil import MAViL
from avmae.train.config import RunConfig


def build_pretraining_model(config: RunConfig) -> AVMAE:
    """AV-MAE, or MAViL when its intra-modal term or a stage-2 teacher is configured (the teacher itself is
    attached by the trainer: evaluating a stage-2 export does not need it)."""
    if config.mavil.enabled:
        return MAViL(config.model, config.mavil)
    return AVMAE(config.model)


def build_classifier(config: RunConfig, heads: dict[str, int], modality: str | None = None) -> AVClassifier:
    """``modality`` overrides ``finetune.modality`` (evaluating an audio-visual model on one modality)."""
    finetune = config.finetune
    modality = modality or finetune.modality
    if finetune.classifier == "bottleneck":
        return BottleneckClassifier(config.model, heads, modality, finetune.modality_dropout, seed=config.seed,
                                    bottleneck=finetune.bottleneck)
    return AVClassifier(config.model, heads, modality, finetune.modality_dropout, seed=config.seed)
