"""What the tests share: the one tiny model of the training tests, the one tiny shard build, a run config
writer, a two-process torchrun launcher and the metrics reader. Fixtures built on them are in conftest.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

from avmae.cli.shard import main as shard_main

REPO = Path(__file__).resolve().parents[1]

TINY_MODEL = {
    "encoder": {"size": "custom", "width": 64, "depth": 3, "heads": 2, "mlp": 128, "fusion": "mid", "joint_layers": 1},
    "decoder": {"kind": "shared", "width": 32, "depth": 1, "heads": 2, "mlp": 64},
    "mask": {"audio_ratio": 0.7, "video_ratio": 0.75, "video_mode": "tube"},
    "contrastive": {"weight": 0.01},
    "audio": {"frames": 208, "mel_bins": 128, "patch": 16},
    "video": {"frames": 4, "size": 64, "patch": 16, "tubelet": 2},
    "norm_pix_loss": True,
}


def run_config(tmp_path: Path, shards: Path, **sections) -> Path:
    config = {
        "task": "pretrain", "model": TINY_MODEL,
        "data": {"shards": str(shards), "batch_size": 4, "workers": 0, "num_frames": 4, "crop_size": 64,
                 "shuffle_buffer": 4},
        "optim": {"steps": 8, "lr": 2e-3, "warmup_steps": 2},
        "checkpoint": {"every": 4, "keep": 2}, "log": {"every": 1, "progress": False, "tensorboard": True},
        "zero_stage": 2, "workdir": str(tmp_path / "run"),
    }
    for name, values in sections.items():
        config[name] = {**config[name], **values} if isinstance(values, dict) and name in config else values
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def torchrun(config: Path, *overrides: str, processes: int = 2) -> dict:
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}",
               f"--master_port={free_port()}", "-m", "avmae.cli.train", "--config", str(config)]
    for item in overrides:
        command += ["--set", item]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])


def metrics(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


# The tiny shard geometry of the training tests: 2 s segments of 8 frames at short side 72, a 208-frame log-mel.
TINY_SHARDS = {"--segment-seconds": "2", "--num-frames": "8", "--short-side": "72", "--target-frames": "208",
               "--shard-size": "2", "--val-fraction": "0.25", "--workers": "1"}


def build_shards(corpus: Path, out: Path, *extra: str, **options: str) -> Path:
    """``avmae-shard build`` of ``corpus`` (a list file or a folder) into ``out`` with the tiny geometry; ``options``
    replace its values (``num_frames="4"`` for ``--num-frames 4``), ``extra`` are more arguments."""
    chosen = {**TINY_SHARDS, **{f"--{k.replace('_', '-')}": str(v) for k, v in options.items()}}
    source = ["--src" if Path(corpus).is_dir() else "--list", str(corpus)]
    arguments = ["build", *source, "--out", str(out), *(x for item in chosen.items() for x in item), *extra, "--json"]
    assert shard_main(arguments) == 0
    return out
