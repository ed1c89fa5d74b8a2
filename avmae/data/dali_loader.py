"""The GPU loader: NVIDIA DALI decodes the JPEG frames with nvJPEG (``device="mixed"``); without a GPU the same
graph runs on the CPU (``device_id=None``, environment.md 3).

Training samples come from the rank's TrainSchedule (schedule.py), the one the webdataset backend follows: a
Python external source reads each drawn sample's members through the shard index (one ``pread``) and computes
its crop box and flip from the draw's seed, and DALI decodes, crops, resizes and flips. So both backends train
on the same samples with the same crops, class-balanced sampling works in both, and a resumed run continues
the exact stream. Evaluation reads with ``fn.readers.webdataset`` over the tars and their ``.idx`` files: DALI
splits the samples into contiguous per-rank ranges and pads every rank to the same length by repeating its last
sample, which comes out with ``valid`` False. Both end in the same frame/audio graph, which mirrors the
webdataset loader step for step.
"""

from __future__ import annotations

import io
import logging
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from PIL import Image

from avmae.data.config import DataConfig
from avmae.data.samples import frame_members, label_tensors, parse_metadata, random_crop_box, training_frames
from avmae.data.schedule import TrainSchedule
from avmae.data.spec import DataSpec
from avmae.data.tar_reader import IndexedShard, SampleError
from avmae.shard.format import LOGMEL_MEMBER, META_KEY, METADATA_MEMBER, sample_members

log = logging.getLogger(__name__)


class ScheduledSamples:
    """DALI external source for training: each call returns the next batch of the rank's schedule as lists (one
    per output) of per-sample arrays: the frames' JPEG bytes (at the draw's temporal offset), the log-mel ``.npy``
    bytes, the JSON (zero-padded to one length), the crop box's top-left and bottom-right corners (pixels) and the
    flip flag."""

    def __init__(self, spec: DataSpec, config: DataConfig, *, rank: int, world: int, start_batch: int):
        self.config, self.stored_frames = config, spec.features["num_frames"]
        self.json_size = spec.max_member_size(METADATA_MEMBER)
        shards = [IndexedShard(s.tar, s.idx) for s in spec.shards]
        # As many readers as the webdataset backend has workers, so both give the same stream for one config.
        self.readers = max(1, config.workers)
        schedule = TrainSchedule(shards, config, spec.label_counts, rank=rank, world=world, readers=self.readers)
        self.streams = [schedule.reader_draws(r, start_batch) for r in range(self.readers)]
        self.batch = start_batch
        self.bad_samples = 0

    def _sample(self, shard: IndexedShard, index: int, seed: str) -> list[np.ndarray]:
        rng = random.Random(seed)  # drawn from in the webdataset backend's order: frames, crop box, flip
        frames = training_frames(self.stored_frames, self.config.num_frames, self.config.train_offsets, rng)
        members = shard.read(index, sample_members(frames))
        width, height = Image.open(io.BytesIO(members[frames[0]])).size  # header only, no decode
        top, left, h, w = random_crop_box(height, width, self.config.crop_scale, self.config.crop_ratio, rng)
        flip = self.config.flip and rng.random() < 0.5
        meta = np.zeros(self.json_size, dtype=np.uint8)
        meta[:len(members[METADATA_MEMBER])] = np.frombuffer(members[METADATA_MEMBER], dtype=np.uint8)
        return [*(np.frombuffer(members[name], dtype=np.uint8) for name in frames),
                np.frombuffer(members[LOGMEL_MEMBER], dtype=np.uint8), meta,
                np.array([top, left], dtype=np.float32), np.array([top + h, left + w], dtype=np.float32),
                np.array(int(flip), dtype=np.int32)]

    def __call__(self) -> list[list[np.ndarray]]:
        stream = self.streams[self.batch % self.readers]
        self.batch += 1
        rows = []
        while len(rows) < self.config.batch_size:
            draw = next(stream)
            try:
                rows.append(self._sample(draw.shard, draw.index, draw.seed))
            except (SampleError, OSError) as err:  # OSError: PIL cannot read the frame's header
                self.bad_samples += 1
                log.warning("skipping %s: %s (%d skipped by this rank)", draw.shard.keys[draw.index], err,
                            self.bad_samples)
        return [list(column) for column in zip(*rows)]


def _scheduled_inputs(source: ScheduledSamples, count: int):
    from nvidia.dali import fn, types

    outputs = fn.external_source(source=source, num_outputs=count + 5, batch=True, parallel=False,
                                 dtype=[types.UINT8] * (count + 2) + [types.FLOAT, types.FLOAT, types.INT32])
    return outputs[:count], outputs[count], outputs[count + 1], outputs[count + 2:]


def _reader_inputs(spec: DataSpec, frames: list[str], *, rank: int, world: int):
    from nvidia.dali import fn

    outputs = fn.readers.webdataset(
        paths=[s.tar for s in spec.shards], index_paths=[s.idx for s in spec.shards],
        ext=sample_members(frames), missing_component_behavior="skip", random_shuffle=False,
        shard_id=rank, num_shards=world, pad_last_batch=True, stick_to_shard=True, name="reader")
    count = len(frames)
    # JSON lengths differ per sample, and DALI batches must be dense: pad to the longest in these shards.
    meta = fn.pad(outputs[count + 1], fill_value=0, shape=[spec.max_member_size(METADATA_MEMBER)])
    return outputs[:count], outputs[count], meta


def _graph(spec: DataSpec, config: DataConfig, *, frames: list[str], source: ScheduledSamples | None,
           rank: int, world: int, gpu: bool):
    from nvidia.dali import fn, types

    if source is not None:
        jpegs, logmel, meta, (crop_start, crop_end, flip) = _scheduled_inputs(source, len(frames))
    else:
        jpegs, logmel, meta = _reader_inputs(spec, frames, rank=rank, world=world)
    decoded = [fn.decoders.image(jpeg, device="mixed" if gpu else "cpu", output_type=types.RGB) for jpeg in jpegs]
    video = fn.stack(*decoded, axis=0, axis_name="F")  # (T, H, W, C): one geometry for every frame below
    crop = config.crop_size
    if source is not None:
        video = fn.resize(video, size=[crop, crop], roi_start=crop_start, roi_end=crop_end, roi_relative=False,
                          antialias=True)
        video = fn.flip(video, horizontal=flip)
    else:
        if config.eval_short_side and config.eval_short_side != spec.features["short_side"]:
            video = fn.resize(video, resize_shorter=config.eval_short_side, antialias=True)
        video = fn.crop(video, crop=(crop, crop), crop_pos_x=0.5, crop_pos_y=0.5)
    video = fn.transpose(video, perm=[0, 3, 1, 2])  # (T, 3, H, W) uint8; the Loader normalises on the device
    audio_mean = config.audio_mean if config.audio_mean is not None else spec.logmel_mean
    audio_std = config.audio_std if config.audio_std is not None else spec.logmel_std
    audio = (fn.cast(fn.decoders.numpy(logmel), dtype=types.FLOAT) - audio_mean) / audio_std
    if gpu:
        audio = audio.gpu()
    return video, audio, meta


class DaliLoader:
    """Iterates batches in the loader contract. Training never ends (the trainer counts steps); evaluation gives
    every rank the same number of batches, with ``valid`` marking the padding."""

    def __init__(self, spec: DataSpec, config: DataConfig, *, train: bool, rank: int, world: int,
                 device_id: int | None, start_batch: int = 0):
        from nvidia.dali import pipeline_def
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        self.spec, self.train = spec, train
        frames = frame_members(spec.features["num_frames"], config.num_frames, config.view, config.views)
        self.source = (ScheduledSamples(spec, config, rank=rank, world=world, start_batch=start_batch)
                       if train else None)

        @pipeline_def(batch_size=config.batch_size, num_threads=max(1, config.workers), device_id=device_id,
                      seed=config.seed + rank, prefetch_queue_depth=2)
        def pipeline():
            return _graph(spec, config, frames=frames, source=self.source, rank=rank, world=world,
                          gpu=device_id is not None)

        self.pipe = pipeline()
        self.pipe.build()
        if train:  # the schedule never ends: the trainer counts the steps
            self.iterator = DALIGenericIterator([self.pipe], ["video", "audio", "meta"],
                                                last_batch_policy=LastBatchPolicy.DROP)
        else:
            self.iterator = DALIGenericIterator([self.pipe], ["video", "audio", "meta"], reader_name="reader",
                                                last_batch_policy=LastBatchPolicy.FILL, auto_reset=True)

    def __len__(self) -> int:
        return len(self.iterator)

    def _batch(self, data: dict[str, torch.Tensor], seen: set[str]) -> dict[str, Any]:
        metadata = [parse_metadata(row.numpy()) for row in data["meta"].cpu()]
        keys = [m[META_KEY] for m in metadata]
        # FILL repeats the rank's last sample: a key seen before in this pass is padding.
        valid = []
        for key in keys:
            valid.append(key not in seen)
            seen.add(key)
        labels = {name: t.to(data["video"].device) for name, t in label_tensors(metadata, self.spec).items()}
        return {"video": data["video"], "audio": data["audio"], **labels, "key": keys,
                "valid": torch.tensor(valid) if not self.train else torch.ones(len(keys), dtype=torch.bool)}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            seen: set[str] = set()
            for data in self.iterator:
                yield self._batch(data[0], seen)
            if not self.train:
                return
