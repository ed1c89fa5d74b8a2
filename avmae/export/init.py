"""A new model's starting weights from a file (``init`` of the run config): an ImageNet ViT / MAE checkpoint, a
CAV-MAE checkpoint or an avmae export. Returns a report of what was loaded and what was not, which the trainer writes
to init_report.json."""

from __future__ import annotations

from torch import nn

from avmae.models.classifier import AVClassifier
from avmae.models.convert_cavmae import convert_cavmae
from avmae.models.init_from_vit import init_from_vit
from avmae.models.state_dicts import read_state_dict
from avmae.export.format import load_weights
from avmae.recipe.config import ModelInitConfig

AUDIO_PATCH_EMBEDDING = "tokenizer.audio_embed."


def _load_whole(model: nn.Module, state: dict) -> dict:
    """All of a pretraining model's weights (continued pretraining): every key must fit."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"the checkpoint does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return {"loaded": sorted(state), "missing": [], "unexpected": [], "skipped": []}


def initialise(model: nn.Module, init: ModelInitConfig) -> dict:
    """Load ``init`` into ``model`` (an AVMAE or an AVClassifier) in place."""
    classifier = isinstance(model, AVClassifier)
    report: dict = {"init": init.path, "kind": init.kind}
    if init.kind == "vit":
        return {**report, **init_from_vit(model, read_state_dict(init.path), init.video_inflation)}
    if init.kind == "cavmae":
        state = read_state_dict(init.path)
        if not classifier and "mlp_head.1.weight" in state:
            raise ValueError(f"{init.path} is a fine-tuned CAV-MAE (CAVMAEFT) checkpoint: it has no decoder to "
                             "pretrain with")
        expected = None if classifier else {k: v.shape for k, v in model.state_dict().items()}
        conversion = convert_cavmae(state, model.config, expected=expected, encoder_only=classifier)
        loaded = model.load_pretrained(conversion.state) if classifier else _load_whole(model, conversion.state)
        return {**report, **loaded, "conversion": conversion.report}
    if init.kind == "avmae":
        state = load_weights(init.path)
        if not classifier:
            return {**report, **_load_whole(model, state)}
        # Scenic's transfer (ModelInitConfig) leaves the audio patch embedding at this model's initialisation
        fresh = (AUDIO_PATCH_EMBEDDING,) if init.audio_patch_embedding == "fresh" else ()
        return {**report, **model.load_pretrained(state, fresh)}
    raise ValueError(f"unknown init.kind {init.kind!r}")
