"""The CPU loader: tar shards read with webdataset, decoded in torch (torchvision's JPEG decoder), batched inside
DataLoader workers.

Training: an endless stream per (rank, worker) over a disjoint share of the shards (or of the samples, when there
are fewer shards than readers), reshuffled every epoch from (seed, rank, worker, epoch); the trainer decides how
many steps to take, so every rank takes the same number (engineering.md, "cross-cutting takeaways" 1).

Evaluation: rank r reads the contiguous range [N r / R, N (r + 1) / R) of the global sample order (DALI's split),
every rank yields the same number of batches, and the padding repeats the rank's last sample with ``valid`` False,
so each sample counts exactly once and collectives never wait on a rank that ran out.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Iterator
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import IterableDataset, get_worker_info

from avmae.data.config import DataConfig
from avmae.data.samples import decode_audio, decode_video, frame_members, label_tensors, parse_metadata
from avmae.data.spec import DataSpec

log = logging.getLogger(__name__)


class SampleError(ValueError):
    """A sample that cannot be used; the message names its shard and key."""


class ReadStats:
    """Counts of what was skipped, logged as it happens (per worker)."""

    def __init__(self):
        self.bad_samples = 0
        self.bad_shards = 0


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
        self.frames = frame_members(spec.features["num_frames"], config.num_frames)
        self.mean = config.audio_mean if config.audio_mean is not None else spec.logmel_mean
        self.std = config.audio_std if config.audio_std is not None else spec.logmel_std
        self.stats = ReadStats()
        self.epoch_offset = 0  # a resumed run continues with fresh epochs instead of replaying the first ones

    # --- reading --------------------------------------------------------------------------------------------------

    def _handler(self, error: Exception) -> bool:
        """webdataset's error hook: a damaged tar is logged (with its file) and skipped, never fatal."""
        self.stats.bad_shards += 1
        log.warning("skipping the rest of a damaged shard: %s", error)
        return True

    def _samples(self, shard_paths: list[str]) -> Iterator[dict[str, Any]]:
        source = [{"url": path} for path in shard_paths]
        yield from wds.tarfile_to_samples(handler=self._handler)(iter(source))

    def _decode(self, sample: dict[str, Any], rng: random.Random) -> dict[str, Any]:
        where = f"{sample.get('__url__', '?')}: sample {sample.get('__key__', '?')}"
        missing = [name for name in [*self.frames, "logmel.npy", "json"] if name not in sample]
        if missing:
            raise SampleError(f"{where} lacks members {missing}")
        try:
            metadata = parse_metadata(sample["json"])
            video = decode_video([sample[name] for name in self.frames], self.config,
                                 self.spec.features["short_side"], self.train, rng)
            audio = decode_audio(sample["logmel.npy"], self.mean, self.std)
        except (ValueError, RuntimeError, OSError) as err:
            raise SampleError(f"{where} cannot be decoded: {err}") from err
        return {"video": video, "audio": audio, "meta": metadata}

    def _collate(self, decoded: list[dict[str, Any]], valid: list[bool]) -> dict[str, Any]:
        metadata = [d["meta"] for d in decoded]
        return {"video": torch.stack([d["video"] for d in decoded]), "audio": torch.stack([d["audio"] for d in decoded]),
                **label_tensors(metadata, self.spec), "key": [m["key"] for m in metadata],
                "valid": torch.tensor(valid)}

    # --- training -------------------------------------------------------------------------------------------------

    def _worker(self) -> tuple[int, int]:
        info = get_worker_info()
        return (info.id, info.num_workers) if info else (0, 1)

    def _train_batches(self) -> Iterator[dict[str, Any]]:
        worker, workers = self._worker()
        slots, slot = self.world * workers, self.rank * workers + worker
        shards = list(self.spec.shards)
        if len(shards) >= slots:
            mine, keep = shards[slot::slots], None
        else:  # fewer shards than readers: split by sample position instead, still disjoint
            mine, keep = shards, slot
        offsets = {}
        position = 0
        for shard in shards:
            offsets[shard.tar] = position
            position += shard.samples
        buffer: list[dict[str, Any]] = []
        batch: list[dict[str, Any]] = []
        epoch = self.epoch_offset
        while True:
            rng = random.Random(f"{self.config.seed}:{self.rank}:{worker}:{epoch}")
            order = [s.tar for s in mine]
            rng.shuffle(order)
            seen_in_shard: dict[str, int] = {}
            kept = 0
            for sample in self._samples(order):
                url = sample["__url__"]
                index = seen_in_shard.get(url, 0)
                seen_in_shard[url] = index + 1
                if keep is not None and (offsets[url] + index) % slots != keep:
                    continue
                kept += 1
                # Shuffle buffer: raw bytes wait here, decoding happens on the way out.
                buffer.append(sample)
                if len(buffer) < self.config.shuffle_buffer:
                    continue
                picked = buffer.pop(rng.randrange(len(buffer)))
                batch = self._add(batch, picked, rng)
                if len(batch) == self.config.batch_size:
                    yield self._collate(batch, [True] * len(batch))
                    batch = []
            epoch += 1
            if kept == 0:
                raise RuntimeError(f"rank {self.rank} worker {worker} read no sample in a whole pass over "
                                   f"{len(order)} shards ({self.spec.samples} samples for {slots} readers)")

    def _add(self, batch: list, sample: dict[str, Any], rng: random.Random) -> list:
        try:
            batch.append(self._decode(sample, rng))
        except SampleError as err:
            self.stats.bad_samples += 1
            log.warning("skipping %s (%d skipped so far)", err, self.stats.bad_samples)
        return batch

    # --- evaluation -----------------------------------------------------------------------------------------------

    def _eval_batches(self) -> Iterator[dict[str, Any]]:
        """This worker's batches (numbers w, w + W, ...) of the rank's range, streamed in order, so the DataLoader's
        round-robin over workers hands them out in the global order."""
        worker, workers = self._worker()
        first, end = eval_range(self.spec.samples, self.rank, self.world)
        if end == first:
            raise RuntimeError(f"rank {self.rank} has no evaluation sample: {self.spec.samples} samples for "
                               f"{self.world} ranks; use fewer ranks")
        batches = eval_batches(self.spec.samples, self.world, self.config.batch_size)
        size = self.config.batch_size
        mine = set(range(worker, batches, workers))
        rng = random.Random(0)
        rows: list[dict[str, Any]] = []
        last_real = None
        position = 0
        for shard in self.spec.shards:
            if position >= end or position + shard.samples <= first:  # no sample of this rank: not even opened
                position += shard.samples
                continue
            for offset, sample in enumerate(self._samples([shard.tar])):
                index = position + offset
                number = (index - first) // size
                if not first <= index < end or (number not in mine and index != end - 1):
                    continue
                try:
                    decoded = self._decode(sample, rng)
                except SampleError as err:
                    self.stats.bad_samples += 1
                    log.warning("evaluation: %s; counted as invalid", err)
                    decoded = None
                if index == end - 1:
                    last_real = decoded  # the padding repeats it
                if number in mine:
                    rows.append(decoded)
                    if len(rows) == size:
                        yield self._collate_eval(rows, [True] * size)
                        rows = []
            position += shard.samples
        real_batches = math.ceil((end - first) / size)
        if rows:  # the rank's last, partial batch
            yield self._collate_eval(rows + [last_real] * (size - len(rows)),
                                     [True] * len(rows) + [False] * (size - len(rows)))
        for number in sorted(mine):
            if number >= real_batches:  # ranks with fewer samples still yield as many batches as the others
                yield self._collate_eval([last_real] * size, [False] * size)

    def _collate_eval(self, rows: list, valid: list[bool]) -> dict[str, Any]:
        """A sample that could not be decoded keeps its place as an invalid copy of a good one."""
        good = next((row for row in rows if row is not None), None)
        if good is None:
            raise RuntimeError(f"rank {self.rank}: a whole evaluation batch is unreadable; see the warnings above")
        return self._collate([row or good for row in rows], [ok and row is not None for row, ok in zip(rows, valid)])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self._train_batches() if self.train else self._eval_batches()


def webdataset_loader(spec: DataSpec, config: DataConfig, *, train: bool, rank: int, world: int,
                      pin_memory: bool = False) -> torch.utils.data.DataLoader:
    stream = ShardStream(spec, config, train=train, rank=rank, world=world)
    workers = config.workers
    return torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                                       persistent_workers=train and workers > 0,
                                       prefetch_factor=2 if workers > 0 else None)
