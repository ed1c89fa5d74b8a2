"""Checkpoints: DeepSpeed ZeRO checkpoints per step, a completion marker written after every rank has saved
(so a half-written checkpoint is never resumed from), pruning to the newest K, and consolidated fp32 exports."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

COMPLETE = "complete.json"


def tag_for(step: int) -> str:
    return f"step{step:08d}"


class Checkpoints:
    def __init__(self, root: Path, keep: int, is_main: bool):
        self.root, self.keep, self.is_main = root, keep, is_main

    def complete(self) -> list[tuple[int, str]]:
        """(step, tag) of every complete checkpoint, oldest first."""
        found = []
        if self.root.is_dir():
            for marker in self.root.glob(f"*/{COMPLETE}"):
                try:
                    found.append((json.loads(marker.read_text())["step"], marker.parent.name))
                except (OSError, ValueError, KeyError):
                    continue  # a marker being written right now, or damaged: not a complete checkpoint
        return sorted(found)

    def save(self, engine, step: int, client_state: dict[str, Any], protect: str | None = None) -> str:
        """Every rank must call this (DeepSpeed saves each rank's shard). ``protect`` (the best checkpoint so far)
        survives pruning."""
        tag = tag_for(step)
        engine.save_checkpoint(str(self.root), tag=tag, client_state={**client_state, "step": step})
        torch.save(rng_state(), self.root / tag / f"rng_rank{dist.get_rank()}.pt")
        dist.barrier()
        if self.is_main:
            partial = self.root / tag / f".{COMPLETE}.partial"
            partial.write_text(json.dumps({"step": step, "world_size": dist.get_world_size()}))
            os.replace(partial, self.root / tag / COMPLETE)
            for _, old in self.complete()[:-self.keep] if self.keep > 0 else []:
                if old != protect:
                    shutil.rmtree(self.root / old, ignore_errors=True)
        dist.barrier()
        return tag

    def resume(self, engine) -> dict[str, Any] | None:
        """Load the newest complete checkpoint, if any; returns its client state."""
        complete = self.complete()
        if not complete:
            return None
        _, tag = complete[-1]
        path, client_state = engine.load_checkpoint(str(self.root), tag=tag)
        if path is None:
            raise RuntimeError(f"{self.root / tag} is marked complete but DeepSpeed could not load it")
        own = self.root / tag / f"rng_rank{dist.get_rank()}.pt"
        if own.exists():  # absent when the world size changed: the run goes on with fresh random streams
            set_rng_state(torch.load(own, weights_only=False))
        return client_state

    def fp32_state_dict(self, tag: str) -> dict[str, torch.Tensor]:
        """The fp32 master weights of a checkpoint, gathered from every ZeRO partition (any stage)."""
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(self.root), tag=tag)
        return {k: v.contiguous() for k, v in state.items()}


def rng_state() -> dict[str, Any]:
    """This rank's random generators: masks, drop-path, mixup and SpecAugment draw from them."""
    import random

    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
