"""``avmae-convert``'s import options are declared once, by ``ScenicOptions`` and ``CavmaeOptions``: each field is a
flag with the field's default, the flags parse back to the options the library takes, the strategy choices are the
export code's names, and ``--help`` stays free of torch."""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from avmae.cli.convert import _parser
from avmae.cli.flags import dashed, from_args
from avmae.export.cavmae_options import CavmaeOptions
from avmae.export.scenic_options import ScenicOptions
from avmae.shard.format import LabelMode

MINIMAL = {"scenic": ["scenic", "ck", "--out", "o"], "cavmae": ["cavmae", "--src", "s.pth", "--out", "o.safetensors"]}
OPTIONS = {"scenic": ScenicOptions, "cavmae": CavmaeOptions}


def _subparser(system: str) -> argparse.ArgumentParser:
    commands = next(action for action in _parser()._actions if isinstance(action, argparse._SubParsersAction))
    return commands.choices[system]


def _flag(system: str, name: str) -> argparse.Action:
    return next(action for action in _subparser(system)._actions if action.dest == name)


@pytest.mark.parametrize("system", ["scenic", "cavmae"])
def test_each_option_is_a_flag_with_its_default(system):
    options = OPTIONS[system]
    for item in dataclasses.fields(options):
        action = _flag(system, item.name)
        assert action.option_strings == [dashed(item.name)] and not action.required
        assert action.default == item.default, item.name
    assert from_args(options, _parser().parse_args(MINIMAL[system])) == options()


def test_every_scenic_flag_parses_to_the_options():
    argv = MINIMAL["scenic"] + ["--fusion-layer", "7", "--label-mode", "single", "--encoder-strategy", "same_encoder",
                                "--decoder-strategy", "concat_and_decode", "--inpainting", "--labels", "l.csv"]
    expected = ScenicOptions(fusion_layer=7, label_mode="single", encoder_strategy="same_encoder",
                             decoder_strategy="concat_and_decode", inpainting=True)
    assert all(getattr(expected, item.name) != item.default for item in dataclasses.fields(ScenicOptions))
    args = _parser().parse_args(argv)
    assert from_args(ScenicOptions, args) == expected
    assert (args.labels, args.set) == (Path("l.csv"), [])  # not an option: convert_scenic's own argument


def test_every_cavmae_flag_parses_to_the_options():
    argv = MINIMAL["cavmae"] + ["--config", "c.yaml", "--label-mode", "multi", "--set", "seed=3"]
    expected = CavmaeOptions(config=Path("c.yaml"), label_mode="multi")
    assert all(getattr(expected, item.name) != item.default for item in dataclasses.fields(CavmaeOptions))
    args = _parser().parse_args(argv)
    assert from_args(CavmaeOptions, args) == expected
    assert args.set == ["seed=3"]


def test_choices_are_the_export_codes_names():
    from avmae.export.scenic_mae import DECODER_STRATEGIES, ENCODER_STRATEGIES

    assert _flag("scenic", "encoder_strategy").choices == list(ENCODER_STRATEGIES) == [
        "separate_encoders_and_concat", "separate_encoders", "concat_and_encode", "same_encoder"]
    assert _flag("scenic", "decoder_strategy").choices == list(DECODER_STRATEGIES) == [
        "same_decoder", "separate_decoders", "concat_and_decode"]
    for system in ("scenic", "cavmae"):
        assert _flag(system, "label_mode").choices == [LabelMode.MULTI.value, LabelMode.SINGLE.value]


def test_help_names_the_flags_the_way_the_command_spells_them(capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["cavmae", "--help"])
    assert "default: as the --config's finetune.loss says" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("system", ["scenic", "cavmae"])
def test_help_does_not_import_torch(system):
    code = ("import sys\nfrom avmae.cli.convert import main\ntry:\n    main([sys.argv[1], '--help'])\n"
            "except SystemExit as stop:\n    assert stop.code == 0\nprint('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code, system], capture_output=True, text=True, check=True)
    assert "--label-mode" in done.stdout
    assert done.stdout.splitlines()[-1] == "False"
