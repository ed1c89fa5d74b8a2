"""Typed configs: YAML + dotted overrides, unknown keys named with the nearest valid one."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from avmae.config import ConfigError, apply_overrides, dump, load, to_dict


@dataclass
class Optimizer:
    lr: float = 1e-3
    betas: tuple[float, ...] = (0.9, 0.95)


@dataclass
class Experiment:
    name: str = "run"
    steps: int = 10
    fusion: Literal["early", "mid", "late"] = "mid"
    optimizer: Optimizer = field(default_factory=Optimizer)
    resume: str | None = None


def test_yaml_and_overrides_round_trip(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("name: big\noptimizer:\n  lr: 2.0e-4\n")
    config = load(Experiment, path, ["steps=50", "optimizer.betas=[0.9, 0.999]", "resume=null"])
    assert config == Experiment(name="big", steps=50, optimizer=Optimizer(lr=2e-4, betas=(0.9, 0.999)))
    dump(config, tmp_path / "resolved.yaml")
    assert load(Experiment, tmp_path / "resolved.yaml") == config
    assert to_dict(config)["optimizer"] == {"lr": 2e-4, "betas": [0.9, 0.999]}


def test_unknown_key_names_the_nearest_valid_one(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'optimizer.lrr'; did you mean 'lr'"):
        load(Experiment, None, ["optimizer.lrr=1"])
    with pytest.raises(ConfigError, match="did you mean 'steps'"):
        load(Experiment, None, ["step=3"])


def test_wrong_types_and_choices_are_errors():
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        load(Experiment, None, ["steps=many"])
    with pytest.raises(ConfigError, match=r"fusion: 'joint' is not one of \['early', 'mid', 'late'\]"):
        load(Experiment, None, ["fusion=joint"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        apply_overrides({}, ["steps"])
