"""Shard build throughput against its floor: ffmpeg alone decoding the same clips (``ffmpeg -i clip -f null -``)
with the same number of concurrent processes on the same cores."""

from __future__ import annotations

import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from avmae.shard.inputs.collect import InputSpec, collect_inputs
from avmae.shard.inputs.media import ffmpeg_binary, ffmpeg_version, timeout_for
from avmae.shard.params import BuildParams, FeatureParams
from avmae.shard.writing.build import run_build


def make_bench_clips(folder: Path, count: int, *, seconds: float = 10.0, size: str = "640x360",
                     workers: int = 2) -> Path:
    """``count`` H.264/AAC clips like a YouTube download at 360p: moving test pattern with noise, stereo 44.1 kHz."""
    folder.mkdir(parents=True, exist_ok=True)

    def make(index: int) -> None:
        path = folder / f"clip_{index:04d}.mp4"
        if path.exists():
            return
        subprocess.run([ffmpeg_binary(), "-nostdin", "-v", "error", "-y",
                        "-f", "lavfi", "-i", f"testsrc2=size={size}:rate=30:duration={seconds},noise=alls=12:allf=t",
                        "-f", "lavfi", "-i", f"sine=frequency={220 + 20 * index}:sample_rate=44100:duration={seconds}",
                        "-ac", "2", "-c:v", "libx264", "-preset", "veryfast", "-crf", "26", "-pix_fmt", "yuv420p",
                        "-c:a", "aac", "-b:a", "128k", "-shortest", str(path)], check=True, capture_output=True,
                       timeout=timeout_for(seconds))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(make, range(count)))
    return folder


def ffmpeg_floor_seconds(clips: list[Path], workers: int) -> float:
    """Wall time for ffmpeg to decode every clip (video and audio) to nowhere, ``workers`` processes at a time."""
    def decode(path: Path) -> None:
        subprocess.run([ffmpeg_binary(), "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
                       check=True, capture_output=True)

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(decode, clips))
    return time.perf_counter() - started


def bench_shard(src: Path, *, workers: int, features: FeatureParams, build: BuildParams) -> dict[str, Any]:
    # The clips the build takes (the one folder scan: shard/inputs/items.py scan_folder), so both sides decode the
    # same files.
    items, labels, source = collect_inputs(InputSpec(src=src), segment_seconds=build.segment_seconds)
    clips = [Path(item.path) for item in items]
    ffmpeg_floor_seconds(clips[: min(2, len(clips))], 1)  # warm the page cache and the binary
    floor = ffmpeg_floor_seconds(clips, workers)
    # One shard per worker at least, so the build can use every worker.
    build = BuildParams(**{**build.__dict__, "shard_size": max(1, len(items) // (2 * workers))})
    with tempfile.TemporaryDirectory(prefix="avmae-bench-") as scratch:
        started = time.perf_counter()
        result = run_build(Path(scratch) / "shards", items, labels, source, features, build, workers=workers,
                           show_progress=False)
        seconds = time.perf_counter() - started
        samples = result.manifest["totals"]["samples"]
        failures = result.manifest["totals"]["failures"]
    return {
        "clips": len(clips), "workers": workers, "samples": samples, "failures": failures,
        "ffmpeg": ffmpeg_version(),
        "floor_seconds": round(floor, 3), "floor_clips_per_s": round(len(clips) / floor, 2),
        "build_seconds": round(seconds, 3), "build_clips_per_s": round(len(clips) / seconds, 2),
        "build_over_floor": round(seconds / floor, 3),
        "features": {"num_frames": features.num_frames, "short_side": features.short_side},
        "segment_seconds": build.segment_seconds,
    }
