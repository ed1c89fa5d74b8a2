"""Disk full during a build (a real tmpfs that the build does not fit in): the build stops with one line naming the
shard and "no space left", leaves no half-written or unfinished file under a real name, and the same command with
space resumes to the bytes of an uninterrupted build."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.helpers import SMALL_BUILD, build_shards

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root (CI runs as root)")

SHARDS = {**SMALL_BUILD, "shard_size": "1", "target_frames": "256", "num_mel_bins": "64"}  # 32 KiB of log-mel a shard


def _defining_bytes(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())
            if p.suffix in (".tar", ".idx", ".crc", ".labels") or p.name in ("manifest.json", "failures.jsonl")}


def _disk_usage(folder: Path) -> int:
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def reference(tmp_path_factory, clip_factory) -> tuple[Path, Path]:
    src = tmp_path_factory.mktemp("clips")
    for index in range(6):
        clip_factory(src / f"clip{index}.mp4", seconds=2, frequency=300 + 100 * index)
    out = tmp_path_factory.mktemp("reference") / "shards"
    return src, build_shards(src, out, **SHARDS)


@pytest.fixture
def small_disk(tmp_path, reference):
    """A tmpfs holding about half of what the reference build needs on disk."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    size = max(4096, _disk_usage(reference[1]) // 2 // 4096 * 4096)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_disk_full_stops_cleanly_and_resumes_to_the_same_bytes(reference, small_disk, capsys, workers):
    src, reference_out = reference
    out = small_disk / "shards"
    build_shards(src, out, exit_code=2, workers=workers, **SHARDS)
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "no space left" in error and "shard train-0000" in error, error
    assert str(out) in error

    files = [p for p in out.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith("partial")], files
    assert not (out / "manifest.json").exists()
    done = {p.stem for p in (out / "_parts").glob("*.json")}
    assert 0 < len(done) < 6, "the build neither started nor ran out of space"
    expected = _defining_bytes(reference_out)
    for path in out.glob("*.*"):
        if path.suffix in (".tar", ".idx", ".crc", ".labels"):  # finished shards only, byte for byte a whole build's
            assert path.stem in done and path.read_bytes() == expected[path.name], path.name

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    build_shards(src, out, workers=workers, **SHARDS)
    summary = capsys.readouterr().out
    assert f'"shards_skipped": {len(done)}' in summary
    assert _defining_bytes(out) == expected
