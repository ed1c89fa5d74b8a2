"""Checkpoints: DeepSpeed ZeRO checkpoints per step, a completion marker that lists every file of the checkpoint
with its size and CRC32, pruning to the newest K, and consolidated fp32 exports.

The marker is written last: after every rank has saved, and after each file and the folder are synced
(avmae/files.py), so a checkpoint cut short by a crash or a full disk has no marker. Resume checks the newest
marked checkpoint against its marker and falls back to the newest one that passes, saying which it skipped and why
(a file truncated or rewritten after the marker was written). CRC32 (avmae/crc.py) rather than sha256: at tens
of GB/s it costs nothing next to writing the files (with zlib's own CRC32, a demo-size checkpoint of ~88 MB took
0.14 s against sha256's 0.20 s), once per save and once per resume; what it guards against is damage, not an
attacker (a checkpoint folder is trusted like code: DeepSpeed unpickles it).

Nothing of avmae's own in a checkpoint is a pickle: the random generators are JSON (avmae/train/rng.py).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from avmae import collectives
from avmae.crc import crc32
from avmae.files import sync_folder, write_text_atomically
from avmae.train.rank_state import DamagedRankState, read_positions, restore_rng
from avmae.train.rng import rng_state
from avmae.train.stops import JobStopped, Stop

COMPLETE = "complete.json"


def tag_for(step: int) -> str:
    return f"step{step:08d}"


def file_crc32(path: Path, chunk: int = 1 << 22) -> int:
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            crc = crc32(block, crc)
    return crc


def describe_and_sync(folder: Path) -> dict[str, dict[str, int]]:
    """Every file of ``folder`` (hidden temporary files aside) with its size and CRC32, each synced to disk, and
    the folders synced, so the marker written after this never names data still in the page cache."""
    files = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
            files[str(path.relative_to(folder))] = {"bytes": path.stat().st_size, "crc32": file_crc32(path)}
    for sub in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        sync_folder(sub)
    return files


def problem_with(folder: Path) -> str:
    """Why the checkpoint in ``folder`` does not match its marker ("" when it does)."""
    try:
        marker = json.loads((folder / COMPLETE).read_text())
    except (OSError, ValueError) as err:
        return f"its marker cannot be read ({err})"
    listed = marker.get("files")
    if not listed:
        return "its marker lists no files"
    for name, expected in listed.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{name} is {size} bytes, its marker says {expected['bytes']}"
        if file_crc32(path) != expected["crc32"]:
            return f"{name} does not match its CRC32 in the marker"
    return ""


@contextmanager
def _save_errors_kept(engine) -> Iterator[list[tuple[str, Exception]]]:
    """While DeepSpeed saves, its checkpoint engine keeps the errors of its writes, with the file each was writing,
    instead of raising them.

    DeepSpeed's save_checkpoint ends in a barrier. A rank whose torch.save raised (a full disk or quota on its node)
    would leave before that barrier for the agreement below, while the ranks that saved wait in it: two different
    collectives, so every rank waits out the collective timeout and the job ends as if a rank had died, without the
    error. Kept here, the failing rank writes nothing more of the checkpoint, passes DeepSpeed's barriers with the
    others, and every rank then agrees the checkpoint failed and says why."""
    checkpoint_engine = engine.checkpoint_engine
    write = checkpoint_engine.save
    errors: list[tuple[str, Exception]] = []

    def save(state_dict, path, *args, **kwargs):
        if errors:
            return None  # this rank's checkpoint is lost already
        try:
            return write(state_dict, path, *args, **kwargs)
        except Exception as err:  # torch.save raises RuntimeError on a full disk, not OSError
            errors.append((str(path), err))
            return None

    checkpoint_engine.save = save
    try:
        yield errors
    finally:
        checkpoint_engine.save = write


def all_ranks_ok(ok: bool) -> bool:
    """Whether every rank succeeded; a collective, so one failing rank stops all of them at the same place instead
    of leaving the others in a barrier."""
    return collectives.all_reduce_values([1.0 if ok else 0.0], "min")[0] == 1.0


class Checkpoints:
    def __init__(self, root: Path, keep: int, is_main: bool):
        self.root, self.keep, self.is_main = root, keep, is_main

    def complete(self) -> list[tuple[int, str]]:
        """(step, tag) of every checkpoint with a completion marker, oldest first (unchecked: see ``resume``)."""
        return [(step, tag) for step, tag, _ in self._marked()]

    def regular(self) -> list[tuple[int, str]]:
        """The complete checkpoints of the ``checkpoint.every`` cycle (and the final step), oldest first: those that
        ``keep`` counts and ``average_last`` averages. A checkpoint written off the cycle (a signal, ``stop_after``, a
        fine-tuning evaluation between two) says so in its marker; markers written before that are regular."""
        return [(step, tag) for step, tag, regular in self._marked() if regular]

    def _marked(self) -> list[tuple[int, str, bool]]:
        """(step, tag, regular) of every checkpoint with a readable completion marker, oldest first."""
        found = []
        if self.root.is_dir():
            for marker in self.root.glob(f"*/{COMPLETE}"):
                try:
                    content = json.loads(marker.read_text())
                    found.append((content["step"], marker.parent.name, bool(content.get("regular", True))))
                except (OSError, ValueError, KeyError, TypeError):
                    continue  # damaged: not a complete checkpoint
        return sorted(found)

    def newest(self) -> str:
        """The newest checkpoint with a marker, as a path for messages ("" when there is none)."""
        complete = self.complete()
        return str(self.root / complete[-1][1]) if complete else ""

    def save(self, engine, step: int, client_state: dict[str, Any], protect: str | None = None,
             rank_data: dict[str, Any] | None = None, regular: bool = True) -> str:
        """Every rank must call this (DeepSpeed saves each rank's shard). ``protect`` (the best checkpoint so far)
        survives pruning. ``rank_data``: this rank's own JSON state (its readers' positions), which DeepSpeed's
        client state, saved by rank 0 alone, cannot hold. ``regular``: on the ``checkpoint.every`` cycle (see
        ``regular``). A save that fails on any rank (a full disk) stops the job: no marker is written."""
        tag = tag_for(step)
        folder = self.root / tag
        error: BaseException | None = None
        try:
            # save_latest=False: DeepSpeed's 'latest' file is written by rank 0 alone just before its last barrier
            # (a failure there is the same mismatch as above); avmae finds checkpoints by their markers.
            with _save_errors_kept(engine) as failed:
                engine.save_checkpoint(str(self.root), tag=tag, client_state={**client_state, "step": step},
                                       save_latest=False)
            if failed:  # torch's message does not name the file
                path, err = failed[0]
                raise RuntimeError(f"{path}: {' '.join(str(err).split())}") from err
            write_text_atomically(folder / f"rng_rank{collectives.rank()}.json", json.dumps(rng_state()))
            if rank_data is not None:
                write_text_atomically(folder / f"data_rank{collectives.rank()}.json", json.dumps(rank_data))
        except Exception as err:  # DeepSpeed's torch.save raises RuntimeError on a full disk, not OSError
            error = err
        if all_ranks_ok(error is None) and self.is_main:
            try:
                files = describe_and_sync(folder)
                marker = {"step": step, "world_size": collectives.world_size(), "regular": regular, "files": files}
                write_text_atomically(folder / COMPLETE, json.dumps(marker, indent=1))
            except OSError as err:
                error = err
        if not all_ranks_ok(error is None):
            reason = f": {str(error).splitlines()[0]}" if error else " on another rank"
            raise JobStopped(Stop("checkpoint", step, (
                f"checkpoint {folder} (step {step}) could not be written{reason}; it has no completion marker; the "
                f"newest complete checkpoint is {self.newest() or 'none'}"))) from error
        if self.is_main:
            for old in self._prunable():
                if old != protect:
                    shutil.rmtree(self.root / old, ignore_errors=True)
        collectives.barrier()
        return tag

    def _prunable(self) -> list[str]:
        """The regular checkpoints beyond the newest ``keep`` (0 keeps all), and the off-cycle ones older than the
        newest regular one: an off-cycle checkpoint only bridges a resume to the next regular one. Counted among
        the regular ones, a save at a signal or at ``stop_after`` pushed a regular checkpoint out of ``keep`` and took
        its place in ``average_last``'s mean."""
        marked = self._marked()
        regular = [tag for _, tag, on_cycle in marked if on_cycle]
        newest_regular = max((step for step, _, on_cycle in marked if on_cycle), default=-1)
        kept = set(regular[-self.keep:] if self.keep > 0 else regular)
        return [tag for step, tag, on_cycle in marked
                if (on_cycle and tag not in kept) or (not on_cycle and step < newest_regular)]

    def _newest_sound(self) -> tuple[str | None, list[str]]:
        skipped = []
        for _, tag in reversed(self.complete()):
            problem = problem_with(self.root / tag)
            if not problem:
                return tag, skipped
            skipped.append(f"skipped checkpoint {self.root / tag}: {problem}")
        return None, skipped

    def resume(self, engine) -> tuple[dict[str, Any] | None, list[str]]:
        """Load the newest checkpoint that matches its marker, if any: its client state (with this rank's own
        ``rank_data`` where the checkpoint has it), and one line per newer checkpoint skipped (rank 0 checks, every
        rank loads the same one)."""
        choice: list[Any] = list(self._newest_sound()) if self.is_main else [None, []]
        tag, skipped = collectives.broadcast_object(choice, src=0)  # between our own ranks: not data from a file
        if tag is None:
            return None, skipped
        saved_world = json.loads((self.root / tag / COMPLETE).read_text()).get("world_size")
        if saved_world is not None and saved_world != collectives.world_size():
            # DeepSpeed refuses it too, deep in ZeRO's optimizer with a traceback: say it in one line, before loading
            raise ValueError(f"{self.root / tag} was written by {saved_world} ranks and this run has "
                             f"{collectives.world_size()}: ZeRO's partitioned optimizer state resumes only on as many "
                             f"ranks (relaunch with {saved_world}, or start a new run from its export with init)")
        path, client_state = engine.load_checkpoint(str(self.root), tag=tag)
        if path is None:
            raise RuntimeError(f"{self.root / tag} matches its marker but DeepSpeed could not load it")
        error: DamagedRankState | None = None
        try:
            client_state = self._own_state(tag, client_state)
        except DamagedRankState as err:
            error = err
        if not all_ranks_ok(error is None):  # every rank stops here, not only the one whose file is damaged
            raise error or DamagedRankState(f"{self.root / tag}: another rank's resume state is damaged (its line "
                                            "names the file); resume from an earlier checkpoint")
        return client_state, skipped

    def _own_state(self, tag: str, client_state: dict[str, Any]) -> dict[str, Any]:
        """This rank's random generators restored and its readers' positions added to ``client_state``."""
        own = self.root / tag / f"rng_rank{collectives.rank()}.json"
        if own.exists():  # absent in checkpoints written before the random state was kept as JSON
            restore_rng(own)
        data = self.root / tag / f"data_rank{collectives.rank()}.json"
        if data.exists():  # absent in checkpoints written before it, or for a rank the run did not have
            drawn = (client_state.get("samples") or {}).get("samples_drawn")
            client_state = {**client_state, "rank_data": read_positions(data, drawn if isinstance(drawn, int) else None)}
        return client_state

    def fp32_state_dict(self, tag: str) -> dict[str, torch.Tensor]:
        """The fp32 master weights of a checkpoint, gathered from every ZeRO partition (any stage)."""
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        state = get_fp32_state_dict_from_zero_checkpoint(str(self.root), tag=tag)
        return {k: v.contiguous() for k, v in state.items()}
