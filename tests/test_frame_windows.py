"""data.frame_stride: Scenic's clip sampling (DMVR's sample_sequence and sample_linspace_sequence), written here from
their formulas, against the frames the loaders take."""

from __future__ import annotations

import random

import numpy as np
import pytest

from avmae.data.samples import frame_members, training_frames
from avmae.shard.format import frame_member


def _indices(names: list[str]) -> list[int]:
    lookup = {frame_member(i): i for i in range(1000)}
    return [lookup[name] for name in names]


def test_training_windows_start_uniformly_where_the_whole_window_fits():
    starts = []
    for seed in range(3000):
        frames = _indices(training_frames(125, 32, 1, random.Random(seed), stride=1))
        assert frames == list(range(frames[0], frames[0] + 32))  # consecutive stored frames
        starts.append(frames[0])
    assert min(starts) == 0 and max(starts) == 125 - 31 - 1  # DMVR: uniform over [0, stored - (n - 1) stride)
    counts = np.bincount(starts, minlength=94)
    assert counts.min() > 10  # every offset is drawn (3000 draws over 94 offsets: about 32 each)
    stride_two = _indices(training_frames(250, 32, 1, random.Random(7), stride=2))
    assert np.diff(stride_two).tolist() == [2] * 31


@pytest.mark.parametrize("stored,stride,views,offsets", [
    (125, 1, 1, [(125 - 32) // 2]),             # sample_sequence(random=False): the centred window
    (125, 1, 4, [0, 31, 62, 93]),               # sample_linspace_sequence: int(linspace(0, 125 - 32, 4))
    (250, 2, 4, [0, 62, 124, 186]),             # Scenic's 32 frames at stride 2 of 10 s at 25 fps
    (250, 2, 1, [(250 - 64) // 2])])
def test_evaluation_windows_are_centred_or_spread_as_dmvr_places_them(stored, stride, views, offsets):
    for view, offset in enumerate(offsets):
        frames = _indices(frame_members(stored, 32, view, views, stride=stride))
        assert frames == [offset + i * stride for i in range(32)], view


def test_a_window_longer_than_the_stored_frames_wraps_as_dmvr_repeats_the_sequence():
    assert _indices(frame_members(8, 6, stride=2)) == [0, 2, 4, 6, 0, 2]
    assert _indices(training_frames(8, 6, 1, random.Random(0), stride=2))[0] == 0  # max(8 - 10, 1) = 1 offset


def test_without_a_stride_the_frames_are_spread_as_before():
    assert _indices(frame_members(16, 4)) == [2, 6, 10, 14]
    assert _indices(training_frames(16, 4, 1, random.Random(3))) == [2, 6, 10, 14]
    with pytest.raises(ValueError, match="wants 32 frames but the shards hold 16"):
        frame_members(16, 32)


def test_a_stride_with_cavmaes_training_offsets_is_refused():
    from avmae.config import ConfigError, load
    from avmae.recipe.config import RunConfig

    with pytest.raises(ConfigError, match="augment.train_offsets .* must stay 1"):
        load(RunConfig, "avmae_mbt_audioset", ["data.frame_stride=1", "augment.train_offsets=4"]).validate()
