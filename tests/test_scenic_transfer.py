"""init.audio_patch_embedding: fresh, Scenic's own pretrain-to-fine-tune transfer (its MBT never reads the renamed
audio patch embedding): the fine-tuning model keeps its own initialisation there and takes every other weight."""

from __future__ import annotations

import pytest
import torch

from avmae.config import ConfigError
from avmae.export.format import ExportInfo, export_path, write_export
from avmae.export.init import initialise
from avmae.models.avmae import AVMAE
from avmae.models.bottleneck import BottleneckClassifier
from avmae.models.classifier import AVClassifier
from avmae.models.config import BottleneckConfig
from avmae.recipe.config import ModelInitConfig, RunConfig
from tests.tiny_models import tiny


@pytest.mark.parametrize("classifier_kind", ["plain", "bottleneck"])  # MBT's recipes fine-tune the bottleneck one
@pytest.mark.parametrize("audio_patch_embedding", ["pretrained", "fresh"])
def test_fresh_leaves_only_the_audio_patch_embedding_at_the_new_models_initialisation(tmp_path, audio_patch_embedding,
                                                                                      classifier_kind):
    torch.manual_seed(0)
    pretraining = AVMAE(tiny())
    with torch.no_grad():  # trained weights: none equal to an initialisation (zero biases included)
        for parameter in pretraining.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    write_export(export_path(tmp_path), pretraining.state_dict(), ExportInfo("pretrain", RunConfig(model=tiny())))
    torch.manual_seed(1)
    classifier = (AVClassifier(tiny(), {"label": 3}) if classifier_kind == "plain"
                  else BottleneckClassifier(tiny("late"), {"label": 3}, bottleneck=BottleneckConfig(2, 1)))
    own = {k: v.clone() for k, v in classifier.state_dict().items()}
    report = initialise(classifier, ModelInitConfig(kind="avmae", path=str(tmp_path),
                                                    audio_patch_embedding=audio_patch_embedding))
    after, pretrained = classifier.state_dict(), pretraining.state_dict()
    fresh = ["tokenizer.audio_embed.bias", "tokenizer.audio_embed.weight"]
    expected_fresh = fresh if audio_patch_embedding == "fresh" else []
    assert report.get("left_at_initialisation", []) == expected_fresh
    for key in fresh:
        assert torch.equal(after[key], own[key] if audio_patch_embedding == "fresh" else pretrained[key])
        assert not torch.equal(own[key], pretrained[key])
    assert torch.equal(after["tokenizer.video_embed.weight"], pretrained["tokenizer.video_embed.weight"])
    assert report["missing"] == []  # the checkpoint has them: they are left out, not lacking


def test_fresh_is_refused_outside_fine_tuning_from_an_avmae_export():
    config = RunConfig(task="pretrain", init=ModelInitConfig(kind="avmae", path="x", audio_patch_embedding="fresh"))
    config.data.shards = "/data/x"
    with pytest.raises(ConfigError, match="init.audio_patch_embedding: fresh is Scenic's pretrain-to-fine-tune"):
        config.validate()
