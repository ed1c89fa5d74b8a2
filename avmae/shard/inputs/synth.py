"""A synthetic labelled audio-visual corpus made with ffmpeg, for the demo and the tests.

Each class has its own look (background hue, a square moving in a class-specific direction) and its own sound
(a tone at a class-specific pitch, amplitude-modulated at a class-specific rate). Every clip jitters position,
speed, brightness, pitch and noise, so a model must learn the class, not memorise a clip; audio and video carry
the same label, so audio-visual correspondence is learnable too.
"""

from __future__ import annotations

import colorsys
import math
import csv
import random
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from avmae.shard.errors import ParameterError
from avmae.shard.inputs.media import ffmpeg_binary, timeout_for

CORPUS_LIST = "corpus.csv"  # generic list format: path,labels


@dataclass(frozen=True)
class ClassStyle:
    name: str
    background: str  # 0xRRGGBB
    square: str
    direction: tuple[float, float]  # unit vector of the square's motion
    pitch_hz: float
    modulation_hz: float


def class_styles(num_classes: int) -> list[ClassStyle]:
    styles = []
    for k in range(num_classes):
        hue = k / num_classes
        background = colorsys.hsv_to_rgb(hue, 0.55, 0.75)
        square = colorsys.hsv_to_rgb((hue + 0.5) % 1.0, 0.9, 1.0)
        angle = 2 * math.pi * k / num_classes
        styles.append(ClassStyle(
            name=f"class_{k:02d}",
            background="0x" + "".join(f"{int(c * 255):02x}" for c in background),
            square="0x" + "".join(f"{int(c * 255):02x}" for c in square),
            direction=(math.cos(angle), math.sin(angle)),
            pitch_hz=220.0 * 2 ** (k * 5 / 12),  # a fourth apart: well separated on a 128-bin mel scale
            modulation_hz=1.0 + 1.5 * k,
        ))
    return styles


def clip_command(path: Path, style: ClassStyle, rng: random.Random, *, seconds: float, width: int, height: int,
                 fps: int) -> list[str]:
    side = height // 3
    speed = rng.uniform(0.6, 1.4) * width / seconds
    x0, y0 = rng.uniform(0, width - side), rng.uniform(0, height - side)
    dx, dy = style.direction
    # Positions wrap around the frame: mod() keeps the square inside whatever the speed.
    x = f"mod({x0:.1f}+{dx * speed:.2f}*t+{width},{width - side})"
    y = f"mod({y0:.1f}+{dy * speed:.2f}*t+{height},{height - side})"
    brightness = rng.uniform(-0.15, 0.15)
    pitch = style.pitch_hz * rng.uniform(0.97, 1.03)
    noise = rng.uniform(0.01, 0.06)
    audio = (f"0.35*sin(2*PI*{pitch:.2f}*t)*(0.6+0.4*sin(2*PI*{style.modulation_hz:.2f}*t))"
             f"+0.1*sin(4*PI*{pitch:.2f}*t)+{noise:.3f}*(random(0)-0.5)")
    video = (f"color=c={style.background}:s={width}x{height}:r={fps}:d={seconds}[bg];"
             f"color=c={style.square}:s={side}x{side}:r={fps}:d={seconds}[sq];"
             f"[bg][sq]overlay=x='{x}':y='{y}':shortest=1,eq=brightness={brightness:.3f},"
             f"noise=alls={rng.randint(4, 16)}:allf=t:all_seed={rng.randint(0, 2**30)}[v]")
    return [ffmpeg_binary(), "-nostdin", "-v", "error", "-y",
            "-f", "lavfi", "-i", f"aevalsrc='{audio}':s=22050:d={seconds}",
            "-filter_complex", video, "-map", "[v]", "-map", "0:a",
            "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-g", str(fps),
            "-c:a", "aac", "-b:a", "64k", "-shortest", "-movflags", "+faststart", str(path)]


def make_corpus(out: Path, num: int, num_classes: int, *, seed: int = 0, seconds: float = 4.0, width: int = 160,
                height: int = 120, fps: int = 25, workers: int = 2) -> Path:
    """Write ``num`` clips (``class_KK/clip_NNNNN.mp4``) and ``corpus.csv``; returns the list's path."""
    for name, value in (("num", num), ("num_classes", num_classes)):
        if value < 1:
            raise ParameterError(name, f"must be at least 1, got {value}")
    styles = class_styles(num_classes)
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    rows = []
    for index in range(num):
        style = styles[index % num_classes]
        rng = random.Random(f"{seed}:{index}")
        rel = Path(style.name) / f"clip_{index:05d}.mp4"
        (out / rel.parent).mkdir(exist_ok=True)
        length = round(seconds * rng.uniform(1.0, 1.25), 2)
        jobs.append(clip_command(out / rel, style, rng, seconds=length, width=width, height=height, fps=fps))
        rows.append((rel.as_posix(), style.name))

    deadline = timeout_for(seconds * 1.25)  # the longest clip's encode, bounded as a build's ffmpeg calls (media.py)

    def run(command: list[str]) -> None:
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=deadline)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"ffmpeg making {command[-1]} timed out after {deadline:g} s (killed)") from None
        if result.returncode != 0:
            raise RuntimeError(f"ffmpeg failed making {command[-1]}: {result.stderr.strip()[-500:]}")

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        list(pool.map(run, jobs))
    list_path = out / CORPUS_LIST
    with open(list_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels"])
        writer.writerows(rows)
    with open(out / "classes.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "name", "background", "square", "pitch_hz", "modulation_hz"])
        for k, style in enumerate(styles):
            writer.writerow([k, style.name, style.background, style.square, f"{style.pitch_hz:.1f}", style.modulation_hz])
    return list_path
