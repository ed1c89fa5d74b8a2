"""Every recipe in configs/ runs: each is loaded as written, shrunk to a tiny model with --set overrides (sizes,
steps, paths; nothing about its method), and trained for a few steps on the synthetic corpus with avmae-train.
Recipes that start from another run (fine-tuning, MAViL stage 2) start from the tiny run of the recipe they name."""

from __future__ import annotations

import copy
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from avmae.config import load, to_dict
from avmae.models.config import BottleneckConfig
from avmae.recipe.config import RunConfig
from avmae.recipe.saved import in_todays_keys
from tests.helpers import REPO, TINY_SIZES, metrics, set_items

CONFIGS = REPO / "configs"
DEMO = {"demo_pretrain.yaml", "demo_finetune.yaml"}  # pipelines/demo.sh runs them whole (the README command)
SINGLE_LABEL_DATA = {"finetune_epic.yaml"}  # verb/noun heads: tests/test_eval.py runs Epic on Epic-style shards
# recipe -> the recipe whose run it starts from (init.path or mavil.teacher)
STARTS_FROM = {"mavil_stage2.yaml": "mavil_stage1.yaml",
               **{f"cavmae_finetune_{name}.yaml": "cavmae_pretrain.yaml" for name in ("as20k", "as2m", "vggsound")}}


def recipes() -> list[str]:
    return sorted(p.name for p in CONFIGS.glob("*.yaml") if p.name not in DEMO | SINGLE_LABEL_DATA)


def test_every_config_loads_and_validates():
    names = sorted(p.name for p in CONFIGS.glob("*.yaml"))
    assert len(names) >= 10
    for name in names:
        load(RunConfig, CONFIGS / name).validate()  # unknown keys and bad values are errors


# Every recipe as it resolved before the recipes named their bases (generated once from the commit before, 1918b70,
# with avmae.config.load + to_dict; model files as ModelConfig, and cavmae_base() of avmae/models/convert_cavmae.py).
BEFORE = json.loads((REPO / "tests" / "data" / "resolved_configs_before.json").read_text())
# The parts of a model config that only the pretraining model builds: a fine-tuning recipe whose model names a
# pretraining model file as its base now records that model's decoder, masks and losses, which its classifier never
# reads (test_a_classifier_ignores_the_pretraining_fields).
PRETRAINING_ONLY = ("decoder", "objective", "mask", "contrastive", "loss_weight_audio", "loss_weight_video",
                    "norm_pix_loss")


def renamed(before: dict) -> dict:
    """The snapshot in today's keys: finetune.init (an avmae run or export) and model_init are one ``init``; the
    augmentation keys of ``data`` are the ``augment`` section (as saved configs are read, avmae/recipe/saved.py)."""
    before = in_todays_keys(before) if "data" in before else copy.deepcopy(before)
    if "model_init" in before:
        start, init = before["model_init"], before.get("finetune", {}).pop("init", "")
        before["init"] = {**start, "kind": "avmae", "path": init} if init else start
        del before["model_init"]
    return before


# Changed on purpose since the snapshot: AV-MAE's models compute what Scenic computes, and Scenic's AV-MAE has no
# modality embeddings (docs/scenic.md). Every recipe built on an AV-MAE model file follows.
AVMAE_MODEL_FILES = ("model/avmae_vit_l_audioset.yaml", "model/avmae_vit_l_vggsound.yaml")


# Changed on purpose since the snapshot: the AV-MAE fine-tuning recipes take Scenic's augmentation (a circular time
# shift on AudioSet, several frequency masks, mixup on every batch with Beta(0.5, 0.5) and a lambda per modality) and
# its floored steps per epoch (scenic/projects/av_mae/configs/{audioset,vggsound}/finetune.py: train size // batch:
# 508,994 // 128 = 3,976 on AS-500K, 172,427 // 64 = 2,694 on VGGSound); AudioSet trains on AS-500K shards, sampled
# as they come. Their input is Scenic's: its log-mel length (1000 / 800 frames) and fixed normalisation (1.102 /
# 2.762 on AudioSet, none on VGGSound), evaluation frames resized to 256, 32-frame windows; they start from Google's
# released pretraining, converted. The keys the snapshot has, with their new values (keys added since, such as
# augment.mixup_alpha or model.audio.frontend, are not compared).
SCENIC_FINETUNE = {
    "configs/avmae_mbt_audioset.yaml": {
        "augment": {"mixup": 1.0, "freq_mask": 36},
        "data": {"shards": "/data/audioset/as500k_shards", "audio_mean": 1.102, "audio_std": 2.762,
                 "balanced_sampling": False, "eval_short_side": 256},
        "init": {"path": "runs/scenic_as_pretrain"},
        "optim": {"steps": 50 * 3976, "warmup_steps": 9940}, "checkpoint": {"every": 3976},
        "finetune": {"eval_every": 2 * 3976}},
    "configs/avmae_mbt_vggsound.yaml": {
        "augment": {"mixup": 1.0, "freq_mask": 48},
        "data": {"audio_mean": 0.0, "audio_std": 1.0, "eval_short_side": 256},
        "init": {"path": "runs/scenic_vggsound_pretrain"},
        "optim": {"steps": 50 * 2694, "warmup_steps": 6735}, "checkpoint": {"every": 2694},
        "finetune": {"eval_every": 2694}},
}
SCENIC_AUDIO_FRAMES = {"configs/avmae_mbt_audioset.yaml": 1000, "configs/avmae_mbt_vggsound.yaml": 800}


def scenic_computation(name: str, before: dict) -> dict:
    """The snapshot with the intended changes applied: where the recipe's model is an AV-MAE model file, and the
    AV-MAE fine-tuning recipes' Scenic augmentation and steps."""
    if name.startswith("configs/model/avmae_vit_l_"):
        return {**before, "modality_embeddings": False}
    text = (REPO / name).read_text() if name.startswith("configs/") else ""
    bases = [text] + [(REPO / "configs" / b).read_text() for b in re.findall(r"^base: (\S+)", text, flags=re.M)]
    if any(model in t for t in bases for model in AVMAE_MODEL_FILES):
        before = copy.deepcopy(before)
        before["model"]["modality_embeddings"] = False
    for section, values in SCENIC_FINETUNE.get(name, {}).items():
        before = copy.deepcopy(before)
        assert set(values) <= set(before[section]), f"{name}: {section} has no {set(values) - set(before[section])}"
        before[section].update(values)
    if name in SCENIC_AUDIO_FRAMES:
        before["model"]["audio"]["frames"] = SCENIC_AUDIO_FRAMES[name]
        before["model"]["video"]["frames"] = before["data"]["num_frames"] = 32  # Scenic's 32-frame windows
    return before


def differences(before: dict, after: dict, prefix: str = "") -> list[str]:
    """Keys of ``before`` whose value changed (keys added since the snapshot are other work: not compared)."""
    out = []
    for key, old in before.items():
        new = after.get(key, "<missing>")
        if isinstance(old, dict) and isinstance(new, dict):
            out += differences(old, new, f"{prefix}{key}.")
        elif old != new:
            out.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return out


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_recipes_resolve_as_before(name):
    from avmae.models.config import ModelConfig
    from avmae.models.convert_cavmae import cavmae_base

    before = scenic_computation(name, renamed(BEFORE[name]))
    if name.startswith("cavmae_base("):
        after = to_dict(cavmae_base(finetune="finetune=True" in name))
    elif name.startswith("configs/model/"):
        after = to_dict(load(ModelConfig, REPO / name))
    else:
        after = to_dict(load(RunConfig, REPO / name).validate())  # validated: the clip geometry from the model
        if after["task"] == "finetune":
            for key in PRETRAINING_ONLY:
                before["model"].pop(key), after["model"].pop(key)
    assert differences(before, after) == [], name


def test_a_classifier_ignores_the_pretraining_fields():
    import torch

    from avmae.models.build import build_classifier
    from avmae.models.config import ModelConfig

    def classifier(model: ModelConfig, kind: str):
        torch.manual_seed(0)
        return build_classifier(model, {"label": 5}, classifier=kind, modality="av", modality_dropout=0.0,
                                bottleneck=BottleneckConfig(tokens=2, fusion_layer=1), seed=0).state_dict()

    tiny = load(ModelConfig, CONFIGS / "model" / "tiny.yaml")
    other = load(ModelConfig, CONFIGS / "model" / "cavmae_base.yaml")
    changed = copy.deepcopy(tiny)
    for key in PRETRAINING_ONLY:
        setattr(changed, key, copy.deepcopy(getattr(other, key)))
    assert differences(to_dict(tiny), to_dict(changed))  # the fields do differ
    for kind in ("pooled", "bottleneck"):
        if kind == "bottleneck":
            tiny.encoder.fusion = changed.encoder.fusion = "late"
        ours, theirs = classifier(tiny, kind), classifier(changed, kind)
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours), kind


def tiny_overrides(recipe: RunConfig, shards: Path, workdir: Path) -> list[str]:
    """Sizes, steps and paths only: the recipe's fusion, objective, losses, optimiser and sampling stay."""
    encoder = recipe.model.encoder
    frames = 1 if recipe.model.video.frames == 1 else 4
    tubelet = min(recipe.model.video.tubelet, frames)
    out = [*set_items(TINY_SIZES, "model"), f"model.video.frames={frames}", f"model.video.tubelet={tubelet}",
           f"data.shards={shards}", f"data.num_frames={frames}",
           "data.crop_size=64", "data.batch_size=2", "data.workers=0", "data.eval_split=val", "optim.steps=3",
           "optim.warmup_steps=1", "checkpoint.every=3", "log.every=1", "log.progress=false", f"workdir={workdir}"]
    if encoder.fusion == "mid":
        out.append("model.encoder.joint_layers=1")
    if recipe.init.kind in ("vit", "cavmae"):  # an ImageNet ViT-B does not fit the tiny model;
        out.append("init.kind=none")  # tests/test_cavmae_runs.py starts a tiny one from a tiny ViT
    if recipe.task == "finetune":
        out += ["finetune.eval_every=3", "finetune.bottleneck.fusion_layer=1", "augment.freq_mask=8",
                "augment.time_mask=20"]
    if recipe.model.audio.frontend != "cavmae":  # the test shards hold CAV-MAE's log-mels
        out.append("model.audio.frontend=cavmae")
    return out


def train(name: str, shards: Path, root: Path, runs: dict[str, Path]) -> Path:
    recipe = load(RunConfig, CONFIGS / name)
    workdir = root / name.removesuffix(".yaml")
    overrides = tiny_overrides(recipe, shards, workdir)
    if recipe.task == "finetune":
        base = STARTS_FROM.get(name, "pretrain_as2m.yaml")
        overrides += ["init.kind=avmae", f"init.path={runs.get(base) or train(base, shards, root, runs)}"]
    if recipe.mavil.teacher:
        base = STARTS_FROM[name]
        overrides.append(f"mavil.teacher={runs.get(base) or train(base, shards, root, runs)}")
    command = [sys.executable, "-m", "avmae.cli.train", "--config", str(CONFIGS / name)]
    for item in overrides:
        command += ["--set", item]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, f"{name}: {result.stderr[-3000:]}"
    assert json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])["finished"]
    runs[name] = workdir
    return workdir


@pytest.fixture(scope="module")
def runs() -> dict[str, Path]:
    return {}


@pytest.mark.slow
@pytest.mark.parametrize("name", recipes())
def test_recipe_trains_at_tiny_size(name, shards, runs, tmp_path_factory):  # noqa: F811
    workdir = runs.get(name) or train(name, shards, tmp_path_factory.mktemp("recipes"), runs)
    losses = [m["loss"] for m in metrics(workdir) if "loss" in m]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses), name
    assert (workdir / "export" / "model.safetensors").exists()
