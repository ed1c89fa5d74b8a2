"""The dataset recipes print (DRY_RUN=1) commands that use existing scripts and configs with valid overrides."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

from avmae.config import load
from avmae.train.config import RunConfig

REPO = Path(__file__).resolve().parents[1]
RECIPES = {
    "audioset.sh": {"AUDIOSET_ROOT": "/data/audioset"},
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
