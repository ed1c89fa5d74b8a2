"""The GPU loader: NVIDIA DALI decodes the JPEG frames with nvJPEG (``device="mixed"``); without a GPU the same
graph runs on the CPU (``device_id=None``, environment.md 3).

Samples reach DALI through a Python external source, in training and in evaluation: it reads each sample's
members through the shard index (one ``pread``), checks them (checked.py: CRC32, JPEG markers, log-mel shape and
finiteness) and only then hands the bytes to DALI (a few dense arrays per batch, dali_batch.py), so a bad sample is
skipped or marked invalid and recorded, the same way and for the same reasons as in the webdataset backend, and
DALI never stops on it. Training follows the rank's TrainSchedule (schedule.py) with each draw's crop box and flip
computed from its seed; evaluation follows eval_order.py. So both backends give the same samples, crops, order and ``skipped`` records. Labels, keys and
records stay in Python; DALI carries only a batch serial number to match them to its outputs (or, from worker
processes, each sample's note: dali_feed.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from avmae.data.config import AugmentConfig, DataConfig
from avmae.data.dali_feed import decode_notes, parallel_outputs, reader_feeds, start_method, workers_deaf_to_usr1
from avmae.data.dali_batch import DenseBatch, batch_types
from avmae.data.dali_source import CheckedSamples
from avmae.data.samples import frame_members, label_tensors
from avmae.data.spec import DataSpec
from avmae.shard.format import META_KEY


def _graph(spec: DataSpec, config: DataConfig, batch: DenseBatch, *, train: bool, device: str):
    """One graph for the CPU and the GPU: only the decoder's ``device`` ("cpu" or "mixed") differs. ``batch``: the
    external source's outputs (dali_batch.py)."""
    from nvidia.dali import fn, types

    decoded = [fn.decoders.image(jpeg, device=device, output_type=types.RGB) for jpeg in batch.jpegs]
    video = fn.stack(*decoded, axis=0, axis_name="F")  # (T, H, W, C): one geometry for every frame below
    crop = config.crop_size
    if train:
        roi_start, roi_end = batch.box()
        video = fn.resize(video, size=[crop, crop], roi_start=roi_start, roi_end=roi_end, roi_relative=False,
                          antialias=True)
        video = fn.flip(video, horizontal=batch.flip)
    else:
        if config.eval_short_side and config.eval_short_side != spec.features["short_side"]:
            video = fn.resize(video, resize_shorter=config.eval_short_side, antialias=True)
        video = fn.crop(video, crop=(crop, crop), crop_pos_x=0.5, crop_pos_y=0.5)
    video = fn.transpose(video, perm=[0, 3, 1, 2])  # (T, 3, H, W) uint8; the Loader normalises on the device
    audio_mean = config.audio_mean if config.audio_mean is not None else spec.logmel_mean
    audio_std = config.audio_std if config.audio_std is not None else spec.logmel_std
    audio = (fn.cast(batch.logmel, dtype=types.FLOAT) - audio_mean) / audio_std
    if device == "mixed":
        audio = audio.gpu()
    return video, audio


class DaliLoader:
    """Iterates batches in the loader contract. Training never ends (the trainer counts steps); evaluation gives
    every rank the same number of batches, with ``valid`` marking the padding and the bad samples."""

    def __init__(self, spec: DataSpec, config: DataConfig, *, train: bool, rank: int, world: int,
                 device_id: int | None, start_batch: int = 0, augment: AugmentConfig | None = None,
                 reader_draws: dict[int, int] | None = None):
        from nvidia.dali import pipeline_def
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        self.spec, self.train = spec, train
        device = "cpu" if device_id is None else "mixed"
        count = len(frame_members(spec.features["num_frames"], config.num_frames, config.view, config.views))
        types_ = batch_types(count, spec.features, notes=False)
        # Training with workers reads in DALI worker processes (dali_feed.py); evaluation, and data.workers: 0,
        # read here, in the serial external source.
        self.feeds = reader_feeds(spec, config, augment, rank=rank, world=world, start_batch=start_batch,
                                  reader_draws=reader_draws) if train and config.workers > 0 else []
        self.source = None if self.feeds else CheckedSamples(spec, config, train=train, rank=rank, world=world,
                                                             start_batch=start_batch, augment=augment,
                                                             reader_draws=reader_draws)
        workers = {"py_num_workers": len(self.feeds), "py_start_method": start_method()} if self.feeds else {}

        @pipeline_def(batch_size=config.batch_size, num_threads=max(1, config.workers), device_id=device_id,
                      seed=config.seed + rank, prefetch_queue_depth=2, **workers)
        def pipeline():
            from nvidia.dali import fn

            if not self.feeds:
                batch = DenseBatch(fn.external_source(source=self.source, num_outputs=len(types_), batch=True,
                                                      parallel=False, dtype=types_), count)
                return (*_graph(spec, config, batch, train=train, device=device), batch.serial)
            slots = []
            for feed in self.feeds:
                batch = DenseBatch(parallel_outputs(feed, batch_types(count, spec.features, notes=True)), count)
                slots += [*_graph(spec, config, batch, train=True, device=device), batch.note]
            return tuple(slots)

        self.pipe = pipeline()
        names = [f"{name}{j}" for j in range(len(self.feeds)) for name in ("video", "audio", "note")] or \
            ["video", "audio", "serial"]
        with workers_deaf_to_usr1():  # the feed workers start here
            self.pipe.build()
            self.iterator = DALIGenericIterator([self.pipe], names, last_batch_policy=LastBatchPolicy.DROP,
                                                auto_reset=not train)

    def _batch(self, video: torch.Tensor, audio: torch.Tensor, metadata: list[dict[str, Any]], valid: list[bool],
               skipped: list[dict[str, Any]], drawn: list[int] | None) -> dict[str, Any]:
        labels = {name: t.to(video.device) for name, t in label_tensors(metadata, self.spec).items()}
        return {"video": video, "audio": audio, **labels, "key": [m[META_KEY] for m in metadata],
                "valid": torch.tensor(valid), "skipped": skipped, **({"drawn": drawn} if drawn else {})}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for data in self.iterator:
            data = data[0]
            if not self.feeds:
                yield self._batch(data["video"], data["audio"], *self.source.pending.pop(int(data["serial"][0])))
                continue
            for j in range(len(self.feeds)):  # the rank's next batches, in order (dali_feed.reader_slots)
                metadata, skipped, drawn = decode_notes(data[f"note{j}"])
                yield self._batch(data[f"video{j}"], data[f"audio{j}"], metadata, [True] * len(metadata), skipped,
                                  drawn)
