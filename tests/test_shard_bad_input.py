"""Every kind of bad input ends as a sample or as one failures.jsonl line with the right reason; nothing crashes
the build and nothing vanishes."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from avmae.shard.writing.manifest import read_manifest
from tests.helpers import SMALL_BUILD, build_shards


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory, clip_factory) -> Path:
    src = tmp_path_factory.mktemp("messy")
    clip_factory(src / "good.mp4", seconds=3)
    (src / "zero bytes.mp4").write_bytes(b"")
    (src / "not media.mp4").write_text("this is a text file, not a video\n" * 50)
    whole = clip_factory(src / "whole.mp4", seconds=3, size="160x120")  # no faststart: moov at the end
    (src / "truncated.mp4").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    whole.unlink()
    streamable = clip_factory(src / "streamable.mp4", seconds=3, size="160x120", extra=["-movflags", "+faststart"])
    (src / "truncated streamable.mp4").write_bytes(streamable.read_bytes()[: streamable.stat().st_size * 2 // 5])
    streamable.unlink()
    clip_factory(src / "no audio.mp4", seconds=3, audio=False)
    clip_factory(src / "audio only.m4a.mp4", seconds=3, video=False)
    clip_factory(src / "short.mp4", seconds=1.5)  # shorter than the 3 s segment: kept, segment shortened
    clip_factory(src / "tiny.mp4", seconds=0.4)  # shorter than --min-seconds
    clip_factory(src / "vfr.mkv", seconds=3, extra=["-vf", "setpts='N/25/TB+0.03*sin(N)/TB'", "-fps_mode", "vfr"])
    clip_factory(src / "odd size 444.mkv", seconds=3, size="97x61", pix_fmt="yuv444p")
    clip_factory(src / "rgb.mkv", seconds=3, size="64x48", vcodec="ffv1", pix_fmt="bgr0")
    clip_factory(src / "gray.mp4", seconds=3, pix_fmt="gray")
    clip_factory(src / "surround 48k.mkv", seconds=3, audio_rate=48000, channels=6, acodec="flac")
    clip_factory(src / "phone 8k.mp4", seconds=3, audio_rate=8000, channels=1)
    clip_factory(src / "webm clip.webm", seconds=3, vcodec="libvpx-vp9", acodec="libopus", audio_rate=48000)
    clip_factory(src / "quote's \"name\" — ünïcødé 日本.mov", seconds=3)
    clip_factory(src / "sub dir" / "-starts-with-dash.mp4", seconds=3)
    (src / "notes.txt").write_text("not an input: no video extension")
    return src


EXPECTED_FAILURES = {
    "zero bytes.mp4": "empty_file",
    "not media.mp4": "unreadable",
    "truncated.mp4": "unreadable",  # the index (moov) was at the end and is gone
    "truncated streamable.mp4": "truncated",  # the index promises 3 s, the data stops after ~1 s
    "no audio.mp4": "no_audio",
    "audio only.m4a.mp4": "no_video",
    "tiny.mp4": "too_short",
}


# 3 s segments (298 valid log-mel frames at 16 kHz) of 4 frames at short side 64, padded to 320 log-mel frames.
MESSY = {"segment_seconds": "3", "num_frames": "4", "short_side": "64", "target_frames": "320", "shard_size": "6",
         "val_fraction": "0"}


def _build(src: Path, out: Path, *extra: str) -> Path:
    return build_shards(src, out, *extra, **MESSY)


def _samples(out: Path) -> dict[str, dict]:
    """metadata of every sample by its source path, after checking each sample's members."""
    manifest = read_manifest(out)
    by_source = {}
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            with tarfile.open(out / shard["tar"]) as tar:
                names = tar.getnames()
                for name in names:
                    if not name.endswith(".json"):
                        continue
                    key = name[: -len(".json")]
                    meta = json.loads(tar.extractfile(name).read())
                    frames = [Image.open(io.BytesIO(tar.extractfile(f"{key}.{i:02d}.jpg").read())) for i in range(4)]
                    assert all(min(frame.size) == 64 for frame in frames), (meta["source"], frames[0].size)
                    mel = np.load(io.BytesIO(tar.extractfile(f"{key}.logmel.npy").read()))
                    assert mel.shape == (320, 128) and mel.dtype == np.float16
                    meta["_mel"] = mel
                    by_source[meta["source"]] = meta
    return by_source


def test_every_input_is_a_sample_or_a_recorded_failure(messy_folder, tmp_path):
    out = tmp_path / "shards"
    _build(messy_folder, out)
    manifest = read_manifest(out)
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    failed = {Path(f["source"]).name: f["reason"] for f in failures}
    assert failed == EXPECTED_FAILURES, failures
    samples = _samples(out)
    inputs = [p for p in messy_folder.rglob("*") if p.is_file() and p.suffix != ".txt"]
    assert len(inputs) == manifest["totals"]["inputs"] == len(samples) + len(failures)
    assert {Path(s).name for s in samples} | set(failed) == {p.name for p in inputs}
    for failure in failures:  # a failure names its file and says what is wrong
        assert failure["path"] is None or Path(failure["path"]).exists()
        assert failure["detail"]


def test_kept_inputs_have_sensible_metadata(messy_folder, tmp_path):
    out = tmp_path / "shards"
    _build(messy_folder, out)
    samples = _samples(out)
    short = samples["short.mp4"]
    assert short["end"] == pytest.approx(1.5, abs=0.1)  # the segment was shortened to the clip
    assert short["audio_valid_frames"] == pytest.approx(148, abs=3)
    assert not short["_mel"][short["audio_valid_frames"]:].any()
    for source, meta in samples.items():
        assert len(meta["frame_times"]) == 4
        assert meta["frame_times"] == sorted(meta["frame_times"]), source
        assert meta["has_audio"]
        if source != "short.mp4":
            # 3 s at 16 kHz whatever the input rate and channels (give or take AAC priming in some containers)
            assert meta["audio_valid_frames"] == pytest.approx(298, abs=3), source
    assert "sub dir/-starts-with-dash.mp4" in samples
    assert any("日本" in source for source in samples)


def test_missing_audio_silence_keeps_silent_clips(messy_folder, tmp_path):
    out = tmp_path / "shards"
    _build(messy_folder, out, "--missing-audio", "silence")
    failures = [json.loads(line)["reason"] for line in (out / "failures.jsonl").read_text().splitlines()]
    assert "no_audio" not in failures
    silent = _samples(out)["no audio.mp4"]
    assert silent["has_audio"] is False
    assert silent["audio_valid_frames"] == 298
    # Silence of the segment's length: constant log(epsilon) features, and excluded from the dataset statistics,
    # which therefore equal those of the build that dropped the clip.
    assert np.unique(silent["_mel"][:298]).size == 1
    dropped = tmp_path / "dropped"
    _build(messy_folder, dropped)
    assert read_manifest(out)["logmel_mean"] == read_manifest(dropped)["logmel_mean"]
    assert read_manifest(out)["logmel_std"] == read_manifest(dropped)["logmel_std"]


def test_a_folder_scan_names_what_it_ignored(tmp_path, clip_factory, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # the table on one line per row
    src = tmp_path / "downloads"
    good = clip_factory(src / "good.mp4", seconds=2)
    clip_factory(src / "audio only.m4a", seconds=2, video=False)  # an audio-only download: not a video input
    (src / "half.mp4.part").write_bytes(good.read_bytes()[: good.stat().st_size // 2])  # a download in progress
    (src / "README").write_text("no extension")
    (src / ".hidden.mp4").write_bytes(good.read_bytes())
    out = tmp_path / "shards"
    build_shards(src, out, **SMALL_BUILD)
    summary = json.loads(capsys.readouterr().out)
    ignored = {".m4a": 1, ".part": 1, "(no extension)": 1, "(hidden)": 1}
    assert summary["ignored_files"] == ignored
    assert summary["totals"]["inputs"] == 1 == summary["totals"]["samples"]
    assert read_manifest(out)["source"]["ignored_files"] == ignored  # recorded where a person looks later too
    build_shards(src, out, as_json=False, **SMALL_BUILD)  # resumed: table
    assert "not taken as video: (hidden): 1, (no extension): 1, .m4a: 1, .part: 1" in capsys.readouterr().out


def test_a_folder_without_video_says_what_it_holds(tmp_path, clip_factory, capsys):
    clip_factory(tmp_path / "src" / "song.m4a", seconds=1, video=False)
    build_shards(tmp_path / "src", tmp_path / "out", exit_code=2)
    error = capsys.readouterr().err.strip()
    assert error == f"avmae-shard build: --src {tmp_path / 'src'} holds no video files (ignored: .m4a: 1)"


def test_the_build_bench_takes_the_files_the_build_takes(tmp_path, clip_factory, capsys):
    from avmae.bench.shard import bench_shard
    from avmae.cli.bench import main as bench_main
    from avmae.shard.params import BuildParams, FeatureParams

    src = tmp_path / "downloads"
    good = clip_factory(src / "good.mp4", seconds=1)
    (src / ".hidden.mp4").write_bytes(good.read_bytes())  # the build's folder scan ignores it: so must its floor
    result = bench_shard(src, workers=1, features=FeatureParams(num_frames=2, short_side=32, target_frames=64),
                         build=BuildParams(segment_seconds=1))
    assert result["clips"] == 1 == result["samples"] and result["failures"] == 0
    (tmp_path / "songs").mkdir()
    (tmp_path / "songs" / "song.m4a").write_bytes(b"")
    assert bench_main(["shard", "--src", str(tmp_path / "songs"), "--workers", "1"]) == 2
    assert capsys.readouterr().err.strip() == (f"avmae-bench shard: --src {tmp_path / 'songs'} holds no video files "
                                               "(ignored: .m4a: 1)")
