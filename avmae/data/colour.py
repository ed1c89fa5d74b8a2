"""Scenic's colour augmentation for fine-tuning, as a batch operation on the batch's device (both backends meet it
the same way: it runs in the training step, on the loader's normalised video, like the other batch augmentations of
avmae/data/augment.py).

Scenic adds DMVR's ``color_default_augm`` (github.com/google-deepmind/dmvr, dmvr/processors.py) to its video pipeline
(scenic/dataset_lib/video_ops.py, additional_augmentations; AV-MAE's fine-tuning configs: prob_color_augment 0.8,
prob_color_drop 0.1). Per clip, the same for all its frames, on pixels in [0, 1]:

- with probability ``colour``: TensorFlow's random_brightness (add U[-32/255, 32/255)), random_saturation (HSV
  saturation times U[0.6, 1.4), clipped to [0, 1]), random_contrast (each frame's channels pulled to or from their
  mean over the frame by U[0.6, 1.4)) and random_hue (HSV hue turned by U[-0.2, 0.2) of a full turn), in that order,
  then clipped to [0, 1];
- then with probability ``colour_drop``: grey, tf.image.rgb_to_grayscale's luma (0.2989 R + 0.5870 G + 0.1140 B) in
  all three channels.

The HSV conversions are the hexcone model of TensorFlow's kernels (and of Python's colorsys, which the tests use as
the reference). Random numbers are drawn on the batch's device (or the given generator's); nothing is read back."""

from __future__ import annotations

import functools

import torch

from avmae.data.samples import normalisation_factors

BRIGHTNESS_DELTA = 32 / 255
SATURATION_RANGE = (0.6, 1.4)
CONTRAST_RANGE = (0.6, 1.4)
HUE_DELTA = 0.2
LUMA = (0.2989, 0.5870, 0.1140)


def colour_augment(video: torch.Tensor, video_norm: str, colour: float, colour_drop: float,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, T, 3, H, W) video normalised as ``video_norm`` says (data.video_norm) -> the same, each clip's colours
    jittered with probability ``colour`` and then turned grey with probability ``colour_drop`` (module docstring)."""
    if colour <= 0 and colour_drop <= 0:
        return video
    batch = video.shape[0]
    draw_on = generator.device if generator is not None else video.device
    draws = torch.rand(batch, 6, generator=generator, device=draw_on).to(video.device, non_blocking=True)
    scale, shift = normalisation_factors(video_norm, video.device)
    scale = 255 * scale  # normalised = scale * pixel - shift, for pixels in [0, 1]
    pixels = (video.float() + shift) / scale
    # All six draws are made even when a part is off, so the stream (and every later draw) does not depend on which
    # parts are on; a part whose probability is <= 0 selects no clip (draws are in [0, 1)), so it is not computed.
    per_clip = (-1, 1, 1, 1, 1)
    if colour > 0:
        jittered = colour_jitter(pixels,
                                 brightness=BRIGHTNESS_DELTA * (2 * draws[:, 1] - 1),
                                 saturation=_within(SATURATION_RANGE, draws[:, 2]),
                                 contrast=_within(CONTRAST_RANGE, draws[:, 3]),
                                 hue=HUE_DELTA * (2 * draws[:, 4] - 1))
        pixels = torch.where((draws[:, 0] < colour).view(per_clip), jittered, pixels)
    if colour_drop > 0:
        pixels = torch.where((draws[:, 5] < colour_drop).view(per_clip), greyscale(pixels), pixels)
    return (pixels * scale - shift).to(video.dtype)


def colour_jitter(pixels: torch.Tensor, *, brightness: torch.Tensor, saturation: torch.Tensor,
                  contrast: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """(B, T, 3, H, W) pixels in [0, 1] with per-clip (B,) factors: brightness added, saturation scaled, contrast
    scaled about each frame's channel means, hue turned, then clipped to [0, 1]."""
    per_clip = (-1, 1, 1, 1)
    x = pixels + brightness.view(-1, 1, 1, 1, 1)
    h, s, v = rgb_to_hsv(x)
    x = hsv_to_rgb(h, (s * saturation.view(per_clip)).clamp(0, 1), v)
    means = x.mean(dim=(-2, -1), keepdim=True)  # per frame and channel, as tf.image.adjust_contrast
    x = (x - means) * contrast.view(-1, 1, 1, 1, 1) + means
    h, s, v = rgb_to_hsv(x)
    x = hsv_to_rgb(torch.remainder(h + hue.view(per_clip), 1.0), s, v)
    return x.clamp(0, 1)


def rgb_to_hsv(rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(..., 3, H, W) RGB -> hue in [0, 1), saturation, value, each (..., H, W): the hexcone model (a grey pixel has
    hue and saturation 0; a pixel whose value is not above 0 has saturation 0)."""
    r, g, b = rgb.unbind(-3)
    value, _ = rgb.max(dim=-3)
    spread = value - rgb.min(dim=-3).values
    saturation = torch.where(value > 0, spread / torch.where(value > 0, value, 1), 0)
    safe = torch.where(spread > 0, spread, 1)
    hue = torch.where(value == r, (g - b) / safe, torch.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4))
    hue = torch.where(spread > 0, torch.remainder(hue / 6, 1.0), 0)
    return hue, saturation, value


def hsv_to_rgb(hue: torch.Tensor, saturation: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """The inverse of rgb_to_hsv: (..., H, W) each -> (..., 3, H, W). Channel n's value is
    v - v s clamp(min(k, 4 - k), 0, 1) with k = (n + 6 h) mod 6 and n = 5, 3, 1 for R, G, B."""
    channels = []
    for n in (5, 3, 1):
        k = torch.remainder(n + 6 * hue, 6)
        channels.append(value - value * saturation * torch.minimum(k, 4 - k).clamp(0, 1))
    return torch.stack(channels, dim=-3)


def greyscale(pixels: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) float32 -> the luma in all three channels."""
    return (pixels * _luma(pixels.device)).sum(dim=-3, keepdim=True).expand_as(pixels)


def _within(bounds: tuple[float, float], uniform: torch.Tensor) -> torch.Tensor:
    return bounds[0] + (bounds[1] - bounds[0]) * uniform


@functools.lru_cache(maxsize=8)
def _luma(device: torch.device) -> torch.Tensor:
    return torch.tensor(LUMA).to(device).view(3, 1, 1)  # once per device, as normalisation_factors
