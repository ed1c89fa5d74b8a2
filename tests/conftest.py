"""Shared fixtures: real media files made with ffmpeg, and a small synthetic corpus."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from avmae.shard.inputs.media import ffmpeg_binary
from tests.servers import GCS_ENV

os.environ.update(GCS_ENV)  # before anything imports gcsfs, which reads it once (tests/servers.py says why)


def make_clip(path: Path, *, seconds: float = 3.0, size: str = "96x64", rate: int = 25, audio: bool = True,
              video: bool = True, audio_rate: int = 44100, channels: int = 2, pix_fmt: str = "yuv420p",
              vcodec: str = "libx264", acodec: str = "aac", video_source: str | None = None,
              frequency: float = 440.0, extra: list[str] | None = None) -> Path:
    """A real clip made by ffmpeg from lavfi sources (testsrc2 pictures, a sine tone)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    command = [ffmpeg_binary(), "-nostdin", "-v", "error", "-y"]
    if video:
        source = video_source or f"testsrc2=size={size}:rate={rate}:duration={seconds}"
        command += ["-f", "lavfi", "-i", source]
    if audio:
        command += ["-f", "lavfi", "-i", f"sine=frequency={frequency}:sample_rate={audio_rate}:duration={seconds}"]
    if video:
        command += ["-c:v", vcodec, "-pix_fmt", pix_fmt]
    if audio:
        command += ["-ac", str(channels), "-c:a", acodec]
    command += [*(extra or []), str(path)]
    subprocess.run(command, check=True, capture_output=True)
    return path


@pytest.fixture(scope="session")
def clip_factory():
    return make_clip


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory) -> Path:
    """12 clips in 4 classes, made once per test session; returns the corpus list (generic CSV)."""
    from avmae.shard.inputs.synth import make_corpus

    return make_corpus(tmp_path_factory.mktemp("corpus"), 12, 4, seed=1, seconds=2.0, width=96, height=64)


@pytest.fixture(scope="module")
def shards(synth_corpus, tmp_path_factory) -> Path:
    """The tiny training shards (tests/helpers.py TINY_SHARDS) of the synthetic corpus, once per test module."""
    from tests.helpers import build_shards

    return build_shards(synth_corpus, tmp_path_factory.mktemp("train") / "shards")
