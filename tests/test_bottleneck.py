"""MBT bottleneck fine-tuning (AV-MAE's fine-tuning model): cross-modal information flows only through the
bottleneck tokens and only from the fusion layer on; logits are the mean of the modalities'; a mid-fusion
checkpoint loads with its joint layers copied into both encoders."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from avmae.cli.eval import main as eval_main
from avmae.export.load import load_model
from avmae.models.avmae import AVMAE
from avmae.models.bottleneck import BottleneckClassifier, mid_to_separate
from avmae.models.config import BottleneckConfig
from avmae.models.encoder import FusionEncoder
from tests.helpers import TINY_MODEL, metrics, run_config, torchrun
from tests.tiny_models import inputs, tiny


def late(config):
    return dataclasses.replace(config, encoder=dataclasses.replace(config.encoder, fusion="late"))


def mbt(tokens=2, fusion_layer=1, **kwargs) -> BottleneckClassifier:
    torch.manual_seed(0)
    model = BottleneckClassifier(late(tiny()), {"label": 5}, bottleneck=BottleneckConfig(tokens, fusion_layer), **kwargs)
    for head in model.heads.values():  # zero-initialised heads would make every logit 0
        torch.nn.init.normal_(head.weight, std=0.1)
    return model.eval()


def test_logits_are_the_mean_of_the_modalities_logits():
    model = mbt()
    audio, video = inputs()
    per = model(audio, video, per_modality=True)
    assert set(per) == {"audio", "video"} and per["audio"]["label"].shape == (2, 5)
    assert torch.allclose(model(audio, video)["label"], (per["audio"]["label"] + per["video"]["label"]) / 2)
    assert model.features(audio, video).shape == (2, 32)


def test_modalities_meet_only_through_the_bottleneck():
    audio, video = inputs()
    other_video = inputs(seed=1)[1]
    fused = mbt(tokens=2)
    a = fused(audio, video, per_modality=True)["audio"]["label"]
    b = fused(audio, other_video, per_modality=True)["audio"]["label"]
    assert not torch.allclose(a, b, atol=1e-4)  # the video reaches the audio logits
    isolated = mbt(tokens=0)
    a = isolated(audio, video, per_modality=True)["audio"]["label"]
    b = isolated(audio, other_video, per_modality=True)["audio"]["label"]
    assert torch.allclose(a, b)  # no bottleneck, no path
    # An audio-only input runs the same blocks, its bottleneck tokens shared with no other modality.
    alone = fused(audio=audio)["label"]
    assert alone.shape == (2, 5) and not torch.allclose(alone, fused(audio, video)["label"])


def test_a_mid_fusion_checkpoint_becomes_two_encoders():
    config = tiny(fusion="mid")  # 3 layers: 2 per modality + 1 joint
    torch.manual_seed(1)
    pretrained = AVMAE(config)
    state = {f"module.{k}": v for k, v in pretrained.state_dict().items()}
    converted, dropped = mid_to_separate({k.removeprefix("module."): v for k, v in state.items()}, depth=3)
    joint_qkv = state["module.encoder.joint.blocks.0.attn.qkv.weight"]
    assert torch.equal(converted["encoder.audio.blocks.2.attn.qkv.weight"], joint_qkv)
    assert torch.equal(converted["encoder.video.blocks.2.attn.qkv.weight"], joint_qkv)
    assert torch.equal(converted["encoder.video.norm.weight"], state["module.encoder.joint.norm.weight"])
    assert not any(k.startswith("encoder.joint.") for k in converted)
    assert sorted(dropped) == [f"encoder.{m}.norm.{p}" for m in ("audio", "video") for p in ("bias", "weight")]

    model = mbt(tokens=2, fusion_layer=2)
    report = model.load_pretrained(state)
    assert report["missing"] == [] and report["unexpected"] == [] and report["converted"]
    assert "encoder.audio.norm.weight" in report["skipped"]
    # Each converted encoder runs the modality's own layers, then the joint layers on that modality alone.
    audio, _ = inputs()
    tokens = model.tokenizer.audio(audio)[0]
    mid = FusionEncoder(config).eval()
    mid.load_state_dict({k.removeprefix("encoder."): v for k, v in pretrained.state_dict().items()
                         if k.startswith("encoder.")})
    expected = tokens
    for block in [*mid.audio.blocks, *mid.joint.blocks]:
        expected = block(expected)
    assert torch.allclose(model.encoder.audio(tokens), mid.joint.norm(expected), atol=1e-5)


def test_fine_tuning_needs_separate_encoders_and_a_valid_fusion_layer():
    with pytest.raises(ValueError, match="fusion late"):
        BottleneckClassifier(tiny(fusion="mid"), {"label": 3})
    with pytest.raises(ValueError, match="fusion_layer"):
        BottleneckClassifier(late(tiny()), {"label": 3}, bottleneck=BottleneckConfig(4, 4))


def test_a_fusion_layer_at_the_depth_fuses_nothing():
    """Scenic's single-modality MBT fine-tunes: the bottleneck exists but no layer uses it."""
    audio, video = inputs()
    model = mbt(tokens=2, fusion_layer=3)
    before = model(audio, video, per_modality=True)
    with torch.no_grad():
        model.bottleneck.normal_(std=5.0)
    after = model(audio, video, per_modality=True)
    for m in ("audio", "video"):
        assert torch.equal(before[m]["label"], after[m]["label"])
    other_video = inputs(seed=1)[1]
    assert torch.equal(model(audio, other_video, per_modality=True)["audio"]["label"], before["audio"]["label"])


def test_gradients_reach_both_encoders_and_the_bottleneck():
    model = mbt().train()
    audio, video = inputs()
    per = model(audio, video, per_modality=True)
    loss = sum(torch.nn.functional.cross_entropy(p["label"], torch.tensor([0, 3])) for p in per.values()) / 2
    loss.backward()
    for name in ("bottleneck", "encoder.audio.blocks.0.attn.qkv.weight", "encoder.video.blocks.2.mlp.fc2.weight",
                 "heads.label.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


@pytest.mark.slow
def test_bottleneck_fine_tune_from_a_mid_fusion_run_then_eval(shards, tmp_path):  # noqa: F811
    """AV-MAE's recipe at tiny size: mid-fusion pretraining, MBT fine-tuning with SGD on 2 ZeRO-2 ranks, then
    avmae-eval."""
    pretrain, finetune = tmp_path / "pretrain", tmp_path / "finetune"
    pretrain.mkdir()
    finetune.mkdir()
    torchrun(run_config(pretrain, shards), processes=1)
    late = {**TINY_MODEL, "encoder": {**TINY_MODEL["encoder"], "fusion": "late"}}
    config = run_config(finetune, shards, task="finetune", model=late, data={"eval_split": "val"},
                        augment={"mixup": 0.5},
                        init={"kind": "avmae", "path": str(pretrain / "run")},
                        finetune={"loss": "ce", "classifier": "bottleneck",
                                  "bottleneck": {"tokens": 4, "fusion_layer": 1}},
                        optim={"steps": 6, "lr": 0.05, "warmup_steps": 1, "layer_decay": 0.75, "optimizer": "sgd",
                               "weight_decay": 0.0},
                        checkpoint={"every": 6, "keep": 1})
    result = torchrun(config)
    assert result["finished"] and result["best"]["metrics"]["samples"] == 3
    report = json.loads((finetune / "run" / "init_report.json").read_text())
    assert report["missing"] == [] and report["unexpected"] == [] and report["converted"]
    losses = [m["loss"] for m in metrics(finetune / "run") if "loss" in m]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    # The export loads back as the same MBT model, and avmae-eval runs it as any fine-tuned checkpoint.
    loaded = load_model(finetune / "run")
    assert isinstance(loaded.model, BottleneckClassifier) and loaded.model.bottleneck.shape == (1, 4, 64)
    out = tmp_path / "eval"
    assert eval_main(["--ckpt", str(finetune / "run"), "--data", str(shards), "--split", "val", "--task",
                      "vggsound", "--out", str(out), "--workers", "0", "--json", "--batch-size", "4"]) == 0
    metrics_out = json.loads((out / "report.json").read_text())["metrics"]
    assert metrics_out["samples"] == 3 and 0.0 <= metrics_out["top1"] <= 1.0


def test_avmae_bce_sums_over_classes_where_cavmae_averages():
    from avmae.train.losses import finetune_loss

    logits = {"label": torch.randn(4, 7)}
    targets = {"label": (torch.rand(4, 7) > 0.5).float()}
    mean = finetune_loss(logits, targets, "bce", label_smoothing=0.3)
    summed = finetune_loss(logits, targets, "bce_sum", label_smoothing=0.3)
    assert summed == pytest.approx(7 * float(mean), rel=1e-5)
    # AV-MAE's smoothing 0.3 (scenic/projects/av_mae/configs/audioset/finetune.py): positives 1 - 0.3 + 0.3 / C, negatives 0.3 / C
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits["label"], targets["label"] * 0.7 + 0.3 / 7, reduction="none").sum(-1).mean()
    assert summed == pytest.approx(float(expected), rel=1e-5)


def test_the_audioset_recipe_builds_mbt_large_with_607m_parameters():
    from avmae.config import load
    from avmae.export.load import model_for
    from avmae.recipe.config import RunConfig

    config = load(RunConfig, Path(__file__).resolve().parents[1] / "configs/avmae_mbt_audioset.yaml").validate()
    with torch.device("meta"):  # shapes only
        model = model_for(config, "finetune", {"label": 527})
    assert isinstance(model, BottleneckClassifier)
    # MBT-L fine-tune, 2 x 24 layers, A+V: about 607 M
    assert sum(p.numel() for p in model.parameters()) / 1e6 == pytest.approx(607.0, abs=0.5)
