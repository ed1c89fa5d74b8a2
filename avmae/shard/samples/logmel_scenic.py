"""The log-mel front end of Google's AV-MAE checkpoints (Scenic), as an alternative to CAV-MAE's Kaldi fbank.

What is documented. AV-MAE (Georgescu et al., ICCV 2023; google-research/scenic ``scenic/projects/av_mae/``) takes
precomputed log-mel spectrograms of 128 bins at 100 frames per second (AudioSet: 1000 x 128 for 10 s). The MBT paper
whose data it reuses ("Attention Bottlenecks for Multimodal Fusion", Nagrani et al., NeurIPS 2021, section 4.2)
states: 16 kHz audio, 128 mel bins, a 25 ms Hamming window, a 10 ms hop. The extraction code is not released.

What is assumed (every assumption is a constant or a line below, and only here). Google's public TensorFlow audio
pipeline, DMVR's ``compute_audio_spectrogram`` (google-deepmind/dmvr ``dmvr/processors.py``, type ``logmf``), is
taken as the model for what the paper leaves open:
- framing: ``tf.signal.stft(pad_end=True)``: frames start at sample 0 (no centring), the signal is zero-padded at the
  end so the last frame is whole: ceil(samples / hop) frames, exactly 1000 for 10 s at 16 kHz;
- window: periodic Hamming (the default of ``tf.signal.hamming_window`` and ``torch.hamming_window``);
- FFT size: 512, the next power of two above the 400-sample window (``tf.signal.stft``'s default ``fft_length``;
  DMVR passes its window length, 2048 samples by default, already a power of two);
- magnitude spectrum, not power (DMVR: ``tf.abs(stfts)``);
- mel filterbank: ``tf.signal.linear_to_mel_weight_matrix`` (tensorflow/tensorflow
  ``tensorflow/python/ops/signal/mel_ops.py``): HTK mel scale ``1127 ln(1 + f / 700)``, triangles linear in mel
  between num_mel_bins + 2 equally spaced mel points, no area normalisation, the DC bin given weight 0; range
  0 Hz to the Nyquist frequency (8 kHz);
- log: natural log of mel magnitude + 1e-6 (DMVR);
- the waveform as decoded (int16 / 32768), no mean removal, no dither, no pre-emphasis (DMVR's defaults).
Only a comparison with the in-graph features of Scenic's released SavedModels, or an AudioSet mAP of its
checkpoints on features made here, can settle these. docs/scenic.md ("The audio front end") compares the statistics
of these features with Scenic's normalisation (mean 1.102, std 2.762).

Computed in float64 and rounded once to float32: thread-dependent summation order moves a float64 value by a few
ulps, which almost never survives the rounding, so builds with any number of workers store the same bytes.
"""

from __future__ import annotations

import numpy as np
import torch

from avmae.shard.params import FRONTEND_DEFAULTS, FeatureParams

WINDOW_TYPE = FRONTEND_DEFAULTS["scenic"]["window_type"]  # Hamming: MBT section 4.2
LOWER_EDGE_HZ = 0.0  # assumed: the full band up to Nyquist
LOG_OFFSET = 1e-6  # assumed: DMVR's stabilised log


def window_samples(params: FeatureParams) -> int:
    return int(round(params.sample_rate * params.frame_length_ms / 1000))


def hop_samples(params: FeatureParams) -> int:
    return int(round(params.sample_rate * params.frame_shift_ms / 1000))


def fft_size(params: FeatureParams) -> int:
    """The next power of two at or above the window (tf.signal.stft's default fft_length): 512 for 400 samples."""
    return 1 << (window_samples(params) - 1).bit_length()


def num_frames(samples: int, params: FeatureParams) -> int:
    """ceil(samples / hop), as ``tf.signal.frame(pad_end=True)``: 1000 for 160000 samples at a 160-sample hop."""
    return -(-samples // hop_samples(params))


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK's mel scale in the natural-log form TensorFlow uses (mel_ops.py: 1127 ln(1 + f / 700))."""
    return 1127.0 * np.log1p(np.asarray(hz, dtype=np.float64) / 700.0)


def mel_weights(params: FeatureParams) -> torch.Tensor:
    """(fft_size // 2 + 1, num_mel_bins) float64: ``tf.signal.linear_to_mel_weight_matrix`` from 0 Hz to Nyquist.

    Each spectrogram bin's frequency is taken to the mel scale and weighted by triangles that are linear in mel; the
    DC bin is left at 0 (TensorFlow's ``bands_to_zero = 1``). At 128 bands over a 512-point FFT the lowest bands are
    narrower than one FFT bin: the first holds no bin and is 0 for every input (log(1e-6) after the log)."""
    bins = fft_size(params) // 2 + 1
    nyquist = params.sample_rate / 2.0
    bin_mel = hz_to_mel(np.linspace(0.0, nyquist, bins)[1:])[:, None]
    edges = np.linspace(hz_to_mel(LOWER_EDGE_HZ), hz_to_mel(nyquist), params.num_mel_bins + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bin_mel - lower) / (centre - lower)
    falling = (upper - bin_mel) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    return torch.from_numpy(np.concatenate([np.zeros((1, params.num_mel_bins)), weights]))


def scenic_logmel(waveform: torch.Tensor, params: FeatureParams) -> torch.Tensor:
    """(ceil(samples / hop), num_mel_bins) float32 log-mel of a 1-D waveform in [-1, 1] at ``params.sample_rate``."""
    if params.window_type != WINDOW_TYPE:
        raise ValueError(f"window_type {params.window_type!r}: the scenic audio front end uses a {WINDOW_TYPE} window")
    if waveform.dim() != 1:
        raise ValueError(f"waveform of shape {tuple(waveform.shape)}: the scenic audio front end takes one channel")
    window, hop = window_samples(params), hop_samples(params)
    frames = num_frames(waveform.shape[0], params)
    x = waveform.to(torch.float64)
    x = torch.nn.functional.pad(x, (0, (frames - 1) * hop + window - x.shape[0]))
    framed = x.unfold(0, window, hop) * torch.hamming_window(window, periodic=True, dtype=torch.float64)
    magnitude = torch.fft.rfft(framed, n=fft_size(params)).abs()
    return torch.log(magnitude @ mel_weights(params) + LOG_OFFSET).to(torch.float32)

