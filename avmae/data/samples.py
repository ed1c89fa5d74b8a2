"""One sample's stored members -> tensors, in torch. The torch loader uses these directly; the DALI loader
does the same steps in its graph, and both share the metadata parsing below."""

from __future__ import annotations

import functools
import json
import random
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.io import ImageReadMode, decode_jpeg

from avmae.data.config import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, DataConfig
from avmae.data import frame_windows
from avmae.data.crops import centre_crop_anchor, training_crop_box
from avmae.data.spec import DataSpec
from avmae.shard.format import META_KEY, META_LABELS, META_NOUN, META_VERB, LabelMode, frame_member


def frame_members(stored: int, wanted: int, view: int = 0, views: int = 1, stride: int = 0) -> list[str]:
    """Names of ``wanted`` of the ``stored`` frames. Without a ``stride``, evenly spread (all of them when equal);
    with several temporal ``views`` (multi-view testing), view v takes the frames at offset (v + 0.5) / views of each
    stride. With a ``stride``, a window of frames that far apart (data/frame_windows.py): the centred one, or view v
    of ``views`` evenly spread ones."""
    if not 0 <= view < views:
        raise ValueError(f"view {view} is not in [0, {views})")
    if stride:
        offset = frame_windows.evaluation_offset(stored, wanted, stride, view, views)
        return _window_members(stored, wanted, stride, offset)
    if wanted > stored:
        raise ValueError(f"the model wants {wanted} frames but the shards hold {stored} per sample")
    offset = (view + 0.5) / views
    return [frame_member(int((i + offset) * stored / wanted)) for i in range(wanted)]


def _window_members(stored: int, wanted: int, stride: int, offset: int) -> list[str]:
    """Names of the frames of the strided window at ``offset`` (data/frame_windows.py)."""
    return [frame_member(i) for i in frame_windows.window(stored, wanted, stride, offset)]


def training_frames(stored: int, wanted: int, offsets: int, rng: random.Random, stride: int = 0) -> list[str]:
    """The frames one training sample uses: with a ``stride``, a window at a random offset (data/frame_windows.py);
    else at a random one of ``offsets`` temporal offsets (CAV-MAE draws one of its 10 frames per step); with one
    offset the evenly spread frames, and ``rng`` is left untouched."""
    if stride:
        offset = frame_windows.training_offset(stored, wanted, stride, rng)
        return _window_members(stored, wanted, stride, offset)
    if offsets <= 1:
        return frame_members(stored, wanted)
    return frame_members(stored, wanted, rng.randrange(offsets), offsets)


def video_normalisation(config: DataConfig) -> tuple[torch.Tensor, torch.Tensor]:
    if config.video_norm == "zero_center":
        return torch.full((3,), 0.5), torch.full((3,), 0.5)  # x/255*2-1
    return torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)


class FrameDecodeError(ValueError):
    """A frame the decoder stopped on: ``frame`` is its position in the list decoded."""

    def __init__(self, frame: int, message: str):
        super().__init__(message)
        self.frame = frame


def decode_frames(jpegs: list[bytes]) -> list[torch.Tensor]:
    """The frames as RGB (3, H, W) uint8, whatever their components (a greyscale frame of another tool's shards comes
    out as DALI's decoder gives it, three equal channels); FrameDecodeError naming the first frame the decoder
    stops on (decoded one by one only then: torchvision's error for a list does not say which)."""
    try:
        return decode_jpeg([torch.frombuffer(bytearray(j), dtype=torch.uint8) for j in jpegs], mode=ImageReadMode.RGB)
    except RuntimeError:
        for position, jpeg in enumerate(jpegs):
            try:
                decode_jpeg(torch.frombuffer(bytearray(jpeg), dtype=torch.uint8), mode=ImageReadMode.RGB)
            except RuntimeError as err:
                raise FrameDecodeError(position, str(err).splitlines()[0]) from None
        raise


def decode_video(jpegs: list[bytes], config: DataConfig, stored_short_side: int, augment: AugmentConfig | None,
                 rng: random.Random) -> torch.Tensor:
    """JPEG frames -> (T, 3, crop, crop) uint8, one crop and flip for the whole clip (so motion stays coherent);
    ``augment`` None is evaluation: resize and centre crop.

    decode_jpeg hands out (3, H, W) views of (H, W, 3) pixels. They are stacked as they lie (channels last) and
    resized in that layout, where torch's uint8 antialiased resize is vectorised: stacking them into contiguous
    (3, H, W) first and resizing there cost 2.0 + 3.0 ms per 16 frames of 455x256 against 0 + 1.1 ms (measured,
    1 core), i.e. half the CPU time of a training sample."""
    frames = torch.stack([frame.permute(1, 2, 0) for frame in decode_frames(jpegs)]).permute(0, 3, 1, 2)  # (T, 3, H, W) view
    height, width = frames.shape[-2:]
    crop = config.crop_size
    if augment is not None:
        top, left, h, w = training_crop_box(height, width, crop, augment, rng)
        frames = torch.nn.functional.interpolate(frames[..., top:top + h, left:left + w], size=(crop, crop),
                                                 mode="bilinear", antialias=True, align_corners=False)
        if augment.flip and rng.random() < 0.5:
            frames = frames.flip(-1)
    else:
        if config.eval_short_side and config.eval_short_side != stored_short_side:
            frames = TF.resize(frames, config.eval_short_side, antialias=True)
            height, width = frames.shape[-2:]
        top, left = centre_crop_anchor(height, crop), centre_crop_anchor(width, crop)
        frames = frames[..., top:top + crop, left:left + crop]
    return frames.contiguous()


@functools.lru_cache(maxsize=8)
def normalisation_factors(video_norm: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift), (3, 1, 1) each on ``device``, with normalised = scale * uint8 pixel - shift; made once per
    device: a copy to the GPU for every batch would make the host wait for it inside the training step."""
    mean, std = video_normalisation(DataConfig(video_norm=video_norm))
    return (1 / (255 * std)).to(device).view(3, 1, 1), (mean / std).to(device).view(3, 1, 1)


def normalise_video(video: torch.Tensor, config: DataConfig) -> torch.Tensor:
    """uint8 (..., 3, H, W) -> float, normalised; run on the batch's device (the GPU in training)."""
    scale, shift = normalisation_factors(config.video_norm, video.device)
    return video.float().mul_(scale).sub_(shift)  # (x / 255 - mean) / std in two in-place passes


def parse_metadata(raw: bytes | np.ndarray) -> dict[str, Any]:
    """The sample's JSON (DALI hands it over zero-padded to a fixed length)."""
    data = raw.tobytes() if isinstance(raw, np.ndarray) else raw
    return json.loads(data.rstrip(b"\x00"))


def label_tensors(metadata: list[dict[str, Any]], spec: DataSpec) -> dict[str, torch.Tensor]:
    """Batch labels: ``label`` multi-hot (B, C) or index (B,), or ``verb`` and ``noun`` indices (Epic-Kitchens)."""
    if spec.label_mode == LabelMode.VERB_NOUN:
        return {"verb": torch.tensor([m[META_VERB] for m in metadata]),
                "noun": torch.tensor([m[META_NOUN] for m in metadata])}
    if spec.label_mode == LabelMode.NONE:
        return {}
    index = {name: i for i, name in enumerate(spec.label_names)}
    if spec.label_mode == LabelMode.MULTI:
        label = torch.zeros(len(metadata), len(spec.label_names))
        for row, meta in enumerate(metadata):
            label[row, [index[name] for name in meta[META_LABELS]]] = 1.0
        return {"label": label}
    # checked.SampleChecker skips such samples before they reach a batch: this is the last guard, not the check
    wrong = [(m[META_KEY], len(m[META_LABELS])) for m in metadata if len(m[META_LABELS]) != 1]
    if wrong:
        raise ValueError("single-label data, but " + ", ".join(f"sample {key} has {count} labels"
                                                                for key, count in wrong[:3]))
    return {"label": torch.tensor([index[m[META_LABELS][0]] for m in metadata])}
