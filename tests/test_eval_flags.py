"""avmae-eval's main command takes its flags from EvalRequest's fields (avmae/eval/request.py through
avmae/cli/flags.py): every field is a flag with the field's default, the parsed flags give the request they name,
and --help stays free of torch."""

from __future__ import annotations

import ast
import dataclasses
import re
import subprocess
import sys
from pathlib import Path

from avmae.cli.eval import _eval_parser, _request, as_flags
from avmae.cli.flags import dashed
from avmae.eval.request import EvalRequest
from avmae.recipe.config import GuardConfig

REPO = Path(__file__).resolve().parents[1]
REQUIRED = ["--ckpt", "run", "--data", "shards", "--task", "vggsound"]


def _flags_by_field() -> dict[str, object]:
    return {action.dest: action for action in _eval_parser()._actions if action.dest not in ("help", "json")}


def test_every_request_field_is_a_flag_with_the_fields_default():
    flags = _flags_by_field()
    fields = {item.name: item for item in dataclasses.fields(EvalRequest)}
    assert set(flags) == set(fields)
    for name, item in fields.items():
        action = flags[name]
        assert action.option_strings == [dashed(name)], name
        if item.default is dataclasses.MISSING:
            assert action.required, name
        else:
            assert not action.required and action.default == item.default, (name, action.default, item.default)
    assert [name for name, action in flags.items() if action.required] == ["ckpt", "data", "task"]


def test_the_choices_are_those_of_the_request():
    flags = _flags_by_field()
    assert flags["task"].choices == ["audioset", "vggsound", "epic", "retrieval"]
    assert flags["backend"].choices == ["auto", "dali", "torch", "webdataset"]
    assert flags["modality"].choices == ["av", "audio", "video"] and flags["modality"].default is None
    assert flags["device"].choices == ["cpu", "cuda"] and flags["device"].default is None
    assert flags["weights"].choices == ["model", "best", "averaged"]


def test_every_flag_given_makes_the_request_it_names():
    argv = ["--ckpt", "run", "--weights", "best", "--data", "s3://b/shards", "--split", "val", "--task", "audioset",
            "--modality", "audio", "--alone-norms", "averaged", "--views", "4", "--view-average", "logits",
            "--linear-probe", "--train-split", "tr", "--out", "o/ut", "--batch-size", "8", "--workers", "0",
            "--backend", "dali", "--device", "cpu", "--allow-missing", "--ids", "ids.txt",
            "--collective-timeout-s", "12.5", "--json"]
    args = _eval_parser().parse_args(argv)
    assert args.json
    assert _request(args) == EvalRequest(
        ckpt="run", data="s3://b/shards", task="audioset", split="val", weights="best", modality="audio",
        alone_norms="averaged", views=4, view_average="logits", linear_probe=True, train_split="tr",
        out=Path("o/ut"), batch_size=8, workers=0, backend="dali", device="cpu", allow_missing=True, ids="ids.txt",
        collective_timeout_s=12.5)


def test_the_required_flags_alone_give_the_requests_defaults():
    assert _request(_eval_parser().parse_args(REQUIRED)) == EvalRequest("run", "shards", "vggsound")


def test_webdataset_stays_the_torch_backends_older_name():
    args = _eval_parser().parse_args([*REQUIRED, "--backend", "webdataset"])
    assert _request(args).backend == "webdataset"


def test_the_collective_timeout_default_is_trainings():
    assert EvalRequest("run", "shards", "vggsound").collective_timeout_s == GuardConfig.collective_timeout_s
    assert _flags_by_field()["collective_timeout_s"].default == GuardConfig.collective_timeout_s


def _help_in_a_fresh_process() -> tuple[str, list[str]]:
    """``avmae-eval --help``'s text, and the torch modules loaded by the time it was printed."""
    script = ("import runpy, sys\nsys.argv = ['avmae-eval', '--help']\ntry:\n"
              "    runpy.run_module('avmae.cli.eval', run_name='__main__')\nexcept SystemExit:\n    pass\n"
              "print('TORCH:', sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n")
    shown = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, check=True).stdout
    text, _, loaded = shown.rpartition("TORCH: ")
    return text, ast.literal_eval(loaded)


def test_help_names_every_flag_and_loads_no_torch():
    text, torch_modules = _help_in_a_fresh_process()
    for action in _eval_parser()._actions:
        for flag in action.option_strings:
            assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), flag
    assert "as training's guard.collective_timeout_s" in " ".join(text.split())
    assert "examples:\n  avmae-eval --ckpt" in text  # the epilog keeps its lines
    assert torch_modules == []


def test_library_messages_name_the_flags():
    shown = as_flags("collective_timeout_s must be more than 0, got 0")
    assert shown == "--collective-timeout-s must be more than 0, got 0"
    assert as_flags("no split test in shards/train_split.json") == "no split test in shards/train_split.json"
