"""The model builders: a pretraining model (AV-MAE or MAViL) and a classifier (pooled or MBT bottleneck), from the
model sections of a run config. ``avmae.export.load.model_for`` maps a whole run config onto these."""

from __future__ import annotations

from avmae.models.avmae import AVMAE
from avmae.models.bottleneck import BottleneckClassifier
from avmae.models.classifier import AVClassifier
from avmae.models.config import BottleneckConfig, MAViLConfig, ModelConfig
from avmae.models.mavil import MAViL


def build_pretraining_model(model: ModelConfig, mavil: MAViLConfig) -> AVMAE:
    """AV-MAE, or MAViL when its intra-modal term or a stage-2 teacher is configured (the teacher itself is
    attached by the trainer: evaluating a stage-2 export does not need it)."""
    if mavil.enabled:
        return MAViL(model, mavil)
    return AVMAE(model)


def build_classifier(model: ModelConfig, heads: dict[str, int], *, classifier: str, modality: str,
                     modality_dropout: float, bottleneck: BottleneckConfig, seed: int) -> AVClassifier:
    """``classifier``: pooled (CAV-MAE) or bottleneck (AV-MAE's MBT)."""
    if classifier == "bottleneck":
        return BottleneckClassifier(model, heads, modality, modality_dropout, seed=seed, bottleneck=bottleneck)
    return AVClassifier(model, heads, modality, modality_dropout, seed=seed)
