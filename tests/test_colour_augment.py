"""Scenic's colour augmentation (avmae/data/colour.py) against a reference computed pixel by pixel with Python's
colorsys (the hexcone HSV model TensorFlow's adjust_saturation / adjust_hue kernels use), and its per-clip
behaviour in the batch operation."""

from __future__ import annotations

import colorsys

import pytest
import torch

from avmae.data.colour import LUMA, colour_augment, colour_jitter, hsv_to_rgb, rgb_to_hsv
from avmae.data.samples import normalise_video
from avmae.data.config import DataConfig


def _reference(pixels: torch.Tensor, brightness, saturation, contrast, hue) -> torch.Tensor:
    """colour_jitter of one clip (T, 3, H, W) with scalar factors, in plain Python per pixel."""
    frames, _, height, width = pixels.shape

    def per_pixel(x, change):
        out = x.clone()
        for t in range(frames):
            for i in range(height):
                for j in range(width):
                    out[t, :, i, j] = torch.tensor(change(*x[t, :, i, j].tolist()))
        return out

    def saturate(r, g, b):
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        return colorsys.hsv_to_rgb(h, min(1.0, max(0.0, s * saturation)), v)

    def turn(r, g, b):
        h, s, v = colorsys.rgb_to_hsv(r, g, b)
        return colorsys.hsv_to_rgb((h + hue) % 1.0, s, v)

    x = per_pixel(pixels.double() + brightness, saturate)
    means = x.mean(dim=(-2, -1), keepdim=True)
    x = (x - means) * contrast + means
    return per_pixel(x, turn).clamp(0, 1)


def test_the_jitter_is_tensorflows_sequence_computed_pixel_by_pixel():
    generator = torch.Generator().manual_seed(0)
    pixels = 0.2 + 0.6 * torch.rand(2, 2, 3, 4, 5, generator=generator)
    factors = {"brightness": torch.tensor([0.1, -0.12]), "saturation": torch.tensor([1.35, 0.65]),
               "contrast": torch.tensor([0.7, 1.3]), "hue": torch.tensor([0.17, -0.19])}
    ours = colour_jitter(pixels, **factors)
    for clip in range(2):
        want = _reference(pixels[clip], *(float(f[clip]) for f in factors.values()))
        torch.testing.assert_close(ours[clip].double(), want, atol=2e-6, rtol=0)
    assert (ours - pixels).abs().amax() > 0.1  # every factor moved the pixels


def test_hsv_round_trip_and_the_reference_model():
    rgb = torch.rand(3, 6, 7, generator=torch.Generator().manual_seed(1))
    h, s, v = rgb_to_hsv(rgb)
    torch.testing.assert_close(hsv_to_rgb(h, s, v), rgb, atol=1e-6, rtol=0)
    for i, j in ((0, 0), (3, 4), (5, 6)):
        assert torch.tensor([h[i, j], s[i, j], v[i, j]]).tolist() == pytest.approx(
            colorsys.rgb_to_hsv(*rgb[:, i, j].tolist()), abs=1e-6)
    grey = torch.full((3, 1, 1), 0.4)
    assert [float(x) for x in rgb_to_hsv(grey)] == pytest.approx([0.0, 0.0, 0.4])


def _batch(clips: int, video_norm: str, seed: int = 0) -> torch.Tensor:
    """Normalised video of ``clips`` clips whose 3 frames are the same picture."""
    picture = torch.randint(30, 220, (clips, 1, 3, 8, 8), generator=torch.Generator().manual_seed(seed),
                            dtype=torch.uint8)
    return normalise_video(picture.expand(clips, 3, 3, 8, 8), DataConfig(video_norm=video_norm))


@pytest.mark.parametrize("video_norm", ["zero_center", "imagenet"])
def test_each_clip_is_jittered_alike_in_all_its_frames_or_left_alone(video_norm):
    video = _batch(400, video_norm)
    out = colour_augment(video, video_norm, colour=0.5, colour_drop=0.0, generator=torch.Generator().manual_seed(2))
    assert out.shape == video.shape and out.dtype == video.dtype
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 1], out[:, 2])  # one draw per clip
    changed = (out - video).abs().flatten(1).amax(1) > 1e-4
    assert 160 < int(changed.sum()) < 240  # Binomial(400, 0.5): 200 +- 2 sigma * 2
    untouched = ~changed
    torch.testing.assert_close(out[untouched], video[untouched], atol=1e-6, rtol=0)
    mean, std = ((0.5,) * 3, (0.5,) * 3) if video_norm == "zero_center" else ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    pixels = out * torch.tensor(std).view(3, 1, 1) + torch.tensor(mean).view(3, 1, 1)
    assert pixels.amin() >= -1e-6 and pixels.amax() <= 1 + 1e-6  # clipped to [0, 1] as pixels


def test_colour_drop_turns_clips_grey_with_tensorflows_luma():
    video = _batch(4, "zero_center")
    out = colour_augment(video, "zero_center", colour=0.0, colour_drop=1.0, generator=torch.Generator().manual_seed(3))
    pixels, want = (out + 1) / 2, (video + 1) / 2
    luma = (want * torch.tensor(LUMA).view(3, 1, 1)).sum(dim=-3)
    for channel in range(3):
        torch.testing.assert_close(pixels[:, :, channel], luma, atol=1e-6, rtol=0)


def test_no_colour_settings_leave_the_batch_as_it_is_and_a_seed_repeats_it():
    video = _batch(6, "imagenet")
    assert colour_augment(video, "imagenet", 0.0, 0.0) is video
    first, second = (colour_augment(video, "imagenet", 0.8, 0.1, generator=torch.Generator().manual_seed(5))
                     for _ in range(2))
    assert torch.equal(first, second)


def test_a_part_that_is_off_changes_neither_the_batch_nor_the_random_stream():
    """A probability of 0 skips its part: the batch is what a probability too small to select any clip gives, and the
    generator advances alike, so the draws of later augmentations do not depend on which parts are on."""
    video = _batch(6, "imagenet")
    tiny = 1e-12  # computed, but selects no clip (draws of exactly 0 aside)
    for colour, colour_drop, computed in ((0.0, 0.5, (tiny, 0.5)), (0.5, 0.0, (0.5, tiny))):
        off, on = torch.Generator().manual_seed(11), torch.Generator().manual_seed(11)
        skipped = colour_augment(video, "imagenet", colour, colour_drop, generator=off)
        assert torch.equal(skipped, colour_augment(video, "imagenet", *computed, generator=on))
        assert torch.equal(off.get_state(), on.get_state())
