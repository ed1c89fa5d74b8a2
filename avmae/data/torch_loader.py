"""The CPU loader ("torch" backend): a PyTorch DataLoader over the shards, read through their DALI indexes (only the
members a sample needs, no webdataset pipeline), decoded by torchvision (libjpeg-turbo), batched inside its workers.
Frames leave the workers as uint8; the Loader normalises them on the device (a quarter of the bytes to move).

Training: each DataLoader worker plays one reader of the rank's TrainSchedule (schedule.py): an endless stream
over a disjoint share of the shards; the trainer decides how many steps to take, so every rank takes the same
number (docs/reference/libraries.md#every-rank-takes-the-same-number-of-steps).

Evaluation: the order of eval_order.py, which the DALI backend follows too.

Every sample is checked before it is decoded (checked.py); a bad one is skipped in training and kept in place,
invalid, in evaluation, and recorded in the batch's ``skipped`` list (faults.py). An error that ends a worker (a
reader past its skip budget, a store that stays unreachable) reaches the caller as the worker's own line.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset, default_collate, get_worker_info

from avmae.data.checked import SampleChecker
from avmae.data.config import AugmentConfig, DataConfig
from avmae.data.eval_order import EvalOrder
from avmae.data.faults import SampleError
from avmae.data.readers import open_shards, reader_rows
from avmae.data.samples import FrameDecodeError, decode_video, frame_members, label_tensors, training_frames
from avmae.data.schedule import TrainSchedule
from avmae.data.spec import DataSpec
from avmae.data.tar_reader import IndexedShard, SampleBlock
from avmae.shard.format import META_KEY
from avmae.storage import set_storage_limits


class ShardStream(IterableDataset):
    def __init__(self, spec: DataSpec, config: DataConfig, *, train: bool, rank: int, world: int,
                 augment: AugmentConfig | None = None):
        super().__init__()
        self.spec, self.config, self.train, self.augment = spec, config, train, augment
        self.rank, self.world = rank, world
        self.frames = frame_members(spec.features["num_frames"], config.num_frames, config.view, config.views,
                                    config.frame_stride)
        self.mean = config.audio_mean if config.audio_mean is not None else spec.logmel_mean
        self.std = config.audio_std if config.audio_std is not None else spec.logmel_std
        self.shards = open_shards(spec)
        self.checker = SampleChecker(spec)
        self.start_batch = 0  # training: the rank's batches already consumed (a resumed run continues after them)
        self.reader_draws: dict[int, int] = {}  # and its readers' draws before them, as its checkpoint recorded

    def _read(self, shard: IndexedShard, index: int, rng: random.Random, block: SampleBlock | None = None
              ) -> dict[str, Any]:
        frames = self.frames
        if self.train:
            frames = training_frames(self.spec.features["num_frames"], self.config.num_frames,
                                     self.augment.train_offsets, rng, self.config.frame_stride)
        sample = self.checker.read(shard, index, frames, block)
        try:
            video = decode_video([sample.members[name] for name in frames], self.config,
                                 self.spec.features["short_side"], self.augment, rng)
        except FrameDecodeError as err:  # past the JPEG structure checks: cannot come from our writer
            raise SampleError(shard.tar, sample.key, f"{frames[err.frame]}", "decode", str(err)) from err
        audio = (torch.from_numpy(sample.logmel.astype("float32")) - self.mean) / self.std
        return {"video": video, "audio": audio, "meta": sample.metadata}

    def _collate(self, rows: list[dict[str, Any]], valid: list[bool], skipped: list[dict[str, Any]],
                 **extra: Any) -> dict[str, Any]:
        metadata = [row["meta"] for row in rows]
        # default_collate stacks straight into shared memory inside a worker, sparing the copy the DataLoader
        # would otherwise make to hand the batch to the main process.
        return {"video": default_collate([row["video"] for row in rows]),
                "audio": default_collate([row["audio"] for row in rows]),
                **label_tensors(metadata, self.spec), "key": [m[META_KEY] for m in metadata],
                "valid": torch.tensor(valid), "skipped": skipped, **extra}

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        return (info.id, info.num_workers) if info else (0, 1)

    # --- training -------------------------------------------------------------------------------------------------

    def _train_batches(self) -> Iterator[dict[str, Any]]:
        """Batches of this worker's reader of the rank's training schedule. A resumed run starting at batch B lets
        worker w play reader (w + B) mod W, whose next batch is the rank's batch B + w."""
        worker, workers = self._worker()
        reader = (worker + self.start_batch) % workers
        schedule = TrainSchedule(self.shards, self.config, self.spec.label_counts, rank=self.rank, world=self.world,
                                 readers=workers)
        read = lambda draw: self._read(draw.shard, draw.index, random.Random(draw.seed), draw.block)  # noqa: E731
        rows, skips = reader_rows(schedule, reader, self.start_batch, self.reader_draws.get(reader), read)
        batch: list[dict[str, Any]] = []
        for row in rows:
            batch.append(row)
            if len(batch) == self.config.batch_size:
                yield self._collate(batch, [True] * len(batch), skips.take(), drawn=[reader, skips.position])
                batch = []

    # --- evaluation -----------------------------------------------------------------------------------------------

    def _eval_batches(self) -> Iterator[dict[str, Any]]:
        """This worker's batches (numbers w, w + W, ...) of the rank's range, in order, so the DataLoader's
        round-robin over workers hands them out in the global order."""
        worker, workers = self._worker()
        rng = random.Random(0)
        order = EvalOrder(self.shards, self.rank, self.world, self.config.batch_size,
                          lambda shard, index: self._read(shard, index, rng), worker)
        try:
            for number in range(worker, order.batches, workers):
                yield self._collate(*order.batch(number))
        finally:
            order.close()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        # In the worker process: a spawned one does not inherit the limits the main process set.
        set_storage_limits(self.config.storage_timeout_s, self.config.storage_retries)
        return self._train_batches() if self.train else self._eval_batches()


# torch re-raises a worker's error in the main process as "Caught NAME in DataLoader worker process N.\nOriginal
# Traceback ...", the worker's formatted traceback (torch/_utils.py ExceptionWrapper.reraise): its first line names
# only the class, and the worker's own line comes last, after the traceback's indented frame lines.
_CAUGHT_IN_WORKER = re.compile(r"Caught (\w+) (in DataLoader worker process \d+)\.\nOriginal Traceback")


def worker_line(err: BaseException) -> str | None:
    """The line a DataLoader worker's error was raised with, and which worker: None for an error that did not come
    from a worker."""
    text = str(err)
    caught = _CAUGHT_IN_WORKER.match(text)
    if caught is None:
        return None
    lines = text.splitlines()
    frames = [number for number, line in enumerate(lines) if line[:1].isspace()]
    own = [line for line in lines[frames[-1] + 1 if frames else 1:] if line.strip()]
    if not own:
        return None
    name, _, message = own[0].partition(": ")
    line = message if name.rsplit(".", 1)[-1] == caught.group(1) else own[0]
    return f"{line} ({caught.group(2)})"


class OneLineWorkerErrors(torch.utils.data.DataLoader):
    """A DataLoader whose workers' errors come out as the line the worker raised them with (worker_line), in an
    error of their own class where it takes one message (RuntimeError otherwise), so that a trainer's stop line
    names the shards and the budget, not only the class."""

    def __iter__(self) -> Iterator[Any]:
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except Exception as err:  # noqa: BLE001 -- re-raised, reworded only when it came from a worker
                line = worker_line(err)
                if line is None:
                    raise
                try:
                    again = type(err)(line)
                except Exception:  # noqa: BLE001 -- a class that takes other arguments (SampleError)
                    again = RuntimeError(line)
                raise again from err
            yield batch


def torch_dataloader(spec: DataSpec, config: DataConfig, *, train: bool, rank: int, world: int,
                     pin_memory: bool = False, start_batch: int = 0, reader_draws: dict[int, int] | None = None,
                     augment: AugmentConfig | None = None) -> torch.utils.data.DataLoader:
    set_storage_limits(config.storage_timeout_s, config.storage_retries)
    stream = ShardStream(spec, config, train=train, rank=rank, world=world, augment=augment)
    stream.start_batch, stream.reader_draws = start_batch, dict(reader_draws or {})
    workers = config.workers
    # Its own generator: a DataLoader draws its base seed from the global RNG otherwise, and a resumed run, whose
    # RNG state comes from the checkpoint, would then draw different masks than an uninterrupted one.
    return OneLineWorkerErrors(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                                       persistent_workers=train and workers > 0,
                                       prefetch_factor=2 if workers > 0 else None,
                                       generator=torch.Generator().manual_seed(config.seed + rank))
