"""The training crop boxes (avmae/data/crops.py): Scenic's scale jitter as one box of the stored frame, against the
three steps it stands for (DMVR's resize_smallest, scale_jitter_augm, random_crop), computed here step by step."""

from __future__ import annotations

import random

import pytest

from avmae.data.config import AugmentConfig
from avmae.data.crops import random_crop_box, scale_jitter_box, training_crop_box


def _scenic_window(height: int, width: int, crop: int, short_side: int, factors, probability, seed: int):
    """Scenic's crop window in stored pixels (fractional): the same draws in the same order, the steps as DMVR
    writes them."""
    rng = random.Random(seed)
    resized = (max(short_side, height * short_side // width), max(short_side, width * short_side // height))
    scale_h, scale_w = rng.uniform(*factors), rng.uniform(*factors)
    if rng.random() >= probability:
        scale_h = scale_w = 1.0
    jittered = (int(scale_h * resized[0]), int(scale_w * resized[1]))
    top, left = rng.randint(0, jittered[0] - crop), rng.randint(0, jittered[1] - crop)
    per_row, per_column = height / jittered[0], width / jittered[1]
    return top * per_row, left * per_column, crop * per_row, crop * per_column, scale_h, scale_w


@pytest.mark.parametrize("height,width", [(256, 340), (300, 256), (256, 256), (480, 640)])
def test_the_scale_jitter_box_is_scenics_window_in_whole_stored_pixels(height, width):
    scales = []
    for seed in range(300):
        box = scale_jitter_box(height, width, 224, 256, (0.9, 1.33), 1.0, random.Random(seed))
        *window, scale_h, scale_w = _scenic_window(height, width, 224, 256, (0.9, 1.33), 1.0, seed)
        assert all(abs(got - want) <= 0.5 + 1e-9 for got, want in zip(box, window)), (box, window)
        top, left, h, w = box
        assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
        scales.append((scale_h, scale_w))
    heights, widths = zip(*scales)
    assert 0.9 <= min(heights) < 0.95 and 1.28 < max(heights) <= 1.33  # each axis its own factor over the range
    assert heights != widths


def test_without_jitter_the_box_is_a_plain_random_crop_of_the_resized_frame():
    boxes = {scale_jitter_box(256, 340, 224, 256, (0.9, 1.33), 0.0, random.Random(seed)) for seed in range(400)}
    assert {(h, w) for _, _, h, w in boxes} == {(224, 224)}  # stored at the resize's size: no scaling
    tops, lefts = {top for top, _, _, _ in boxes}, {left for _, left, _, _ in boxes}
    assert min(tops) == 0 and max(tops) == 32 and min(lefts) == 0 and max(lefts) == 116


def test_a_jittered_side_shorter_than_the_crop_is_taken_at_the_crop():
    for seed in range(50):
        top, left, h, w = scale_jitter_box(224, 224, 224, 224, (0.9, 1.0), 1.0, random.Random(seed))
        assert (top, left, h, w) == (0, 0, 224, 224)


def test_the_augment_section_chooses_the_box():
    random_resized = training_crop_box(256, 340, 224, AugmentConfig(), random.Random(3))
    assert random_resized == random_crop_box(256, 340, (0.25, 1.0), (0.75, 1.3333), random.Random(3))
    jitter = AugmentConfig(crop="scale_jitter", scale_jitter=(1.1, 1.2), scale_jitter_prob=1.0, jitter_short_side=256)
    assert training_crop_box(256, 340, 224, jitter, random.Random(3)) == \
        scale_jitter_box(256, 340, 224, 256, (1.1, 1.2), 1.0, random.Random(3))


@pytest.mark.parametrize("override,message", [
    ("augment.crop=centre", r"augment.crop: 'centre' is not one of \['random_resized', 'scale_jitter'\]"),
    ("augment.scale_jitter=[1.33,0.9]", r"augment.scale_jitter must be two factors 0 < low <= high"),
    ("augment.scale_jitter_prob=1.5", r"augment.scale_jitter_prob is a probability"),
    ("augment.colour=-0.1", r"augment.colour is a probability"),
    ("augment.colour_drop=2", r"augment.colour_drop is a probability"),
    ("augment.jitter_short_side=0", r"augment.jitter_short_side")])
def test_the_recipe_refuses_video_augmentation_settings_that_mean_nothing(override, message):
    from avmae.config import ConfigError, load
    from avmae.recipe.config import RunConfig

    with pytest.raises(ConfigError, match=message):
        load(RunConfig, "avmae_mbt_audioset", [override, "data.shards=/data/x"]).validate()
