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
from avmae.shard.checking.ids import split_rows
from avmae.shard.checking.inspect import find_sample
from avmae.shard.checking.verify import verify
from avmae.shard_files import join


def _config(root: str | Path, **overrides) -> DataConfig:
    base = dict(shards=str(root), eval_split="train", batch_size=2, workers=0, num_frames=4, crop_size=64,
                shuffle_buffer=3, backend="torch")
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
        assert "is not a plain NAME.tar/.idx/.crc/.labels file name" in message and "x.tar; touch" in message
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


UNREACHABLE = "http://127.0.0.1:9/x"  # the discard port: nothing listens on loopback


def _single_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    lines = [line for line in err if line.startswith("avmae-")]  # DeepSpeed's import notices aside
    assert len(lines) == 1 and "Traceback" not in "\n".join(err), err
    return lines[0]


def test_train_and_eval_say_an_unreachable_shard_url_in_one_line(tmp_path, capsys, monkeypatch):
    from types import SimpleNamespace

    from avmae.cli.eval import main as eval_main
    from avmae.cli.train import main as train_main
    import avmae.export.load
    from avmae.recipe.config import RunConfig

    config = Path(__file__).resolve().parents[1] / "configs" / "demo_pretrain.yaml"
    assert train_main(["--config", str(config), "--set", f"data.shards={UNREACHABLE}",
                       "--workdir", str(tmp_path / "run")]) == 2
    line = _single_line(capsys)
    # after data.storage_retries more tries with backoff (a store restarting for a moment is waited for)
    assert line.startswith(f"avmae-train: {UNREACHABLE}/manifest.json: unreachable after 4 tries")
    assert "AWS_ENDPOINT_URL" not in line  # an http URL has no S3 endpoint to check

    monkeypatch.setattr(avmae.export.load, "load_model",  # a model is not what this test is about
                        lambda *args: SimpleNamespace(path=Path("model.safetensors"), config=RunConfig()))
    assert eval_main(["--ckpt", "model.safetensors", "--data", UNREACHABLE, "--task", "audioset",
                      "--out", str(tmp_path / "eval")]) == 2
    assert _single_line(capsys).startswith(f"avmae-eval: {UNREACHABLE}/manifest.json: unreachable after 4 tries")


def test_the_hint_for_an_unreachable_store_follows_the_protocol():
    from avmae.storage import describe_failure

    refused = OSError("Cannot connect to host 127.0.0.1:9 ssl:default [Connect call failed ('127.0.0.1', 9)]")
    assert "AWS_ENDPOINT_URL" in describe_failure("s3://bucket/x", refused)
    for url in ("http://127.0.0.1:9/x", "https://host/x", "gs://bucket/x"):
        assert "AWS_" not in describe_failure(url, refused) and "server unreachable" in describe_failure(url, refused)


def test_verify_over_a_pipe_tells_a_failing_command_from_a_missing_file(shards, tmp_path):
    from avmae.storage import StorageError

    log = tmp_path / "runs.log"
    counted = f"pipe:echo {{}} >> {log}; cat {shards}/{{}}"
    assert verify(counted)["ok"]
    runs = log.read_text().split()
    assert all(runs.count(name) == 1 for name in runs if name.endswith((".tar", ".idx", ".crc", ".labels"))), runs

    denied = (f"pipe:f() {{ case $1 in *.tar) echo 'An error occurred (AccessDenied) when calling GetObject' >&2; "
              f"return 3;; esac; cat {shards}/$1; }}; f {{}}")
    with pytest.raises(StorageError, match=r"exit status 3 \(An error occurred \(AccessDenied\)"):
        verify(denied)

    gone = tmp_path / "gone"
    shutil.copytree(shards, gone)
    (gone / "train-000001.tar").unlink()
    report = verify(f"pipe:cat {gone}/{{}}")
    assert report["problems"] == verify(gone)["problems"]
    assert "train-000001: tar file is missing" in report["problems"]


def test_a_read_ahead_block_that_misses_the_sample_is_a_sample_error(shards):
    """A check, not an assert: `python -O` strips asserts and would slice the wrong bytes."""
    from avmae.data.faults import SampleError
    from avmae.data.tar_reader import IndexedShard, SampleBlock

    shard = IndexedShard(str(shards / "train-000000.tar"), str(shards / "train-000000.idx"),
                         str(shards / "train-000000.crc"))
    start, end = shard.span(1)
    with pytest.raises(SampleError, match="index_mismatch: the bytes read ahead start at byte") as caught:
        shard.read(0, ["json"], SampleBlock(start, b"\0" * (end - start)))
    assert caught.value.reason == "index_mismatch" and caught.value.shard.endswith("train-000000.tar")
