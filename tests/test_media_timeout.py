"""A clip whose decode never returns becomes a recorded failure (reason timed_out, naming the file and the deadline)
within the deadline, its ffmpeg is killed, and the rest of the build finishes: it used to block its worker for ever.

The clip is real: an ffconcat list (ffmpeg and ffprobe recognise it by its content, whatever its extension) naming
a FIFO that nobody writes, so ffmpeg blocks in open(), as on a stalled network file system. A FIFO given directly
never reaches ffmpeg: the build refuses any input that is not a regular file (an unreadable failure)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

import avmae.shard.inputs.media as media
from avmae.shard.inputs.synth import make_corpus
from avmae.shard.writing.manifest import read_manifest
from tests.helpers import SMALL_BUILD, build_shards

pytestmark = pytest.mark.serial  # asserts how soon the build ends: not beside other tests' load

DEADLINE_S = 2.0


@pytest.fixture
def stalling_folder(tmp_path, clip_factory) -> Path:
    src = tmp_path / "src"
    clip_factory(src / "good one.mp4", seconds=2)
    clip_factory(src / "good two.mp4", seconds=2)
    os.mkfifo(src / "stall")  # no extension: not an input itself
    (src / "stalls.mp4").write_text("ffconcat version 1.0\nfile stall\n")
    return src


def _processes_reading(folder: Path) -> list[str]:
    """Command lines of running processes that name ``folder`` (an ffmpeg left blocked on the clip)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
        except OSError:
            continue
        if entry.name.isdigit() and str(folder) in command:
            found.append(command)
    return found


def test_a_clip_that_never_decodes_is_a_timed_out_failure_and_the_build_finishes(stalling_folder, tmp_path,
                                                                                   monkeypatch):
    # Forked pool workers inherit the lowered deadline.
    monkeypatch.setattr(media, "TIMEOUT_BASE_S", DEADLINE_S)
    monkeypatch.setattr(media, "TIMEOUT_PER_MEDIA_SECOND", 0.0)
    out = tmp_path / "shards"
    started = time.monotonic()
    build_shards(stalling_folder, out, **{**SMALL_BUILD, "segment_seconds": "1", "shard_size": "1", "workers": "2"})
    took = time.monotonic() - started
    # the decode's deadline (no probe after it: that would wait out a second one), plus the two good clips
    assert took < 2 * DEADLINE_S + 10, took
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [(Path(f["path"]).name, f["reason"]) for f in failures] == [("stalls.mp4", "timed_out")], failures
    assert str(stalling_folder / "stalls.mp4") in failures[0]["detail"]
    assert f"timed out after {DEADLINE_S:g} s" in failures[0]["detail"]
    manifest = read_manifest(out)  # written: every shard got its part record
    assert manifest["totals"]["inputs"] == 3 and manifest["totals"]["samples"] == 2
    assert manifest["totals"]["failure_reasons"] == {"timed_out": 1}
    assert _processes_reading(stalling_folder) == []  # the blocked ffmpeg and ffprobe were killed


def test_every_call_kills_its_process_at_the_deadline(stalling_folder, monkeypatch):
    monkeypatch.setattr(media, "TIMEOUT_BASE_S", 1.0)
    monkeypatch.setattr(media, "TIMEOUT_PER_MEDIA_SECOND", 0.5)
    clip = str(stalling_folder / "stalls.mp4")
    calls = {"probe": (lambda: media.probe(clip), 1.0),
             "decode": (lambda: media.decode_segment(clip, 0.0, 2.0, num_frames=2, short_side=32, jpeg_qscale=3,
                                                     sample_rate=16000), 2.0),  # 1 s + 0.5 s per second decoded
             "resize": (lambda: media.resize_image(clip, short_side=32, jpeg_qscale=3), 1.0)}
    for name, (call, deadline) in calls.items():
        started = time.monotonic()
        with pytest.raises(media.MediaError) as caught:
            call()
        took = time.monotonic() - started
        assert caught.value.reason == "timed_out", (name, caught.value)
        assert caught.value.detail.startswith(f"{clip}: ") and f"timed out after {deadline:g} s" in caught.value.detail
        assert deadline <= took < deadline + 3, (name, took)
    assert _processes_reading(stalling_folder) == []


def test_a_fifo_given_as_a_clip_is_an_unreadable_failure_not_a_wait(tmp_path, clip_factory):
    src = tmp_path / "src"
    clip_factory(src / "good.mp4", seconds=2)
    os.mkfifo(src / "pipe.mp4")  # nobody writes it: opening it for reading would block
    out = tmp_path / "shards"
    build_shards(src, out, **{**SMALL_BUILD, "segment_seconds": "1", "shard_size": "1", "workers": "1"})
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert [(Path(f["path"]).name, f["reason"]) for f in failures] == [("pipe.mp4", "unreadable")], failures
    assert "not a regular file" in failures[0]["detail"]
    assert read_manifest(out)["totals"]["samples"] == 1


def test_a_synthetic_clip_that_never_finishes_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.setattr(media, "TIMEOUT_BASE_S", 1.0)
    monkeypatch.setattr(media, "TIMEOUT_PER_MEDIA_SECOND", 0.0)
    out = tmp_path / "corpus"
    (out / "class_00").mkdir(parents=True)
    os.mkfifo(out / "class_00" / "clip_00000.mp4")  # nobody reads it: ffmpeg blocks opening its output
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"making \S+/class_00/clip_00000\.mp4 timed out after 1 s \(killed\)"):
        make_corpus(out, 1, 1, seconds=1.0)
    assert time.monotonic() - started < 5
    assert _processes_reading(out) == []
