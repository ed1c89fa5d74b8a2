"""The loader's one line reaches the person, for real: a skip-budget stop inside a DataLoader worker (the recipes use
8) keeps the shards and the budget in the error and in avmae-train's stop line, not only "Caught
SkipBudgetExceeded in DataLoader worker process 0."; a checksum or index sidecar that the manifest lists but that
is gone ends avmae-train with one line naming it, not a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from avmae.data.config import DataConfig
from avmae.data.faults import SkipBudgetExceeded
from avmae.data.loader import build_loader
from avmae.data.readers import open_shards
from avmae.data.spec import load_spec
from avmae.data.torch_loader import worker_line
from tests.faults.damage import flip_every_sample
from tests.faults.test_training_faults import stop_line, train
from tests.helpers import build_shards, run_config


@pytest.fixture(scope="module")
def clean(synth_corpus, tmp_path_factory) -> Path:
    return build_shards(synth_corpus, tmp_path_factory.mktemp("stop_lines") / "shards", val_fraction="0")


@pytest.fixture(scope="module")
def all_bad(clean, tmp_path_factory) -> Path:
    """A copy in which every sample's second frame has a flipped byte: every draw is a checksum skip."""
    shards = tmp_path_factory.mktemp("all_bad") / "shards"
    shutil.copytree(clean, shards)
    flip_every_sample(shards.glob("train-*.tar"), "01.jpg")
    return shards


BUDGET = (r"rank 0 reader 0: 6 bad samples in a row \(data.max_skip_run=5\); most skips in .*train-\d+\.tar \(\d+\)"
          r".*; reasons: checksum 6 \(in DataLoader worker process 0\)$")


def test_a_budget_stop_in_a_worker_keeps_its_line(all_bad):
    config = DataConfig(shards=str(all_bad), batch_size=1, workers=1, num_frames=4, crop_size=64, shuffle_buffer=1,
                        max_skip_run=5)
    with pytest.raises(SkipBudgetExceeded, match=BUDGET) as failure:
        next(iter(build_loader(config, "train", train=True)))
    assert "\n" not in str(failure.value) and "Caught" not in str(failure.value)


def test_worker_line_reads_torchs_wrapped_message():
    wrapped = ("Caught StorageError in DataLoader worker process 3.\nOriginal Traceback (most recent call last):\n"
               '  File "x.py", line 1, in <module>\n    raise StorageError(line)\n'
               "avmae.storage.StorageError: s3://b/t.tar: timed out after 4 tries\n")
    assert worker_line(RuntimeError(wrapped)) == "s3://b/t.tar: timed out after 4 tries (in DataLoader worker process 3)"
    assert worker_line(RuntimeError("a plain error")) is None


@pytest.mark.slow
def test_avmae_train_says_the_budget_stop_of_a_worker_in_its_stop_line(all_bad, tmp_path):
    config = run_config(tmp_path, all_bad, data={"workers": 1, "max_skip_run": 5, "batch_size": 1})
    process = train(config)
    assert process.returncode == 1, process.stderr[-3000:]
    line = stop_line(process)
    assert "rank 0: the loader stopped at step 1: rank 0 reader 0: 6 bad samples in a row" in line, line
    assert "most skips in " in line and "reasons: checksum 6 (in DataLoader worker process 0)" in line, line
    assert "Traceback" not in process.stderr


@pytest.mark.parametrize("suffix", [".crc", ".idx"])
def test_open_shards_names_a_missing_sidecar(clean, tmp_path, suffix):
    shards = tmp_path / "shards"
    shutil.copytree(clean, shards)
    gone = shards / f"train-000002{suffix}"
    gone.unlink()
    with pytest.raises(ValueError) as failure:
        open_shards(load_spec(shards, "train"))
    assert str(failure.value).startswith(f"{gone}: not found, but {shards / 'manifest.json'} lists it")
    assert "\n" not in str(failure.value)


@pytest.mark.slow
def test_avmae_train_says_a_missing_checksum_sidecar_in_one_line(clean, tmp_path):
    shards = tmp_path / "shards"
    shutil.copytree(clean, shards)
    (shards / "train-000001.crc").unlink()
    process = train(run_config(tmp_path, shards))
    assert process.returncode == 2, process.stderr[-3000:]
    assert stop_line(process).startswith(f"avmae-train: {shards / 'train-000001.crc'}: not found, but "
                                         f"{shards / 'manifest.json'} lists it")
    assert "Traceback" not in process.stderr
