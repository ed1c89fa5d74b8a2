"""The GPU loader: NVIDIA DALI decodes the JPEG frames with nvJPEG (``device="mixed"``); without a GPU the same
graph runs on the CPU (``device_id=None``).

Samples reach DALI through a Python external source, in training and in evaluation: it reads each sample's
members through the shard index (one ``pread``), checks them (data/checked.py: CRC32, JPEG markers, log-mel shape and
finiteness) and only then hands the bytes to DALI (three dense arrays per batch, batch.py), so a bad sample is
skipped or marked invalid and recorded, the same way and for the same reasons as in the torch backend, and
DALI never stops on it. Training follows the rank's TrainSchedule (data/schedule.py) with each draw's crop box and flip
computed from its seed; evaluation follows data/eval_order.py. So both backends give the same samples, crops, order and
``skipped`` records. Labels, keys and records stay in Python; DALI carries only a batch serial number to match them
to its outputs (or, from worker processes, each sample's note: feed.py).

The graph is sized by operators, not by frames: a batch's B*T frames are the rows of one DALI batch, so one decoder,
one resize (or resize and crop) and one flip handle them all, and the frames become (B, T, 3, H, W) again in torch, a
view. Each DALI operator instance owns its resources (the decoder: a thread pool of ``num_threads`` and, ``mixed``,
nvJPEG's pinned host and device buffers per thread), so a graph with one decoder per frame position would hold T
times as many. The log-mel rides in the frames' rows as bytes (batch.py) and is normalised here, as the
torch backend does it.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from typing import Any

import torch

from avmae.data.config import AugmentConfig, DataConfig
from avmae.data.dali.feed import (decode_notes, parallel_outputs, reader_feeds, start_method, worker_errors_in_one_line,
                                  workers_deaf_to_usr1, workers_die_with_parent)
from avmae.data.dali.batch import HEADER, DenseBatch, batch_types, unpack_payload
from avmae.data.dali.source import CheckedSamples
from avmae.data.samples import frame_members, label_tensors
from avmae.data.spec import DataSpec
from avmae.shard.format import META_KEY


# nvJPEG's per-thread scratch is sized for the largest image a decoder thread meets (DALI's fn.decoders.image
# documentation: device_memory_padding, host_memory_padding; defaults 16 MiB and 8 MiB, sized for photographs).
# Frames are stored at the shard's short side; 16:9 is the widest common video frame, so its RGB bytes bound what a
# thread decodes; a wider frame costs one reallocation, not a failure.
_WIDEST_ASPECT = 16 / 9
# Share of the JPEGs given to the A100/H100 hardware JPEG decoder. 0.65 is DALI's default, tuned on an A100 with
# ImageNet photographs (NVIDIA's blog "Loading Data Fast with DALI and the New Hardware JPEG Decoder in NVIDIA A100
# GPUs"); the best share for small video frames is for a GPU run to measure, and only a GPU reads it.
HW_DECODER_LOAD = 0.65
# Host threads per pipeline: on a CPU they decode, resize and flip; with ``mixed`` they do the host side of nvJPEG's
# decode (Huffman decoding of what the hardware decoder does not take) and the CPU operators. The feed workers and
# the training process need the rest of the rank's cores, so the pipeline takes what they leave, at most 4.
MAX_PIPELINE_THREADS = 4


def pipeline_threads(workers: int) -> int:
    """DALI threads for a rank whose process may run on ``os.sched_getaffinity`` cores (SLURM binds a task to its
    share of a node) and that starts ``workers`` feed worker processes; one core stays with the training process."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(MAX_PIPELINE_THREADS, cores - workers - 1))


def decoder_settings(device: str, short_side: int) -> dict[str, Any]:
    """fn.decoders.image's arguments besides its input: RGB; with ``mixed`` the chroma upsampling of the CPU decoder
    (libjpeg-turbo's "fancy" upsampling, which the torch backend's decoder uses too: without it nvJPEG's pixels
    differ from the CPU's), scratch sized for the stored frames and the hardware decoder's share."""
    from nvidia.dali import types

    settings: dict[str, Any] = {"output_type": types.RGB}
    if device == "mixed":  # what only a GPU run confirms: the equal pixels, the memory, the rate
        frame_bytes = 3 * short_side * math.ceil(short_side * _WIDEST_ASPECT)
        settings.update(jpeg_fancy_upsampling=True, device_memory_padding=frame_bytes, host_memory_padding=frame_bytes,
                        hw_decoder_load=HW_DECODER_LOAD)
    return settings


def _graph(spec: DataSpec, config: DataConfig, batch: DenseBatch, *, train: bool, device: str):
    """One graph for the CPU and the GPU: only the decoder's ``device`` ("cpu" or "mixed") differs. ``batch``: the
    external source's outputs (batch.py), one row per frame; each operator below runs once per batch, and takes
    per-row arguments (a sample's crop box and flip, repeated over its frames' rows)."""
    from nvidia.dali import fn

    video = fn.decoders.image(batch.jpegs, device=device, **decoder_settings(device, spec.features["short_side"]))
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
    return fn.transpose(video, perm=[2, 0, 1])  # (3, H, W) uint8 per frame; the Loader normalises on the device


class DaliLoader:
    """Iterates batches in the loader contract. Training never ends (the trainer counts steps); evaluation gives
    every rank the same number of batches, with ``valid`` marking the padding and the bad samples."""

    def __init__(self, spec: DataSpec, config: DataConfig, *, train: bool, rank: int, world: int,
                 device_id: int | None, start_batch: int = 0, augment: AugmentConfig | None = None,
                 reader_draws: dict[int, int] | None = None):
        from nvidia.dali import pipeline_def

        self.spec, self.train = spec, train
        self.audio_mean = config.audio_mean if config.audio_mean is not None else spec.logmel_mean
        self.audio_std = config.audio_std if config.audio_std is not None else spec.logmel_std
        device = "cpu" if device_id is None else "mixed"
        self.frames = len(frame_members(spec.features["num_frames"], config.num_frames, config.view, config.views,
                                        config.frame_stride))
        # Training with workers reads in DALI worker processes (feed.py); evaluation, and data.workers: 0,
        # read here, in the serial external source.
        self.feeds = reader_feeds(spec, config, augment, rank=rank, world=world, start_batch=start_batch,
                                  reader_draws=reader_draws) if train and config.workers > 0 else []
        self.source = None if self.feeds else CheckedSamples(spec, config, train=train, rank=rank, world=world,
                                                             start_batch=start_batch, augment=augment,
                                                             reader_draws=reader_draws)
        workers = {"py_num_workers": len(self.feeds), "py_start_method": start_method()} if self.feeds else {}

        # A DALI batch is a batch's frames, batch_size * frames rows (batch.py).
        @pipeline_def(batch_size=config.batch_size * self.frames, num_threads=pipeline_threads(len(self.feeds)),
                      device_id=device_id, seed=config.seed + rank, prefetch_queue_depth=2, **workers)
        def pipeline():
            from nvidia.dali import fn

            if not self.feeds:
                batch = DenseBatch(fn.external_source(source=self.source, num_outputs=len(batch_types()), batch=True,
                                                      parallel=False, dtype=batch_types()))
                return _graph(spec, config, batch, train=train, device=device), batch.payload, batch.header
            # One external source per reader (a stateful source has a worker of its own, feed.py): each slot's
            # batch is its own DALI batch, so each slot has its own decoder.
            slots = []
            for feed in self.feeds:
                batch = DenseBatch(parallel_outputs(feed, batch_types()))
                slots += [_graph(spec, config, batch, train=True, device=device), batch.payload, batch.header]
            return tuple(slots)

        self.pipe = pipeline()
        names = [f"{name}{j}" for j in range(len(self.feeds)) for name in ("video", "payload", "header")] or \
            ["video", "payload", "header"]
        with workers_deaf_to_usr1(), workers_die_with_parent():  # the feed workers start here
            started = time.perf_counter()
            self.pipe.build()
        self.names = names
        self.iterator = None  # made on the first batch asked for: it runs the pipeline (its first batches)
        # For avmae/bench/dali_graph.py: seconds to build the graph (operators, thread pools, workers) and to
        # produce the prefetched batches.
        self.seconds = {"build": time.perf_counter() - started}

    def _batch(self, video: torch.Tensor, logmel: torch.Tensor, metadata: list[dict[str, Any]], valid: list[bool],
               skipped: list[dict[str, Any]], drawn: list[int] | None) -> dict[str, Any]:
        video = video.reshape(len(metadata), self.frames, *video.shape[1:])  # (B*T, 3, H, W) rows -> (B, T, 3, H, W)
        audio = (logmel.float() - self.audio_mean) / self.audio_std  # as the torch backend, to the bit
        labels = {name: t.to(video.device) for name, t in label_tensors(metadata, self.spec).items()}
        return {"video": video, "audio": audio, **labels, "key": [m[META_KEY] for m in metadata],
                "valid": torch.tensor(valid), "skipped": skipped, **({"drawn": drawn} if drawn else {})}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        features = self.spec.features
        with worker_errors_in_one_line():  # a skip budget met at start-up stops here, at the first batch
            if self.iterator is None:
                started = time.perf_counter()
                from nvidia.dali.plugin.base_iterator import LastBatchPolicy
                from nvidia.dali.plugin.pytorch import DALIGenericIterator

                self.iterator = DALIGenericIterator([self.pipe], self.names, last_batch_policy=LastBatchPolicy.DROP,
                                                    auto_reset=not self.train)
                self.seconds["prefetch"] = time.perf_counter() - started
        batches = iter(self.iterator)
        while True:
            with worker_errors_in_one_line():
                try:
                    data = next(batches)[0]
                except StopIteration:
                    return
            if not self.feeds:
                logmel, _ = unpack_payload(data["payload"], data["header"], self.frames, features)
                serial = int(data["header"][0, HEADER.index("serial")])
                yield self._batch(data["video"], logmel, *self.source.pending.pop(serial))
                continue
            for j in range(len(self.feeds)):  # the rank's next batches, in order (feed.reader_slots)
                logmel, notes = unpack_payload(data[f"payload{j}"], data[f"header{j}"], self.frames, features)
                metadata, skipped, drawn = decode_notes(notes)
                yield self._batch(data[f"video{j}"], logmel, metadata, [True] * len(metadata), skipped, drawn)
