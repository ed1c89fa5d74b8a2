"""Faults met by the evaluation stage: a tar cut in half is counted, not silently skipped; a pickle from elsewhere
never runs; bad paths and files end in one line with exit code 2. The export is written straight from the tiny model
(no training: what is under test is the evaluation, not the weights)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from avmae.cli.convert import main as convert_main
from avmae.cli.eval import main as eval_main
from avmae.config import load
from avmae.data.spec import load_spec
from avmae.eval.predictions import Predictions, task_metrics
from avmae.export.format import write_export
from avmae.export.load import model_for
from avmae.recipe.config import RunConfig
from avmae.shard.format import LabelMode
from tests.helpers import initialised_export, run_config


@pytest.fixture(scope="module")
def export(shards, tmp_path_factory) -> Path:
    """A classifier export of the tiny model for the single-label shards (weights as initialised)."""
    return initialised_export(tmp_path_factory.mktemp("export"), shards)


@pytest.fixture(scope="module")
def cut_shards(shards, tmp_path_factory) -> tuple[Path, list[str]]:
    """A copy of the shards whose first training tar is cut in half; the keys it lists."""
    from avmae.data.tar_reader import IndexedShard

    copy = tmp_path_factory.mktemp("cut") / "shards"
    shutil.copytree(shards, copy)
    first = load_spec(copy, "train").shards[0]
    with open(first.tar, "r+b") as handle:
        handle.truncate(os.path.getsize(first.tar) // 2)
    return copy, IndexedShard(first.tar, first.idx).keys


def _eval(*args: str, err=None) -> int:
    return eval_main([*args, "--workers", "0", "--batch-size", "4", "--json"])


def test_a_complete_split_is_counted_and_its_predictions_round_trip(export, shards, tmp_path):
    out = tmp_path / "eval"
    assert _eval("--ckpt", str(export), "--data", str(shards), "--split", "train", "--task", "vggsound",
                 "--backend", "torch", "--out", str(out)) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["coverage"] == {"split": "train", "expected": 9, "scored": 9, "missing": 0, "complete": True,
                                  "allow_missing": False, "missing_samples": []}
    saved = Predictions.load(out / "predictions.npz")
    assert saved.label_mode == LabelMode.SINGLE and saved.label_names == list(load_spec(shards, "train").label_names)
    assert len(saved) == 9 and saved.scores["label"].shape == (9, 4)
    assert task_metrics(saved)["top1"] == report["metrics"]["top1"]
    # the file keeps today's layout: a single head is stored as scores / targets
    with np.load(out / "predictions.npz") as data:
        assert np.array_equal(data["scores"], saved.scores["label"]) and str(data["label_mode"]) == "single"
    assert not list(out.glob(".*partial"))  # atomic writes leave no temporary file


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_a_tar_cut_in_half_is_counted_and_refused_unless_allowed(export, cut_shards, backend, tmp_path, capsys):
    data, cut_keys = cut_shards
    strict = tmp_path / "strict"
    code = _eval("--ckpt", str(export), "--data", str(data), "--split", "train", "--task", "vggsound",
                 "--backend", backend, "--out", str(strict))
    error = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(error) == 1 and error[0].startswith("avmae-eval: ") and "of 9 samples of split 'train'" in error[0]
    assert str(strict / "report.json") in error[0] and "--allow-missing" in error[0]
    report = json.loads((strict / "report.json").read_text())  # written before refusing: it names what is missing
    coverage = report["coverage"]
    assert coverage["expected"] == 9 and coverage["scored"] + coverage["missing"] == 9
    assert 1 <= coverage["missing"] <= len(cut_keys) and not coverage["complete"]
    missing_keys = [record["key"] for record in coverage["missing_samples"]]
    assert set(missing_keys) <= set(cut_keys) and all(record["reason"] for record in coverage["missing_samples"])
    scored = Predictions.load(strict / "predictions.npz").keys
    assert not set(scored) & set(missing_keys) and len(scored) == coverage["scored"]

    allowed = tmp_path / "allowed"
    assert _eval("--ckpt", str(export), "--data", str(data), "--split", "train", "--task", "vggsound",
                 "--backend", backend, "--out", str(allowed), "--allow-missing") == 0
    report = json.loads((allowed / "report.json").read_text())
    assert report["coverage"]["allow_missing"] is True and report["coverage"]["missing"] == coverage["missing"]
    assert report["metrics"]["samples"] == coverage["scored"]


@pytest.mark.parametrize("backend", ["torch", "dali"])
def test_the_training_skip_budget_does_not_stop_an_evaluation(export, cut_shards, backend, tmp_path):
    """A run trained with a strict budget (no bad sample in a row allowed): its evaluation still counts the cut
    tar's samples as missing, where the budget used to stop it with SkipBudgetExceeded (a large split's cut tar)."""
    import dataclasses

    from avmae.export.format import read_export

    state, info, _ = read_export(export)
    strict = dataclasses.replace(info.config, data=dataclasses.replace(info.config.data, max_skip_run=0,
                                                                        max_skip_fraction=0.0))
    strict_export = write_export(tmp_path / "strict.safetensors", state, dataclasses.replace(info, config=strict))
    data, cut_keys = cut_shards
    out = tmp_path / "eval"
    assert _eval("--ckpt", str(strict_export), "--data", str(data), "--split", "train", "--task", "vggsound",
                 "--backend", backend, "--out", str(out), "--allow-missing") == 0
    coverage = json.loads((out / "report.json").read_text())["coverage"]
    assert coverage["expected"] == 9 and 1 <= coverage["missing"] <= len(cut_keys)
    assert coverage["scored"] + coverage["missing"] == 9


def test_alone_norms_is_the_model_config_saved_with_the_report(export, shards, tmp_path):
    out = tmp_path / "alone"
    assert _eval("--ckpt", str(export), "--data", str(shards), "--split", "val", "--task", "vggsound",
                 "--modality", "audio", "--alone-norms", "averaged", "--backend", "torch", "--out", str(out)) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["alone_norms"] == "averaged" and report["config"]["model"]["alone_norms"] == "averaged"


class _Planted:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def planted(tmp_path) -> tuple[Path, Path]:
    marker = tmp_path / "code_ran"
    path = tmp_path / "cav-mae.pth"
    with open(path, "wb") as handle:
        pickle.dump({"model": _Planted(marker)}, handle)
    return path, marker


def test_a_planted_pickle_is_refused_by_avmae_convert(planted, tmp_path, capsys):
    path, marker = planted
    assert convert_main(["cavmae", "--src", str(path), "--out", str(tmp_path / "x.safetensors")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and str(path) in error[0] and "weights_only" in error[0]
    assert not marker.exists() and not (tmp_path / "x.safetensors").exists()


def test_a_planted_pickle_is_refused_as_starting_weights(planted):
    from avmae.export.init import initialise
    from avmae.models.state_dicts import CheckpointError
    from avmae.recipe.config import ModelInitConfig

    path, marker = planted
    for kind in ("vit", "cavmae"):
        with pytest.raises(CheckpointError, match="weights_only"):
            initialise(torch.nn.Linear(1, 1), ModelInitConfig(kind=kind, path=str(path)))
    assert not marker.exists()


def test_avmae_eval_refuses_a_pickle_as_checkpoint(planted, shards, capsys):
    path, marker = planted
    assert _eval("--ckpt", str(path), "--data", str(shards), "--task", "vggsound") == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and str(path) in error[0] and not marker.exists()


@pytest.mark.parametrize("case", ["text file", "missing folder", "run without export"])
def test_avmae_eval_bad_checkpoint_paths_are_one_line(case, shards, tmp_path, capsys):
    path = {"text file": tmp_path / "notes.safetensors", "missing folder": tmp_path / "nowhere",
            "run without export": tmp_path / "run"}[case]
    if case == "text file":
        path.write_text("not weights\n")
    if case == "run without export":
        path.mkdir()
    assert _eval("--ckpt", str(path), "--data", str(shards), "--task", "vggsound") == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("avmae-eval: ") and str(path) in error[0]


@pytest.mark.parametrize("content", [b"", b"this is a text file, not a checkpoint\n", b"PK\x03\x04 broken zip"])
def test_avmae_convert_on_a_file_that_is_not_a_checkpoint_is_one_line(content, tmp_path, capsys):
    path = tmp_path / "model.pth"
    path.write_bytes(content)
    assert convert_main(["cavmae", "--src", str(path), "--out", str(tmp_path / "x.safetensors")]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("avmae-convert: ") and str(path) in error[0]


def test_metrics_recomputed_from_a_file_in_the_old_layout(tmp_path, capsys):
    rng = np.random.default_rng(0)
    scores, targets = rng.random((6, 3)), np.array([0, 1, 2, 0, 1, 2])
    np.savez(tmp_path / "old.npz", scores=scores, targets=targets, keys=np.array([f"k{i}" for i in range(6)]))
    assert eval_main(["metrics", "--pred", str(tmp_path / "old.npz")]) == 2  # the label mode is unknown
    assert "give the task" in capsys.readouterr().err
    assert eval_main(["metrics", "--pred", str(tmp_path / "old.npz"), "--task", "vggsound"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["top1"] == pytest.approx(float((scores.argmax(1) == targets).mean()))


def test_fine_tuning_evaluation_counts_what_it_scored(cut_shards, tmp_path):
    from avmae.eval.during_training import SplitEvaluator

    data, _ = cut_shards
    config = load(RunConfig, run_config(tmp_path, data, task="finetune",
                                        data={"eval_split": "train", "backend": "torch"}))
    heads = {"label": len(load_spec(data, "train").label_names)}
    metrics = SplitEvaluator(config)(model_for(config, "finetune", heads).eval(), heads, rank=0, world=1,
                                     device=torch.device("cpu"), dtype=torch.float32)
    assert metrics["samples_in_split"] == 9 and metrics["samples_skipped"] >= 1
    assert metrics["samples_scored"] + metrics["samples_skipped"] == 9 == metrics["samples"] + metrics["samples_skipped"]


def test_a_rank_whose_every_evaluation_sample_is_bad_stops_naming_its_shards(shards, tmp_path):
    """Evaluation keeps bad samples in place (valid=False) with a good one as filler; a rank with none good has no
    filler and stops with one line naming its shards."""
    from avmae.data.config import DataConfig
    from avmae.data.faults import SkipBudgetExceeded
    from avmae.data.loader import build_loader
    from avmae.shard.format import LOGMEL_MEMBER
    from tests.faults.damage import flip_every_sample

    copy = Path(shutil.copytree(shards, tmp_path / "shards"))
    tars = sorted(copy.glob("val-*.tar"))
    assert tars
    flip_every_sample(tars, LOGMEL_MEMBER)
    config = DataConfig(shards=str(copy), eval_split="val", batch_size=2, workers=0, num_frames=4, crop_size=64,
                        max_skip_fraction=1.0, max_skip_run=1000)
    with pytest.raises(SkipBudgetExceeded, match=r"every one of the \d+ samples of its evaluation range is bad") as err:
        next(iter(build_loader(config, "val", train=False)))
    assert all(tar.name in str(err.value) for tar in tars[:3])
