"""The CPU loader ("webdataset" backend): WebDataset tar shards read through their DALI indexes (only the members
a sample needs), decoded in torch (torchvision's libjpeg-turbo decoder), batched inside DataLoader workers.
Frames leave the workers as uint8; the Loader normalises them on the device (a quarter of the bytes to move).

Training: each DataLoader worker plays one reader of the rank's TrainSchedule (schedule.py): an endless stream
over a disjoint share of the shards; the trainer decides how many steps to take, so every rank takes the same
number (engineering.md, "cross-cutting takeaways" 1).

Evaluation: rank r reads the contiguous range [N r / R, N (r + 1) / R) of the global sample order (DALI's split),
every rank yields the same number of batches, and the padding repeats the rank's last sample with ``valid`` False,
so each sample counts exactly once and collectives never wait on a rank that ran out.
"""

from __future__ import annotations

import bisect
import itertools
import logging
import math
import random
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import IterableDataset, default_collate, get_worker_info

from avmae.data.config import DataConfig
from avmae.data.samples import (decode_audio, decode_video, frame_members, label_tensors, parse_metadata,
                                 training_frames)
from avmae.data.spec import DataSpec
from avmae.data.schedule import TrainSchedule
from avmae.data.tar_reader import IndexedShard, SampleError
from avmae.shard.format import LOGMEL_MEMBER, META_KEY, METADATA_MEMBER, sample_members

log = logging.getLogger(__name__)


def eval_range(total: int, rank: int, world: int) -> tuple[int, int]:
    """DALI's shard of a reader: [floor(N r / R), floor(N (r + 1) / R))."""
    return total * rank // world, total * (rank + 1) // world


def eval_batches(total: int, world: int, batch_size: int) -> int:
    """Batches every rank yields in evaluation: enough for the largest rank's range."""
    largest = max(eval_range(total, r, world)[1] - eval_range(total, r, world)[0] for r in range(world))
    return max(1, math.ceil(largest / batch_size))


class ShardStream(IterableDataset):
    def __init__(self, spec: DataSpec, config: DataConfig, *, train: bool, rank: int, world: int):
        super().__init__()
        self.spec, self.config, self.train = spec, config, train
        self.rank, self.world = rank, world
        self.frames = frame_members(spec.features["num_frames"], config.num_frames, config.view, config.views)
        self.mean = config.audio_mean if config.audio_mean is not None else spec.logmel_mean
        self.std = config.audio_std if config.audio_std is not None else spec.logmel_std
        self.shards = [IndexedShard(s.tar, s.idx) for s in spec.shards]
        for shard, listed in zip(self.shards, spec.shards):
            if len(shard) != listed.samples:
                raise ValueError(f"{shard.tar}: its index lists {len(shard)} samples, the manifest {listed.samples}")
        self.bad_samples = 0
        self.start_batch = 0  # training: the rank's batches already consumed (a resumed run continues after them)

    def _read(self, shard: IndexedShard, index: int, rng: random.Random) -> dict[str, Any]:
        frames = self.frames
        if self.train:
            frames = training_frames(self.spec.features["num_frames"], self.config.num_frames,
                                     self.config.train_offsets, rng)
        members = shard.read(index, sample_members(frames))
        try:
            metadata = parse_metadata(members[METADATA_MEMBER])
            video = decode_video([members[name] for name in frames], self.config,
                                 self.spec.features["short_side"], self.train, rng)
            audio = decode_audio(members[LOGMEL_MEMBER], self.mean, self.std)
        except (ValueError, RuntimeError, OSError) as err:
            raise SampleError(f"{shard.tar}: sample {shard.keys[index]} cannot be decoded: {err}") from err
        return {"video": video, "audio": audio, "meta": metadata}

    def _skip(self, error: SampleError) -> None:
        self.bad_samples += 1
        log.warning("skipping %s (%d skipped by this reader)", error, self.bad_samples)

    def _collate(self, rows: list[dict[str, Any]], valid: list[bool]) -> dict[str, Any]:
        metadata = [row["meta"] for row in rows]
        # default_collate stacks straight into shared memory inside a worker, sparing the copy the DataLoader
        # would otherwise make to hand the batch to the main process.
        return {"video": default_collate([row["video"] for row in rows]),
                "audio": default_collate([row["audio"] for row in rows]),
                **label_tensors(metadata, self.spec), "key": [m[META_KEY] for m in metadata], "valid": torch.tensor(valid)}

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
        batch: list[dict[str, Any]] = []
        for draw in schedule.reader_draws(reader, self.start_batch):
            try:
                batch.append(self._read(draw.shard, draw.index, random.Random(draw.seed)))
            except SampleError as err:
                self._skip(err)
                continue
            if len(batch) == self.config.batch_size:
                yield self._collate(batch, [True] * len(batch))
                batch = []

    # --- evaluation -----------------------------------------------------------------------------------------------

    def _eval_batches(self) -> Iterator[dict[str, Any]]:
        """This worker's batches (numbers w, w + W, ...) of the rank's range, in order, so the DataLoader's
        round-robin over workers hands them out in the global order."""
        worker, workers = self._worker()
        first, end = eval_range(self.spec.samples, self.rank, self.world)
        if end == first:
            raise RuntimeError(f"rank {self.rank} has no evaluation sample: {self.spec.samples} samples for "
                               f"{self.world} ranks; use fewer ranks")
        starts = list(itertools.accumulate((len(shard) for shard in self.shards), initial=0))

        def locate(index: int) -> tuple[IndexedShard, int]:
            number = bisect.bisect_right(starts, index) - 1
            return self.shards[number], index - starts[number]

        size = self.config.batch_size
        rng = random.Random(0)
        last = self._read_or_none(*locate(end - 1), rng)  # the padding repeats the rank's last sample
        for number in range(worker, eval_batches(self.spec.samples, self.world, size), workers):
            indices = range(first + number * size, first + (number + 1) * size)
            rows = [self._read_or_none(*locate(i), rng) if i < end else last for i in indices]
            valid = [i < end and row is not None for i, row in zip(indices, rows)]
            good = next((row for row in rows if row is not None), None)
            if good is None:
                raise RuntimeError(f"rank {self.rank}: every sample of an evaluation batch is unreadable (see above)")
            yield self._collate([row or good for row in rows], valid)

    def _read_or_none(self, shard: IndexedShard, index: int, rng: random.Random) -> dict[str, Any] | None:
        """In evaluation a bad sample keeps its place, marked invalid, so every other sample still counts once."""
        try:
            return self._read(shard, index, rng)
        except SampleError as err:
            self._skip(err)
            return None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._train_batches() if self.train else self._eval_batches()


def webdataset_loader(spec: DataSpec, config: DataConfig, *, train: bool, rank: int, world: int,
                      pin_memory: bool = False, start_batch: int = 0) -> torch.utils.data.DataLoader:
    stream = ShardStream(spec, config, train=train, rank=rank, world=world)
    stream.start_batch = start_batch
    workers = config.workers
    # Its own generator: a DataLoader draws its base seed from the global RNG otherwise, and a resumed run, whose
    # RNG state comes from the checkpoint, would then draw different masks than an uninterrupted one.
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                                       persistent_workers=train and workers > 0,
                                       prefetch_factor=2 if workers > 0 else None,
                                       generator=torch.Generator().manual_seed(config.seed + rank))
