"""``avmae-bench loader`` on a shard folder whose tar no longer matches its index, for real: a member appended after
the build (one the index does not list), or a frame member gone from a sample the index lists, ends the command
with one line naming the tar and the member (exit 2), not a KeyError traceback."""

from __future__ import annotations

import io
import shutil
import tarfile
from pathlib import Path

import pytest

from avmae.cli.bench import main as bench_main
from tests.faults.damage import rewrite_samples
from tests.helpers import build_shards

ARGS = ["loader", "--workers", "0", "--batches", "1", "--batch-size", "2", "--num-frames", "4", "--crop", "64"]


@pytest.fixture(scope="module")
def clean(synth_corpus, tmp_path_factory) -> Path:
    return build_shards(synth_corpus, tmp_path_factory.mktemp("bench") / "shards", val_fraction="0")


def _bench_error(shards: Path, capsys) -> str:
    assert bench_main([*ARGS, "--data", str(shards)]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("avmae-bench loader: ")]
    assert len(lines) == 1, lines
    return lines[0]


def test_a_member_the_index_does_not_list_is_one_line(clean, tmp_path, capsys):
    shards = tmp_path / "shards"
    shutil.copytree(clean, shards)
    tar_path = shards / "train-000000.tar"
    with tarfile.open(tar_path, "a") as tar:  # appended after the build: the index and manifest know nothing of it
        data = b'{"key": "stray"}'
        info = tarfile.TarInfo("stray.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    line = _bench_error(shards, capsys)
    assert line.startswith(f"avmae-bench loader: {tar_path}: member stray.json is not listed in its index "
                           f"{shards / 'train-000000.idx'}"), line


def test_a_frame_member_missing_from_a_listed_sample_is_one_line(clean, tmp_path, capsys):
    shards = tmp_path / "shards"
    shutil.copytree(clean, shards)
    tar_path = shards / "train-000001.tar"
    # drop frame 03 (one of the 4 of 8 the bench takes) of every sample of the tar; the index, rewritten with the
    # tar, still lists the samples
    rewrite_samples(tar_path, lambda members: {ext: data for ext, data in members.items() if ext != "03.jpg"})
    line = _bench_error(shards, capsys)
    assert line.startswith(f"avmae-bench loader: {tar_path}: member "), line
    assert ".03.jpg not found, though " in line and str(shards / "train-000001.idx") in line, line
