"""Flags declared by dataclass fields (avmae/cli/flags.py), and avmae-shard build's flags made that way."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from avmae.cli import shard as shard_cli
from avmae.cli.flags import add_fields, field_values, flag_fields, from_args
from avmae.shard.inputs.collect import InputSpec
from avmae.shard.inputs.lists import EPIC_NOUN_CLASSES, EPIC_VERB_CLASSES, read_list
from avmae.shard.params import BuildParams, FeatureParams


@dataclass(frozen=True)
class Toy:
    name: str = field(metadata={"help": "a required name"})
    size: int = field(default=3, metadata={"help": "how big, 100% at most; see `mode`"})
    mode: Literal["a", "b"] = field(default="a", metadata={"help": "which mode"})
    where: Path | None = field(default=None, metadata={"help": "a folder"})
    either: Path | str | None = field(default=None, metadata={"help": "a folder or a URL"})
    loud: bool = field(default=False, metadata={"help": "say more"})
    count: int = field(default_factory=lambda: 7, metadata={"help": "made when the parser is"})
    hidden: float = 0.5  # no help: no flag


def _toy_parser(**options) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="toy")
    add_fields(parser, Toy, **options)
    return parser


def test_a_field_gives_its_flag_name_type_choices_and_default():
    args = _toy_parser().parse_args(["--name", "x", "--mode", "b", "--where", "d", "--either", "s3://b/p", "--loud"])
    assert from_args(Toy, args) == Toy(name="x", size=3, mode="b", where=Path("d"), either="s3://b/p", loud=True,
                                       count=7)
    assert not hasattr(args, "hidden")
    assert [item.name for item in flag_fields(Toy)] == ["name", "size", "mode", "where", "either", "loud", "count"]


def test_flags_refuse_what_the_field_does_not_take(capsys):
    with pytest.raises(SystemExit):
        _toy_parser().parse_args(["--size", "3"])  # --name is required
    with pytest.raises(SystemExit):
        _toy_parser().parse_args(["--name", "x", "--mode", "c"])
    with pytest.raises(SystemExit):
        _toy_parser().parse_args(["--name", "x", "--size", "big"])
    assert "invalid int value: 'big'" in capsys.readouterr().err


def test_the_help_shows_set_defaults_and_spells_mentioned_parameters():
    text = _toy_parser(spell=lambda name: "--" + name.upper()).format_help()
    assert "how big, 100% at most; see --MODE (default: 3)" in " ".join(text.split())
    assert "a folder (default" not in text  # a None default is not shown
    assert "say more (default" not in text


def test_a_default_worked_out_later_is_none_with_its_text_shown():
    parser = _toy_parser(defaults_shown={"size": "3, or 4 with --mode b"})
    assert parser.parse_args(["--name", "x"]).size is None
    assert "(default: 3, or 4 with --mode b)" in " ".join(parser.format_help().split())


def test_a_switch_that_defaults_to_true_is_refused():
    @dataclass
    class On:
        on: bool = field(default=True, metadata={"help": "on"})

    with pytest.raises(TypeError, match="on: a switch must default to False"):
        add_fields(argparse.ArgumentParser(), On)


def _build_args(*argv: str) -> argparse.Namespace:
    return shard_cli._build_parser().parse_args(["build", "--out", "out", *argv])


def test_shard_build_flags_default_to_the_dataclasses_defaults():
    args = _build_args()
    assert from_args(InputSpec, args) == InputSpec()
    assert from_args(BuildParams, args) == BuildParams()
    assert shard_cli._feature_params(args, cavmae_prepared=False) == FeatureParams()
    assert shard_cli._feature_params(_build_args("--audio-frontend", "scenic"), False) == \
        FeatureParams.for_frontend("scenic")
    prepared = shard_cli._feature_params(args, cavmae_prepared=True)
    assert (prepared.num_frames, prepared.short_side) == (10, 224)
    given = shard_cli._feature_params(_build_args("--num-frames", "4"), cavmae_prepared=True)
    assert (given.num_frames, given.short_side) == (4, 224)


def test_every_build_parameter_with_help_is_a_flag_of_its_own_name(capsys):
    with pytest.raises(SystemExit):
        shard_cli.main(["build", "--help"])
    usage = capsys.readouterr().out
    for params in (InputSpec, FeatureParams, BuildParams, shard_cli.BuildRun):
        for item in flag_fields(params):
            assert f"[{shard_cli.flag(item.name)}" in usage or f" {shard_cli.flag(item.name)} " in usage, item.name
    assert "--list LIST " in usage and "--num-verbs NUM_VERBS" in usage and "--no-progress" in usage
    given = _build_args("--segment-seconds", "4", "--list", "l.csv", "--num-nouns", "5")
    assert field_values(BuildParams, given)["segment_seconds"] == 4.0
    assert from_args(InputSpec, given) == InputSpec(list_path=Path("l.csv"), num_nouns=5)


def test_the_epic_kitchens_class_counts_have_one_home(tmp_path):
    assert (InputSpec().num_verbs, InputSpec().num_nouns) == (EPIC_VERB_CLASSES, EPIC_NOUN_CLASSES) == (97, 300)
    epic = tmp_path / "epic.csv"
    epic.write_text("narration_id,video_id,start_timestamp,stop_timestamp,verb_class,noun_class\n"
                    "P01_01_0,P01_01,00:00:01.00,00:00:02.00,96,299\n")
    _, items, labels = read_list(epic, "epic", None)
    assert dict(labels.heads) == {"verb": 97, "noun": 300}
    assert [field.name for field in dataclasses.fields(InputSpec)].count("segment_seconds") == 0


def test_a_frame_count_below_one_is_refused_naming_the_flag(tmp_path, capsys):
    assert shard_cli.main(["build", "--src", str(tmp_path), "--out", str(tmp_path / "out"), "--num-frames", "0"]) == 2
    assert capsys.readouterr().err.strip() == "avmae-shard build: --num-frames must be at least 1, got 0"


def test_a_command_may_take_some_of_a_dataclass_flags():
    from avmae.cli import bench as bench_cli

    args = bench_cli._parser().parse_args(["shard", "--short-side", "128"])
    assert from_args(FeatureParams, args, only=bench_cli._SHARD_FEATURES) == FeatureParams(short_side=128)
    assert from_args(BuildParams, args, only=bench_cli._SHARD_BUILD) == BuildParams()
    assert not hasattr(args, "jpeg_qscale")
    with pytest.raises(TypeError, match="FeatureParams has no flag field sample_rate"):
        flag_fields(FeatureParams, only=("num_frames", "sample_rate"))
