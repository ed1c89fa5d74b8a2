"""The dataset recipes print (DRY_RUN=1) commands that use existing scripts and configs with valid overrides, and run
end to end (AVMAE_RUN=local, a tiny model) on stand-ins laid out as the real downloads."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from avmae.config import load
from avmae.recipe.config import RunConfig
from tests.recipe_standins import make_audioset, make_epic, make_vggsound

REPO = Path(__file__).resolve().parents[1]
RECIPES = {
    "audioset.sh": {"AUDIOSET_ROOT": "/data/audioset", "AS500K_LIST": "/data/as500k.csv",
                    "SCENIC_AS_PRETRAIN": "/released/av_mae/audioset/pretrain/checkpoint"},
    "vggsound.sh": {"VGGSOUND_ROOT": "/data/vgg", "PRETRAINED": "/runs/pt"},
    "epic_kitchens.sh": {"EPIC_ROOT": "/data/epic", "PRETRAINED": "/runs/pt"},
}


@pytest.mark.parametrize("mode", ["slurm", "local"])
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_commands_are_valid(recipe, mode):
    env = {**os.environ, **RECIPES[recipe], "DRY_RUN": "1", "AVMAE_RUN": mode}
    result = subprocess.run(["bash", f"pipelines/{recipe}"], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    commands = [shlex.split(line) for line in result.stdout.splitlines() if line.strip()]
    trainings = evaluations = 0
    for command in commands:
        if "--config" in command or any(part.startswith("AVMAE_CONFIG=") for part in command):
            config = next((part.split("=", 1)[1] for part in command if part.startswith("AVMAE_CONFIG=")), None)
            config = config or command[command.index("--config") + 1]
            overrides = [command[i + 1] for i, part in enumerate(command) if part == "--set"]
            load(RunConfig, REPO / config, overrides)  # raises on an unknown key or a bad value
            trainings += 1
        for part in command:
            if part.startswith(("slurm/", "configs/")):
                assert (REPO / part).exists(), part
        evaluations += "avmae.cli.eval" in command or "slurm/eval.sbatch" in command
        if mode == "local":
            assert "sbatch" not in command
    assert trainings >= 1 and evaluations >= 1


# --- the recipes run for real, on stand-ins laid out as the downloads (tests/recipe_standins.py) ----------------------

# A tiny model and a few steps (AVMAE_SET), small shard features (SHARD_ARGS): the recipes' own commands otherwise.
TINY_RUN = ("model.encoder.size=custom model.encoder.width=64 model.encoder.depth=2 model.encoder.heads=2 "
            "model.encoder.mlp=128 model.encoder.joint_layers=1 model.decoder.width=32 model.decoder.depth=1 "
            "model.decoder.heads=2 model.decoder.mlp=64 model.audio.frames=256 model.video.frames=4 model.video.size=64 "
            "data.num_frames=4 data.crop_size=64 data.batch_size=2 data.workers=0 optim.steps=4 optim.warmup_steps=1 "
            "checkpoint.every=2 finetune.eval_every=2 log.progress=false")
# A third of the videos held out (the recipes' 1-5 % of a few clips would be none).
TINY_SHARDS = "--num-frames 4 --short-side 64 --target-frames 256 --shard-size 4 --workers 1 --val-fraction 0.3"


def run_recipe(recipe: str, **env: str) -> None:
    path = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]  # avmae-shard and torchrun of this Python
    result = subprocess.run(["bash", f"pipelines/{recipe}"], cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PATH": path, "AVMAE_RUN": "local", "AVMAE_SET": TINY_RUN,
                                 "SHARD_ARGS": TINY_SHARDS, "OMP_NUM_THREADS": "1", **env})
    assert result.returncode == 0, f"{recipe} failed:\n{result.stderr[-4000:]}"


def shards_of(folder: Path) -> dict:
    manifest = json.loads((folder / "manifest.json").read_text())
    assert all((folder / shard["tar"]).exists() and (folder / shard["idx"]).exists()
               for split in manifest["splits"].values() for shard in split["shards"])
    return manifest


def finished_run(folder: Path, step: int = 4) -> None:
    assert (folder / "checkpoints" / f"step{step:08d}" / "complete.json").exists()
    assert (folder / "export" / "model.safetensors").exists()


def eval_report(folder: Path, predictions: bool = True) -> dict:
    report = json.loads((folder / "report.json").read_text())
    assert (folder / "predictions.npz").exists() == predictions  # classification saves its scores; retrieval not
    return report["metrics"]


@pytest.fixture(scope="module")
def audioset_run(tmp_path_factory) -> Path:
    """pipelines/audioset.sh end to end on the AudioSet stand-in: its pretraining run is the PRETRAINED of the others."""
    root = make_audioset(tmp_path_factory.mktemp("audioset"))
    run_recipe("audioset.sh", AUDIOSET_ROOT=str(root), OUT=str(root / "out"))
    return root / "out"


@pytest.mark.slow
def test_audioset_recipe_runs_on_a_standin(audioset_run):
    as2m = shards_of(audioset_run / "as2m")
    assert as2m["totals"]["inputs"] == 12 and as2m["totals"]["failure_reasons"] == {"missing": 1}
    assert set(as2m["splits"]) == {"train", "val"} and len(as2m["labels"]["names"]) == 3
    assert set(shards_of(audioset_run / "as20k")["splits"]) == {"train", "val"}
    assert shards_of(audioset_run / "as_eval")["splits"]["test"]["samples"] == 4
    finished_run(audioset_run / "runs" / "pretrain_as2m")
    finished_run(audioset_run / "runs" / "finetune_as20k")
    assert (audioset_run / "runs" / "finetune_as20k" / "export" / "averaged.safetensors").exists()
    metrics = eval_report(audioset_run / "eval" / "as20k_audioset")
    assert {"mAP", "mAUC", "samples", "classes"} <= set(metrics) and metrics["samples"] == 4
    retrieval = eval_report(audioset_run / "eval" / "retrieval", predictions=False)
    assert {"audio_to_video", "video_to_audio", "chance"} <= set(retrieval) and retrieval["samples"] == 4


@pytest.mark.slow
def test_vggsound_recipe_runs_on_a_standin(audioset_run, tmp_path):
    root = make_vggsound(tmp_path / "vggsound")
    run_recipe("vggsound.sh", VGGSOUND_ROOT=str(root), PRETRAINED=str(audioset_run / "runs" / "pretrain_as2m"))
    shards = shards_of(root / "avmae" / "vggsound")
    assert set(shards["splits"]) == {"train", "val", "test"} and shards["totals"]["failures"] == 0
    finished_run(root / "avmae" / "runs" / "finetune_vggsound")
    init = json.loads((root / "avmae" / "runs" / "finetune_vggsound" / "init_report.json").read_text())
    assert init["loaded"]  # the encoder came from the AudioSet stand-in's pretraining
    metrics = eval_report(root / "avmae" / "eval" / "vggsound")
    assert {"top1", "top5"} <= set(metrics) and metrics["samples"] == 3 and metrics["classes"] == 3


@pytest.mark.slow
def test_epic_kitchens_recipe_runs_on_a_standin(audioset_run, tmp_path):
    root = make_epic(tmp_path / "epic")
    run_recipe("epic_kitchens.sh", EPIC_ROOT=str(root), PRETRAINED=str(audioset_run / "runs" / "pretrain_as2m"))
    assert set(shards_of(root / "avmae" / "epic_train")["splits"]) == {"train", "val"}
    assert shards_of(root / "avmae" / "epic_val")["splits"]["test"]["samples"] == 4
    finished_run(root / "avmae" / "runs" / "finetune_epic")
    metrics = eval_report(root / "avmae" / "eval" / "epic")
    assert {"verb_top1", "noun_top1", "action_top1"} <= set(metrics) and metrics["samples"] == 4
