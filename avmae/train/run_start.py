"""A run's start, before the trainer builds anything: the config validated; the shards checked against the model and a
resumed run's config against the one its checkpoints were made with, so that a wrong folder, shards made for another
model or a changed config fail before any process group exists; then the process group, and on every rank the run
folder, the random generators seeded per rank, and the resolved config saved by rank 0. ``start_run`` gives all of it
as one ``RunStart``, which is what ``Trainer`` is built from."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from avmae.config import dump
from avmae.data.spec import DataSpec
from avmae.distributed import DistInfo, setup_distributed
from avmae.files import write_atomically
from avmae.recipe.config import RunConfig
from avmae.recipe.geometry import load_run_spec
from avmae.train.checkpoint import Checkpoints
from avmae.train.resume_config import check_resumable


def checked_run(config: RunConfig) -> tuple[DataSpec, Checkpoints]:
    """The training split's spec and the run's checkpoints (``is_main`` is set once the ranks are known). Every rank
    checks, before any collective: all refuse together."""
    spec = load_run_spec(config, config.data.train_split)
    workdir = Path(config.workdir)
    checkpoints = Checkpoints(workdir / "checkpoints", config.checkpoint.keep, is_main=False)
    if checkpoints.complete():
        check_resumable(workdir / "config.yaml", config)
    return spec, checkpoints


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def open_run_folder(config: RunConfig, rank: int, is_main: bool) -> Path:
    """The run folder, made; this rank's generators seeded (``seed`` + rank); ``config.yaml`` written by rank 0."""
    workdir = Path(config.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    seed_everything(config.seed + rank)
    if is_main:
        write_atomically(workdir / "config.yaml", lambda partial: dump(config, partial))
    return workdir


@dataclass(frozen=True)
class RunStart:
    """A run that may begin on this rank: its validated config, the training split's shards, its checkpoints, the
    process group and the run folder."""

    config: RunConfig
    spec: DataSpec
    checkpoints: Checkpoints
    dist: DistInfo
    workdir: Path

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def bf16(self) -> bool:
        """``precision``: bf16, fp32, or auto (bf16 on CUDA)."""
        precision = self.config.precision
        return precision == "bf16" or (precision == "auto" and self.dist.device.type == "cuda")


def start_run(config: RunConfig, dist_info: DistInfo | None = None) -> RunStart:
    """Everything a run checks and sets up before its model is built (``dist_info``: a process group already set up,
    as in tests; none: set up here, from torchrun's or SLURM's variables)."""
    config = config.validate()
    spec, checkpoints = checked_run(config)
    dist = dist_info or setup_distributed(timeout_s=config.guard.collective_timeout_s)
    checkpoints.is_main = dist.is_main
    return RunStart(config, spec, checkpoints, dist, open_run_folder(config, dist.rank, dist.is_main))
