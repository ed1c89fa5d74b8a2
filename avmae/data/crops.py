"""Where a training clip's crop box lies in its stored frames, chosen in Python for both backends (the torch
backend slices and resizes in torch, DALI resizes the box in its graph: the same box and flip, so the same pixels
up to each resize's arithmetic). Every frame of a clip takes the same box, so motion stays coherent. A box is
(top, left, height, width) in whole pixels of the stored frame, resized to crop x crop.

Two kinds, ``augment.crop``:

- ``random_resized``: Inception-style random resized crop (torchvision's RandomResizedCrop): an area share and a
  log-uniform aspect, at most 10 tries, else the largest centred square.
- ``scale_jitter``: Scenic's AV-MAE fine-tuning, DMVR's processors (github.com/google-deepmind/dmvr,
  dmvr/processors.py) in the order Scenic's video pipeline adds them (scenic/dataset_lib/video_ops.py,
  additional_augmentations): ``resize_smallest`` to ``augment.jitter_short_side`` (256), ``scale_jitter_augm``
  (height and width each scaled by its own factor, uniform in ``augment.scale_jitter``, [0.9, 1.33], with
  probability ``augment.scale_jitter_prob``, 1), then ``random_crop`` of crop x crop. The three steps are one box of
  the stored frame: the crop's place in the jittered frame, mapped back to the stored one's pixels (rounded to
  whole pixels, within half a stored pixel of Scenic's window).
"""

from __future__ import annotations

import math
import random

from avmae.data.config import AugmentConfig

Box = tuple[int, int, int, int]


def centre_crop_anchor(size: int, crop: int) -> int:
    """Top/left offset of a centre crop, rounded as DALI's crop does (floor of position x free space + 0.5)."""
    return int(math.floor((size - crop) * 0.5 + 0.5))


def training_crop_box(height: int, width: int, crop: int, augment: AugmentConfig, rng: random.Random) -> Box:
    """The box of a training clip of stored frames height x width, by ``augment.crop``."""
    if augment.crop == "scale_jitter":
        return scale_jitter_box(height, width, crop, augment.jitter_short_side, augment.scale_jitter,
                                augment.scale_jitter_prob, rng)
    return random_crop_box(height, width, augment.crop_scale, augment.crop_ratio, rng)


def random_crop_box(height: int, width: int, scale: tuple[float, ...], ratio: tuple[float, ...],
                    rng: random.Random) -> Box:
    """(top, left, h, w) of a random resized crop (Inception-style): area share in ``scale``, aspect in ``ratio``
    (log-uniform), at most 10 tries, then the largest centred crop."""
    area = height * width
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def scale_jitter_box(height: int, width: int, crop: int, short_side: int, factors: tuple[float, ...],
                     probability: float, rng: random.Random) -> Box:
    """(top, left, h, w) of Scenic's fine-tuning crop (module docstring). The draws in DMVR's order: the height's
    and the width's factor, the coin, then the crop's top and left in the jittered frame. A jittered side shorter
    than the crop (a factor below 1 with short_side near the crop, where DMVR's random_crop fails) is taken as the
    crop's size."""
    resized_h = max(short_side, height * short_side // width)  # DMVR resize_smallest's integer arithmetic
    resized_w = max(short_side, width * short_side // height)
    scale_h, scale_w = rng.uniform(factors[0], factors[1]), rng.uniform(factors[0], factors[1])
    if rng.random() >= probability:
        scale_h = scale_w = 1.0
    jittered_h, jittered_w = max(crop, int(scale_h * resized_h)), max(crop, int(scale_w * resized_w))
    top, left = rng.randint(0, jittered_h - crop), rng.randint(0, jittered_w - crop)
    return _box(top, left, crop, height / jittered_h, width / jittered_w, height, width)


def _box(top: int, left: int, crop: int, per_row: float, per_column: float, height: int, width: int) -> Box:
    """A crop x crop window at (top, left) of the jittered frame, in whole stored pixels (``per_row`` /
    ``per_column``: stored pixels per jittered pixel), kept inside the stored frame."""
    h, w = max(1, min(height, round(crop * per_row))), max(1, min(width, round(crop * per_column)))
    return min(round(top * per_row), height - h), min(round(left * per_column), width - w), h, w
