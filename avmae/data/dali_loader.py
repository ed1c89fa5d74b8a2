"""The GPU loader: NVIDIA DALI reads the tars through their indexes and decodes the JPEG frames with nvJPEG
(``device="mixed"``); without a GPU the same graph runs on the CPU (``device_id=None``, environment.md 3).

The graph mirrors the webdataset loader step for step: the same frames, one random resized crop and flip for the
whole clip (train) or a centre crop (eval), the same normalisation. DALI splits a split's samples into contiguous
per-rank ranges; evaluation pads every rank to the same length by repeating its last sample, which comes out
with ``valid`` False.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from avmae.data.config import DataConfig
from avmae.data.samples import frame_members, label_tensors, parse_metadata
from avmae.data.spec import DataSpec


def _graph(spec: DataSpec, config: DataConfig, *, train: bool, rank: int, world: int, gpu: bool):
    from nvidia.dali import fn, types
    from nvidia.dali import math as dmath

    frames = frame_members(spec.features["num_frames"], config.num_frames, config.view, config.views)
    outputs = fn.readers.webdataset(
        paths=[s.tar for s in spec.shards], index_paths=[s.idx for s in spec.shards],
        ext=[*frames, "logmel.npy", "json"], missing_component_behavior="skip",
        random_shuffle=train, initial_fill=max(config.shuffle_buffer, 2), seed=config.seed + rank,
        shard_id=rank, num_shards=world, pad_last_batch=not train, stick_to_shard=not train, name="reader")
    decoded = [fn.decoders.image(jpeg, device="mixed" if gpu else "cpu", output_type=types.RGB)
               for jpeg in outputs[:len(frames)]]
    video = fn.stack(*decoded, axis=0, axis_name="F")  # (T, H, W, C): one geometry for every frame below
    crop = config.crop_size
    if train:
        shape = fn.cast(fn.peek_image_shape(outputs[0]), dtype=types.FLOAT)  # from the JPEG header, on the CPU
        height, width = shape[0], shape[1]
        share = fn.random.uniform(range=list(config.crop_scale))
        aspect = dmath.exp(fn.random.uniform(range=[float(torch.tensor(r).log()) for r in config.crop_ratio]))
        rel_w = dmath.min(dmath.sqrt(share * aspect * height / width), 1.0)
        rel_h = dmath.min(dmath.sqrt(share / aspect * width / height), 1.0)
        top = fn.random.uniform(range=[0.0, 1.0]) * (1.0 - rel_h)
        left = fn.random.uniform(range=[0.0, 1.0]) * (1.0 - rel_w)
        video = fn.resize(video, size=[crop, crop], roi_start=fn.stack(top, left),
                          roi_end=fn.stack(top + rel_h, left + rel_w), roi_relative=True, antialias=True)
        if config.flip:
            video = fn.flip(video, horizontal=fn.random.coin_flip(probability=0.5))
    else:
        if config.eval_short_side and config.eval_short_side != spec.features["short_side"]:
            video = fn.resize(video, resize_shorter=config.eval_short_side, antialias=True)
        video = fn.crop(video, crop=(crop, crop), crop_pos_x=0.5, crop_pos_y=0.5)
    video = fn.transpose(video, perm=[0, 3, 1, 2])  # (T, 3, H, W) uint8; the Loader normalises on the device
    audio_mean = config.audio_mean if config.audio_mean is not None else spec.logmel_mean
    audio_std = config.audio_std if config.audio_std is not None else spec.logmel_std
    audio = (fn.cast(fn.decoders.numpy(outputs[len(frames)]), dtype=types.FLOAT) - audio_mean) / audio_std
    if gpu:
        audio = audio.gpu()
    # JSON lengths differ per sample, and DALI batches must be dense: pad to the longest in these shards.
    meta = fn.pad(outputs[len(frames) + 1], fill_value=0, shape=[spec.max_member_size("json")])
    return video, audio, meta


class DaliLoader:
    """Iterates batches in the loader contract. Training never ends (the trainer counts steps); evaluation gives
    every rank the same number of batches, with ``valid`` marking the padding."""

    def __init__(self, spec: DataSpec, config: DataConfig, *, train: bool, rank: int, world: int,
                 device_id: int | None):
        from nvidia.dali import pipeline_def
        from nvidia.dali.plugin.base_iterator import LastBatchPolicy
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        self.spec, self.train = spec, train
        gpu = device_id is not None

        @pipeline_def(batch_size=config.batch_size, num_threads=max(1, config.workers), device_id=device_id,
                      seed=config.seed + rank, prefetch_queue_depth=2)
        def pipeline():
            return _graph(spec, config, train=train, rank=rank, world=world, gpu=gpu)

        self.pipe = pipeline()
        self.pipe.build()
        policy = LastBatchPolicy.DROP if train else LastBatchPolicy.FILL
        self.iterator = DALIGenericIterator([self.pipe], ["video", "audio", "meta"], reader_name="reader",
                                            last_batch_policy=policy, auto_reset=True)

    def __len__(self) -> int:
        return len(self.iterator)

    def _batch(self, data: dict[str, torch.Tensor], seen: set[str]) -> dict[str, Any]:
        metadata = [parse_metadata(row.numpy()) for row in data["meta"].cpu()]
        keys = [m["key"] for m in metadata]
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
