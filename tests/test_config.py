"""Typed configs: YAML + dotted overrides, unknown keys named with the nearest valid one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
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


def test_a_mapping_override_merges_into_its_section(tmp_path):
    """`--set 'optimizer={lr: ...}'` changes the rate and keeps what the file set beside it (replaced whole, the
    section's other keys fell back to their defaults without a word)."""
    path = tmp_path / "exp.yaml"
    path.write_text("optimizer:\n  lr: 2.0e-4\n  betas: [0.8, 0.9]\nsteps: 50\n")
    config = load(Experiment, path, ["optimizer={lr: 1.0e-4}"])
    assert config.optimizer == Optimizer(lr=1e-4, betas=(0.8, 0.9)) and config.steps == 50
    assert load(Experiment, path, ["optimizer.betas=[0.5]"]).optimizer.betas == (0.5,)  # a list is replaced whole


def test_wrong_types_and_choices_are_errors():
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        load(Experiment, None, ["steps=many"])
    with pytest.raises(ConfigError, match=r"fusion: 'joint' is not one of \['early', 'mid', 'late'\]"):
        load(Experiment, None, ["fusion=joint"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        apply_overrides({}, ["steps"])


def test_numbers_written_without_a_dot_are_numbers():
    # YAML 1.1 reads 5e-5 and 1e3 as strings; avmae-train --help shows --set optim.lr=5e-5
    config = load(Experiment, None, ["optimizer.lr=5e-5", "steps=1e3"])
    assert config.optimizer.lr == 5e-5 and config.steps == 1000 and isinstance(config.steps, int)
    assert load(Experiment, None, ["steps=20.0"]).steps == 20
    with pytest.raises(ConfigError, match=r"steps: expected an integer, got '2.5e0'"):
        load(Experiment, None, ["steps=2.5e0"])
    with pytest.raises(ConfigError, match=r"optimizer.lr: expected a number, got 'fast'"):
        load(Experiment, None, ["optimizer.lr=fast"])
    with pytest.raises(ConfigError, match=r"optimizer.lr: expected a number, got 'nan'"):
        load(Experiment, None, ["optimizer.lr=nan"])


def test_yaml_syntax_errors_name_the_file_and_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: big\noptimizer: {lr: 1.0e-3\nsteps: 3\n")
    with pytest.raises(ConfigError, match=rf"^{path}:\d+:\d+: YAML syntax error: "):
        load(Experiment, path)
    with pytest.raises(ConfigError, match=r"override 'optimizer.betas=\[0.9,': the value is not valid YAML"):
        load(Experiment, None, ["optimizer.betas=[0.9,"])
    with pytest.raises(ConfigError, match=r"cannot read the config"):
        load(Experiment, tmp_path)


# --- avmae-train: a bad config is one line naming the key (or the file and line), exit code 2 -------------------------

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo_pretrain.yaml"


def _train_error(capsys, *args: str) -> str:
    from avmae.cli.train import main

    assert main(["--config", str(DEMO), *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err  # one line, no traceback
    return err.strip()


@pytest.mark.parametrize("override, message", [
    ("checkpoint.every=0", "checkpoint.every must be at least 1, got 0"),
    ("log.every=0", "log.every must be at least 1, got 0"),
    ("data.batch_size=0", "data.batch_size must be at least 1, got 0"),
    ("data.workers=-1", "data.workers must be at least 0, got -1"),
    ("finetune.eval_every=-5", "finetune.eval_every must be at least 0, got -5"),
    ("optim.warmup_steps=-1", "optim.warmup_steps must be at least 0, got -1"),
    ("model.video.tubelet=0", "model.video.tubelet must be at least 1, got 0"),
    ("model.decoder.heads=0", "model.decoder.heads must be at least 1, got 0"),
    ("optim.steps=2.5", "optim.steps: expected an integer, got 2.5"),
    ("optim.lr=fast", "optim.lr: expected a number, got 'fast'"),
])
def test_train_refuses_bad_values_in_one_line(capsys, override, message):
    line = _train_error(capsys, "--set", override)
    assert line.startswith("avmae-train: ") and line.endswith(message), line

def test_train_takes_5e_minus_5_as_a_number(capsys):
    # the lr is accepted: the error is about the other key
    line = _train_error(capsys, "--set", "optim.lr=5e-5", "--set", "checkpoint.every=0")
    assert "checkpoint.every must be at least 1" in line and "optim.lr" not in line


def test_train_names_the_file_and_line_of_a_yaml_error(capsys, tmp_path):
    from avmae.cli.train import main

    bad = tmp_path / "run.yaml"
    bad.write_text("task: pretrain\noptim: {steps: 3\nlog: {every: 1}\n")
    assert main(["--config", str(bad)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"avmae-train: {bad}:3:4: YAML syntax error: expected ',' or '}}', but got ':'")


# --- composition: a file names its base and states only what differs ----------------------------------------------------

def _write(path, text: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_a_recipe_extends_its_base_and_a_section_extends_a_file(tmp_path):
    _write(tmp_path / "parts" / "optimizer.yaml", "lr: 1.0e-2\nbetas: [0.5, 0.6]\n")
    _write(tmp_path / "base.yaml", "name: base\nsteps: 5\noptimizer: {base: parts/optimizer.yaml, lr: 3.0e-3}\n")
    _write(tmp_path / "runs" / "mid.yaml", "base: ../base.yaml\nfusion: late\n")  # relative to the file naming it
    leaf = _write(tmp_path / "runs" / "leaf.yaml", "base: mid.yaml\nname: leaf\noptimizer: {betas: [0.1, 0.2]}\n")
    # chained bases; sections merge key by key; lists are replaced whole; the file's own keys win; --set is last
    assert load(Experiment, leaf, ["steps=7"]) == Experiment(
        name="leaf", steps=7, fusion="late", optimizer=Optimizer(lr=3e-3, betas=(0.1, 0.2)))


def test_bad_bases_are_one_line_errors(tmp_path):
    a = _write(tmp_path / "a.yaml", "base: b.yaml\nsteps: 1\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"the bases form a cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load(Experiment, a)
    missing = _write(tmp_path / "m.yaml", "optimizer: {base: nowhere.yaml}\n")
    with pytest.raises(ConfigError, match=r"m.yaml: optimizer.base: no such file .*nowhere.yaml"):
        load(Experiment, missing)
    not_a_name = _write(tmp_path / "n.yaml", "base: [a.yaml]\n")
    with pytest.raises(ConfigError, match=r"n.yaml: base must name a YAML file"):
        load(Experiment, not_a_name)
    # an unknown key in a base is still an error naming the nearest valid key
    _write(tmp_path / "typo.yaml", "optimizer: {lrr: 1}\n")
    child = _write(tmp_path / "child.yaml", "base: typo.yaml\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'optimizer.lrr'; did you mean 'lr'"):
        load(Experiment, child)


def test_train_needs_a_path_for_its_starting_weights(capsys):
    line = _train_error(capsys, "--set", "init.kind=avmae")
    assert line.endswith("init.kind avmae needs init.path (the file or run folder to start from)"), line
    line = _train_error(capsys, "--set", "finetune.init=runs/pt")  # the old knob: gone, with where it went
    assert "config key 'finetune.init' has moved: use the top-level init:" in line, line


def test_the_clip_geometry_follows_the_model_and_other_values_are_refused(capsys):
    from avmae.recipe.config import RunConfig

    config = load(RunConfig, DEMO, ["model.video.frames=4", "model.video.size=64"]).validate()
    assert (config.data.num_frames, config.data.crop_size) == (4, 64)  # the loader feeds the model's grid
    line = _train_error(capsys, "--set", "data.num_frames=4")  # the demo's model takes 8 frames
    assert line.endswith("data.num_frames is 4 but model.video.frames is 8: the loader follows the model; "
                         "leave data.num_frames unset or equal"), line
    line = _train_error(capsys, "--set", "data.crop_size=64")
    assert "data.crop_size is 64 but model.video.size is 96" in line, line
    on_purpose = load(RunConfig, DEMO, ["data.num_frames=4", "model.other_grids=true"]).validate()
    assert (on_purpose.data.num_frames, on_purpose.model.video.frames) == (4, 8)  # a study at another clip length


def test_augmentation_is_its_own_section_and_saved_configs_read_in_todays_keys():
    from avmae.recipe.config import RunConfig
    from avmae.recipe.saved import read_saved_run_config

    config = load(RunConfig, DEMO, ["augment.mixup=0.25"])
    assert config.augment.mixup == 0.25 and not hasattr(config.data, "mixup")
    with pytest.raises(ConfigError, match=r"'data.mixup' has moved: use augment.mixup"):  # stated where it lives
        load(RunConfig, DEMO, ["data.mixup=0.25"])
    # an export or run folder written before the move still describes the same run
    saved = read_saved_run_config({"data": {"shards": "s", "mixup": 0.5, "crop_scale": [0.5, 1.0], "flip": False}})
    assert (saved.augment.mixup, saved.augment.crop_scale, saved.augment.flip) == (0.5, (0.5, 1.0), False)
    assert saved.data.shards == "s"


def test_the_old_starting_weight_keys_point_to_init_and_saved_ones_are_moved_there():
    from avmae.recipe.config import RunConfig
    from avmae.recipe.saved import read_saved_run_config

    with pytest.raises(ConfigError, match=r"'finetune.init' has moved: use the top-level init: \{kind: avmae"):
        load(RunConfig, DEMO, ["finetune.init=runs/pretrain"])
    with pytest.raises(ConfigError, match=r"'model_init' has moved: use init: "):
        load(RunConfig, DEMO, ["model_init.kind=vit"])
    with pytest.raises(ConfigError, match=r"unknown config key 'finetune.los'; did you mean 'loss'"):
        load(RunConfig, DEMO, ["finetune.los=ce"])  # not a moved key: the nearest one, as before
    saved = read_saved_run_config({"task": "finetune", "finetune": {"init": "runs/pretrain", "loss": "ce"}})
    assert (saved.init.kind, saved.init.path, saved.finetune.loss) == ("avmae", "runs/pretrain", "ce")
    saved = read_saved_run_config({"model_init": {"kind": "vit", "path": "vit.pth", "video_inflation": "central"}})
    assert (saved.init.kind, saved.init.path, saved.init.video_inflation) == ("vit", "vit.pth", "central")
    assert read_saved_run_config({"finetune": {"init": ""}}).init.kind == "none"


def test_evaluation_takes_no_augmentation():
    from avmae.data.config import AugmentConfig, DataConfig
    from avmae.data.loader import Loader

    with pytest.raises(ValueError, match="evaluation takes no augmentation"):  # refused before any shard is read
        Loader(None, DataConfig(), train=False, augment=AugmentConfig())


def test_zero_buckets_follow_one_key_and_default_to_a_tenth_of_deepspeeds_sizes():
    from avmae.recipe.config import RunConfig
    from avmae.train.engine import deepspeed_config

    default = deepspeed_config(load(RunConfig, DEMO).validate(), bf16=False)["zero_optimization"]
    # 5e7 (DeepSpeed's own default is 5e8, 84 % of ViT-L: one bucket could not overlap the backward)
    assert (default["reduce_bucket_size"], default["allgather_bucket_size"], default["stage3_max_live_parameters"],
            default["stage3_prefetch_bucket_size"]) == (50_000_000, 50_000_000, 100_000_000, 5_000_000)
    large = deepspeed_config(load(RunConfig, DEMO, ["zero_bucket_elements=5e8"]).validate(), bf16=False)
    assert large["zero_optimization"]["reduce_bucket_size"] == 500_000_000
    assert large["zero_optimization"]["stage3_max_live_parameters"] == 1_000_000_000
    with pytest.raises(ConfigError, match="zero_bucket_elements must be at least 1000000"):
        load(RunConfig, DEMO, ["zero_bucket_elements=1000"]).validate()



def test_mixup_settings_are_checked_when_the_config_is_read():
    from avmae.recipe.config import RunConfig

    finetune = Path(__file__).resolve().parents[1] / "configs" / "demo_finetune.yaml"
    base = ["data.shards=/tmp/shards", "augment.mixup=1.0"]
    with pytest.raises(ConfigError, match="augment.mixup_alpha must be above 0"):
        load(RunConfig, finetune, base + ["augment.mixup_alpha=0"]).validate()
    with pytest.raises(ConfigError, match="needs finetune.classifier: bottleneck"):
        load(RunConfig, finetune, base + ["augment.mixup_per_modality=true", "finetune.classifier=pooled"]).validate()
    with pytest.raises(ConfigError, match="augment.freq_masks"):
        load(RunConfig, finetune, base + ["augment.freq_masks=-1"]).validate()
    load(RunConfig, finetune, base + ["augment.mixup_per_modality=true", "finetune.classifier=bottleneck",
                                      "model.encoder.fusion=late"]).validate()
