"""The Python external source that feeds DALI, in training and in evaluation: it reads each sample's members
through the shard index (one ``pread``), checks them (data/checked.py) and hands DALI only bytes that passed, with the
crop box and flip of each training draw, as a few dense arrays per batch (batch.py). The serial loader
calls it in the training process; feed.py runs one per training reader in DALI's worker processes."""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from avmae.data.checked import SampleChecker
from avmae.data.config import AugmentConfig, DataConfig
from avmae.data.crops import training_crop_box
from avmae.data.dali.batch import Row, dense_batch
from avmae.data.eval_order import EvalOrder
from avmae.data.readers import open_shards, reader_rows
from avmae.data.samples import frame_members, training_frames
from avmae.data.schedule import TrainSchedule
from avmae.data.spec import DataSpec


class CheckedSamples:
    """DALI external source: each call returns the next batch as batch.dense_batch's arrays: the frames'
    JPEG bytes, the log-mel (as stored), the crop box (zeros in evaluation: the graph centre-crops), the flip flag
    and the batch's serial number; its metadata, ``valid``, ``skipped`` and (training) ``drawn`` wait in
    ``self.pending``. ``reader_draws``: each reader's draws before ``start_batch``, as a checkpoint recorded them."""

    def __init__(self, spec: DataSpec, config: DataConfig, *, train: bool, rank: int, world: int, start_batch: int,
                 augment: AugmentConfig | None = None, reader_draws: dict[int, int] | None = None):
        self.config, self.train, self.stored_frames = config, train, spec.features["num_frames"]
        self.augment = augment
        self.frames = frame_members(spec.features["num_frames"], config.num_frames, config.view, config.views,
                                    config.frame_stride)
        self.checker = SampleChecker(spec)
        shards = open_shards(spec)
        self.serial = 0
        self.pending: dict[int, tuple[list[dict[str, Any]], list[bool], list[dict[str, Any]], list[int] | None]] = {}
        if train:
            # As many readers as the torch backend has workers, so both give the same stream for one config.
            self.readers = max(1, config.workers)
            schedule = TrainSchedule(shards, config, spec.label_counts, rank=rank, world=world, readers=self.readers)
            streams = [reader_rows(schedule, r, start_batch, (reader_draws or {}).get(r), self._draw)
                       for r in range(self.readers)]
            self.streams, self.skips = [rows for rows, _ in streams], [skips for _, skips in streams]
            self.batch = start_batch
        else:
            self.order = EvalOrder(shards, rank, world, config.batch_size, self._eval_row)
            self.batch = 0

    def _draw(self, draw) -> Row:
        rng = random.Random(draw.seed)  # drawn from in the torch backend's order: frames, crop box, flip
        frames = training_frames(self.stored_frames, self.config.num_frames, self.augment.train_offsets, rng,
                                 self.config.frame_stride)
        sample = self.checker.read(draw.shard, draw.index, frames, draw.block)
        height, width = sample.frame_size
        box = training_crop_box(height, width, self.config.crop_size, self.augment, rng)
        return sample, box, self.augment.flip and rng.random() < 0.5

    def _eval_row(self, shard, index) -> Row:
        return self.checker.read(shard, index, self.frames), (0, 0, 0, 0), False  # the graph centre-crops

    def __call__(self) -> list[np.ndarray]:
        drawn = None
        if self.train:
            reader = self.batch % self.readers
            rows, skipped = self.reader_rows(reader)
            valid, drawn = [True] * len(rows), [reader, self.skips[reader].position]
        else:
            if self.batch == self.order.batches:
                self.batch = 0  # the next pass (DALI resets after StopIteration) starts over
                raise StopIteration
            rows, valid, skipped = self.order.batch(self.batch)
        self.batch += 1
        self.serial += 1
        self.pending[self.serial] = ([sample.metadata for sample, _, _ in rows], valid, skipped, drawn)
        return dense_batch(rows, self.serial)

    def reader_rows(self, reader: int) -> tuple[list[Row], list[dict[str, Any]]]:
        """Training reader ``reader``'s next batch: its rows and the records of the samples it skipped on the way
        (its draws so far: ``self.skips[reader].position``)."""
        rows = [next(self.streams[reader]) for _ in range(self.config.batch_size)]
        return rows, self.skips[reader].take()
