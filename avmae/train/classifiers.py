"""The fine-tuning model a run config describes, for the trainer and for evaluation of its checkpoints."""

from __future__ import annotations

from avmae.models.bottleneck import BottleneckClassifier
from avmae.models.classifier import AVClassifier
from avmae.train.config import RunConfig


def build_classifier(config: RunConfig, heads: dict[str, int], modality: str | None = None) -> AVClassifier:
    """``modality`` overrides ``finetune.modality`` (evaluating an audio-visual model on one modality)."""
    finetune = config.finetune
    modality = modality or finetune.modality
    if finetune.classifier == "bottleneck":
        return BottleneckClassifier(config.model, heads, modality, finetune.modality_dropout, seed=config.seed,
                                    bottleneck=finetune.bottleneck)
    return AVClassifier(config.model, heads, modality, finetune.modality_dropout, seed=config.seed)
