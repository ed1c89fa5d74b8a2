"""Log-mel features exactly as CAV-MAE computes them (docs/reference/cavmae.md#log-mel-front-end), then padded or cut to
a fixed length. A build with ``audio_frontend='scenic'`` computes those of Google's AV-MAE instead
(avmae/shard/samples/logmel_scenic.py).

CAV-MAE: ``torchaudio.load`` of a 16-bit wav (int16 / 32768), subtract the waveform mean, then
``kaldi.fbank(htk_compat=True, sample_frequency=sr, use_energy=False, window_type='hanning', num_mel_bins=128,
dither=0.0, frame_shift=10)``, zero-padded at the end (in the log-mel domain, before normalisation) or cut to 1024.
"""

from __future__ import annotations

import numpy as np
import torch
import torchaudio

from avmae.shard.params import FeatureParams
from avmae.shard.samples.logmel_scenic import scenic_logmel


def min_samples(params: FeatureParams) -> int:
    """Fewest samples that give one fbank frame (one window, ``snip_edges=True``)."""
    return int(params.sample_rate * params.frame_length_ms / 1000)


def fbank(pcm: np.ndarray, params: FeatureParams) -> torch.Tensor:
    """(frames, mel) float32 log-mel of int16 mono PCM, CAV-MAE's call with the parameters in ``params``, or the
    scenic front end's when ``params.audio_frontend`` says so."""
    if params.audio_frontend == "scenic":
        return scenic_logmel(torch.from_numpy(pcm.astype(np.float32) / 32768.0), params)
    return waveform_fbank(torch.from_numpy(pcm.astype(np.float32) / 32768.0).unsqueeze(0), params.sample_rate, params)


def waveform_fbank(waveform: torch.Tensor, sample_rate: int, params: FeatureParams) -> torch.Tensor:
    """CAV-MAE's ``_wav2fbank`` on what ``torchaudio.load`` returns: a (channels, samples) float32 waveform. The
    mean is taken over every channel; kaldi's fbank then uses the first channel (its ``channel=-1`` default picks
    channel 0). CAV-MAE's wavs are mono (sox ``remix 1``), where both are the plain mean and the only channel.
    The scenic front end takes the first channel as it is (no mean removal) and only at ``params.sample_rate``."""
    if params.audio_frontend == "scenic":
        if sample_rate != params.sample_rate:
            raise ValueError(f"audio at {sample_rate} Hz: the scenic audio front end takes {params.sample_rate} Hz")
        return scenic_logmel(waveform[0], params)
    waveform = waveform - waveform.mean()
    return torchaudio.compliance.kaldi.fbank(
        waveform, htk_compat=True, sample_frequency=sample_rate, use_energy=False,
        window_type=params.window_type, num_mel_bins=params.num_mel_bins, dither=0.0,
        frame_shift=params.frame_shift_ms, frame_length=params.frame_length_ms,
    )


def fixed_length(features: torch.Tensor, target_frames: int, dtype: str = "float16") -> tuple[np.ndarray, int]:
    """(target_frames, mel) array of ``dtype`` zero-padded at the end or cut, and the number of valid frames."""
    valid = min(features.shape[0], target_frames)
    out = np.zeros((target_frames, features.shape[1]), dtype=dtype)
    out[:valid] = features[:valid].numpy().astype(dtype)
    return out, valid


def logmel(pcm: np.ndarray, params: FeatureParams) -> tuple[np.ndarray, int]:
    """The stored log-mel of a clip: fixed length, of ``params.logmel_dtype``, plus its valid frame count."""
    return fixed_length(fbank(pcm, params), params.target_frames, params.logmel_dtype)
