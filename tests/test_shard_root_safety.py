"""Shard roots that are shell commands or remote stores, held to the review's findings: manifest-supplied file names
cannot reach a pipe: command's shell; readers of remote shards do not pile up; a failing command is not a missing
file; a storage failure on the command line is one line naming the URL."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from avmae.data.config import DataConfig
from avmae.data.loader import build_loader
from avmae.shard.ids import split_rows
from avmae.shard.inspect import find_sample
from avmae.shard.verify import verify
from avmae.shard_files import join


def _config(root: str | Path, **overrides) -> DataConfig:
    base = dict(shards=str(root), eval_split="train", batch_size=2, workers=0, num_frames=4, crop_size=64,
                shuffle_buffer=3, backend="webdataset")
    return DataConfig(**{**base, **overrides})


@pytest.fixture
def hostile(shards, tmp_path) -> tuple[Path, Path]:
    """A copy of the shards whose manifest names a tar ``x.tar; touch MARKER #``, and the marker's path."""
    folder, marker = tmp_path / "hostile", tmp_path / "pwned"
    shutil.copytree(shards, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    shard = manifest["splits"]["train"]["shards"][0]
    shard["tar"] = f"x.tar; touch {marker} #"
    shard["idx"] = f"$(touch {marker}).idx"
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder, marker


def test_a_pipe_root_never_runs_a_name_from_the_manifest(hostile):
    folder, marker = hostile
    root = f"pipe:cat {folder}/{{}}"
    manifest = f"pipe:cat {folder}/manifest.json"
    for read in (lambda: build_loader(_config(root), "train", train=False), lambda: verify(root),
                 lambda: split_rows(root, "train"), lambda: find_sample(root, 5)):
        with pytest.raises(ValueError) as caught:
            read()
        message = str(caught.value)
        assert "\n" not in message and message.startswith(manifest)
        assert "is not a plain NAME.tar/.idx/.crc file name" in message and "x.tar; touch" in message
    assert not marker.exists()
    with pytest.raises(ValueError, match=rf"^{folder}/manifest.json: shard file name"):  # local folders: the same
        verify(folder)


def test_names_joined_into_a_pipe_command_are_quoted_and_real_names_still_read(shards):
    assert join("pipe:cat /d/{}", "a b;c.tar") == "pipe:cat /d/'a b;c.tar'"
    assert join("pipe:cat /d/{}", "train-000000.tar") == "pipe:cat /d/train-000000.tar"
    assert verify(shards)["ok"] and verify(f"pipe:cat {shards}/{{}}")["ok"]


def _commands() -> int:
    """Pipe commands this process started and has not reaped (the `sh -c` of each; a finished one not yet waited
    for counts too: its reader was never closed)."""
    import gc

    import psutil

    gc.collect()  # readers of loaders of earlier tests
    return len(psutil.Process().children())


@pytest.mark.parametrize("train", [False, True])
def test_a_pipe_pass_over_many_shards_keeps_one_command_running(shards, train):
    """Evaluation (every shard in turn) and class-balanced training (labels of every owned shard read first, then
    streamed) over a pipe: root: each shard's `cat` ends when the reader moves on, not with the run."""
    root = f"pipe:cat {shards}/{{}}"
    assert len(json.loads((shards / "manifest.json").read_text())["splits"]["train"]["shards"]) >= 3
    before = _commands()
    loader = build_loader(_config(root, balanced_sampling=train), "train", train=train)
    live = []
    for number, _ in enumerate(loader):
        live.append(_commands() - before)
        if number == 8:
            break
    assert len(live) >= 5 and max(live) <= 1, live
    del loader
    assert _commands() - before <= 1
