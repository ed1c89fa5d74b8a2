"""DALI's training feed in worker processes, so that reading and checking samples costs the training process nothing.

The serial feed (source.CheckedSamples, ``parallel=False``) runs in the training process, one thread under the
GIL: its reads and checks compete with the step for that process's CPU. Here each of the rank's training readers
(data/schedule.py) becomes one DALI parallel external source over a ``ReaderFeed``. An iterable source is stateful, so
DALI gives it a dedicated worker process and takes its batches in order: the reader's draws, skips and records are
exactly those of the serial feed, and R readers read in R processes at once. Each pipeline iteration takes one batch
from every reader; slot j holds reader (start_batch + j) mod R, so the iteration's R batches are the rank's next R
batches in the serial order, whatever batch the stream resumed at.

A batch's metadata, skip records and reader position are made in the worker, so they travel with it through DALI
as a "note" per sample, after its log-mel in the batch's payload (batch.py): the JSON of [metadata, records,
drawn], the records and the reader's [reader, draws so far] (data/faults.py) on the batch's first sample only, then
zeros (JSON never holds a NUL byte).
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from avmae.data.config import AugmentConfig, DataConfig
from avmae.data.dali.batch import dense_batch
from avmae.data.dali.source import CheckedSamples
from avmae.data.host_memory import keep_large_allocations
from avmae.data.spec import DataSpec
from avmae.storage import set_storage_limits


def reader_slots(readers: int, start_batch: int) -> list[int]:
    """The reader in each slot of an iteration: the rank's batch start_batch + j comes from reader
    (start_batch + j) mod R (data/schedule.py), so the slots read in order give the serial feed's order."""
    return [(start_batch + j) % readers for j in range(readers)]


@contextmanager
def workers_deaf_to_usr1() -> Iterator[None]:
    """Start DALI's feed workers (pipeline build) inside this: they begin life with SIGUSR1 blocked. SLURM's
    ``--signal=USR1@300`` (the recipes' warning before the time limit) reaches every process of the job step, and a
    worker keeps the default action, to die (spawned ones always; forked ones because the trainer installs its
    handler after the loader): the rank then finds its loader broken instead of stopping at the step with a
    checkpoint. The mask is inherited through fork and kept across a spawn's exec; the training process's own mask
    is restored at once. SIGTERM is left alone: DALI ends a worker that does not stop by itself with it."""
    if not hasattr(signal, "pthread_sigmask"):  # pragma: no cover - not POSIX
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


# prctl(2) option (linux/prctl.h): the signal the kernel sends this process when the thread that forked it ends.
_PR_SET_PDEATHSIG = 1
_starting_for: int | None = None  # the pid of the process starting feed workers right now (workers_die_with_parent)


def die_with_parent(parent: int) -> None:
    """In a feed worker: have Linux SIGKILL it when ``parent`` (the training process) ends, however it ends. A worker
    outliving its rank (SIGKILL, or SIGTERM from torchrun or SLURM: the rank runs no exit handler) would be re-parented
    to init and keep its memory, shared memory and shard files. SIGKILL: a worker's end needs no clean-up (its shared
    memory is DALI's memfd, freed with the last reference), and a blocked or handled signal would not end it. The
    kernel sends it when the thread that started the worker ends: DALI starts them from the thread that builds the
    pipeline, the training process's main thread."""
    if not sys.platform.startswith("linux"):  # pragma: no cover - PR_SET_PDEATHSIG is Linux's
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed in a DALI feed worker")
    if os.getppid() != parent:  # the parent ended before the request: nobody will send the signal
        os._exit(1)


def _after_fork_in_child() -> None:
    if _starting_for is not None and os.getppid() == _starting_for:
        die_with_parent(_starting_for)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@contextmanager
def workers_die_with_parent() -> Iterator[None]:
    """Start DALI's feed workers (pipeline build) inside this: a worker forked from this process meanwhile asks to
    die with it (die_with_parent), at once after the fork; a spawned one does when it unpickles its ReaderFeed."""
    global _starting_for
    _starting_for = os.getpid()
    # A forked worker inherits the parent's objects; were a garbage cycle holding an earlier DALI pipeline collected
    # there, its finaliser would shut down the copy of that pipeline's executor, whose locks were copied in a state no
    # thread of the child will change: the worker hangs (seen: two workers stuck in Executor2's destructor). So the
    # parent collects its garbage first and freezes what is left (Python's gc.freeze documentation: freeze before a
    # fork) for the build: a child never collects the objects frozen at its fork.
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        _starting_for = None


def start_method() -> str:
    """fork starts workers without re-importing torch, but a process whose CUDA is initialised cannot fork safely
    (DALI refuses): then spawn, which pickles the ReaderFeed (it holds only the spec and the configs)."""
    return "spawn" if torch.cuda.is_initialized() else "fork"


def encode_note(metadata: dict[str, Any], skipped: list[dict[str, Any]], drawn: list[int] | None) -> bytes:
    return json.dumps([metadata, skipped, drawn]).encode("utf-8")


def decode_notes(notes: list[bytes]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[int] | None]:
    """A batch's (metadata per row, records of the samples skipped before it, its reader's [reader, draws]) from its
    notes (batch.unpack_payload)."""
    metadata, skipped, drawn = [], [], None
    for note in notes:
        meta, records, position = json.loads(note)
        metadata.append(meta)
        skipped.extend(records)
        drawn = drawn or position
    return metadata, skipped, drawn


# DALI re-raises a worker's error as a bare Exception holding the worker's formatted traceback after this line
# (nvidia/dali/_multiproc/pool.py, handle_error), the error's class lost on the way (RuntimeError).
_WORKER_TRACEBACK = "Exception traceback received from worker thread:"
WORKER_SUFFIX = " (in a DALI feed worker)"


def worker_error(err: BaseException) -> BaseException | None:
    """The error a feed worker raised, from DALI's wrapping of it: its own class (an avmae or built-in error that
    takes one message) with the line it was raised with, naming the worker, so that a trainer's stop line says what
    stopped the reader (a skip budget: the shards and the budget), not a 60-line traceback; RuntimeError with the
    class's name where the class cannot be rebuilt; None for an error that did not come from a feed worker."""
    text = str(err)
    if _WORKER_TRACEBACK not in text:
        return None
    own = [line for line in text.split(_WORKER_TRACEBACK, 1)[1].splitlines() if line.strip() and not line[0].isspace()]
    if not own:
        return None
    last = own[-1]  # the traceback's last unindented line: "module.Class: message"
    name, _, message = last.partition(": ")
    module, _, cls_name = name.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module or "builtins"), cls_name) \
            if module in ("", "builtins") or module.startswith("avmae.") else None
        if isinstance(cls, type) and issubclass(cls, Exception):
            return cls(message + WORKER_SUFFIX)
    except Exception:  # noqa: BLE001 - a class that takes other arguments: the line, as a RuntimeError
        pass
    return RuntimeError(last + WORKER_SUFFIX)


@contextmanager
def worker_errors_in_one_line() -> Iterator[None]:
    """Run DALI's pipeline (the iterator's prefetch, each batch) inside this: a feed worker's error comes out as
    worker_error makes it, its DALI wrapping dropped."""
    try:
        yield
    except Exception as err:
        found = worker_error(err)
        if found is None:
            raise
        raise found from None


class ReaderFeed:
    """One training reader's batches, endlessly, as dense arrays with their notes (dense_batch). Built in the worker on
    the first ``next``: the shards are opened there, and only the spec and configs are pickled."""

    def __init__(self, spec: DataSpec, config: DataConfig, augment: AugmentConfig | None, *, rank: int, world: int,
                 reader: int, start_batch: int, reader_draws: dict[int, int] | None = None):
        self.spec, self.config, self.augment = spec, config, augment
        self.rank, self.world, self.reader, self.start_batch = rank, world, reader, start_batch
        self.reader_draws = dict(reader_draws or {})
        self.parent = os.getpid()

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled in a spawned worker (start_method): first of all, die with the process that started it."""
        self.__dict__.update(state)
        die_with_parent(self.parent)

    def __iter__(self) -> Iterator[list[np.ndarray]]:
        keep_large_allocations()  # in this worker process: a spawned worker does not inherit the parent's setting
        set_storage_limits(self.config.storage_timeout_s, self.config.storage_retries)  # nor its storage limits
        samples = CheckedSamples(self.spec, self.config, train=True, rank=self.rank, world=self.world,
                                 start_batch=self.start_batch, augment=self.augment, reader_draws=self.reader_draws)
        while True:
            rows, skipped = samples.reader_rows(self.reader)
            drawn = [self.reader, samples.skips[self.reader].position]
            notes = [encode_note(sample.metadata, skipped, drawn) if i == 0 else encode_note(sample.metadata, [], None)
                     for i, (sample, _, _) in enumerate(rows)]
            yield dense_batch(rows, 0, notes)


def reader_feeds(spec: DataSpec, config: DataConfig, augment: AugmentConfig | None, *, rank: int, world: int,
                 start_batch: int, reader_draws: dict[int, int] | None = None) -> list[ReaderFeed]:
    """One feed per slot (as many readers as the torch backend has workers, as in the serial feed)."""
    return [ReaderFeed(spec, config, augment, rank=rank, world=world, reader=reader, start_batch=start_batch,
                       reader_draws=reader_draws)
            for reader in reader_slots(max(1, config.workers), start_batch)]


def parallel_outputs(feed: ReaderFeed, types_: list) -> list:
    """The external source over one feed, in a worker of its own: dense_batch's outputs with the notes in the payload
    (types_: batch_types()). Dense arrays go through the worker's shared memory into DALI without a copy
    (no_copy, the parallel default)."""
    from nvidia.dali import fn

    return fn.external_source(source=feed, num_outputs=len(types_), batch=True, parallel=True, prefetch_queue_depth=2,
                              dtype=types_)
