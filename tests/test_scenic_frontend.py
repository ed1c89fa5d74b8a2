"""The scenic audio front end (``--audio-frontend scenic``): its log-mel against a numpy computation written here from
the stated recipe, its frame count, and builds that record it while a default build stays CAV-MAE's."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from avmae.cli.shard import main as shard_main
from avmae.shard.format import LOGMEL_MEMBER, METADATA_MEMBER
from avmae.shard.inputs.media import decode_segment
from avmae.shard.params import FeatureParams, audio_frontend
from avmae.shard.samples.logmel import fbank, fixed_length, waveform_fbank
from avmae.shard.samples.logmel_scenic import scenic_logmel
from avmae.shard.writing.manifest import read_manifest
from tests.helpers import build_arguments, shard_members

SCENIC = FeatureParams.for_frontend("scenic")


def reference_logmel(pcm: np.ndarray) -> np.ndarray:
    """The recipe of avmae/shard/samples/logmel_scenic.py in numpy, loop by loop: frames of 400 samples every 160 from
    sample 0, the end zero-padded so ceil(n / 160) frames are whole; periodic Hamming 0.54 - 0.46 cos(2 pi k / 400);
    |rfft| at 512 points; TensorFlow's mel matrix (HTK 1127 ln(1 + f / 700), 130 mel points equally spaced from 0 Hz to
    8 kHz, triangles linear in mel, DC bin 0); ln(mel + 1e-6)."""
    x = pcm.astype(np.float64) / 32768.0
    count = -(-len(x) // 160)
    x = np.concatenate([x, np.zeros((count - 1) * 160 + 400 - len(x))])
    window = np.array([0.54 - 0.46 * np.cos(2 * np.pi * k / 400) for k in range(400)])
    spectrum = np.abs(np.fft.rfft(np.stack([x[i * 160:i * 160 + 400] * window for i in range(count)]), n=512))
    mel = lambda hz: 1127.0 * np.log(1.0 + hz / 700.0)  # noqa: E731
    points = np.linspace(mel(0.0), mel(8000.0), 130)
    weights = np.zeros((257, 128))
    for b in range(1, 257):  # bin 0 (DC) keeps weight 0
        m = mel(b * 8000.0 / 256)
        for band in range(128):
            lo, centre, hi = points[band:band + 3]
            if lo < m < hi:
                weights[b, band] = (m - lo) / (centre - lo) if m <= centre else (hi - m) / (hi - centre)
    return np.log(spectrum @ weights + 1e-6)


def speech_like_pcm(samples: int, seed: int = 0) -> np.ndarray:
    """A 140 Hz harmonic source with a moving formant, over noise: energy in most mel bands, int16 like decoded PCM."""
    rng = np.random.default_rng(seed)
    t = np.arange(samples) / 16000
    voice = sum(np.sin(2 * np.pi * 140 * h * t) / h * (1 + np.cos(2 * np.pi * (140 * h - 700 - 300 * t) / 2000))
                for h in range(1, 40))
    wave = 0.05 * voice + 0.01 * rng.standard_normal(samples)
    return np.clip(np.round(wave * 32768), -32768, 32767).astype(np.int16)


def test_the_log_mel_is_the_reference_recipe_to_float32_precision():
    pcm = speech_like_pcm(16000 + 123)  # not a whole number of hops: the last frame runs into the padding
    ours = fbank(pcm, SCENIC)
    reference = reference_logmel(pcm)
    assert ours.dtype == torch.float32 and tuple(ours.shape) == reference.shape == (101, 128)
    np.testing.assert_allclose(ours.numpy(), reference.astype(np.float32), rtol=1e-6, atol=1e-6)
    # The lowest band is narrower than one FFT bin: 0 for every input, log(1e-6) after the log.
    assert np.all(ours.numpy()[:, 0] == np.float32(np.log(1e-6)))
    assert ours.numpy()[:, 1:].min() > -8  # every other band sees the signal


def test_ten_seconds_give_1000_frames_and_the_default_length_is_1000():
    assert SCENIC.target_frames == 1000 and FeatureParams().target_frames == 1024
    assert SCENIC.window_type == "hamming" and FeatureParams().window_type == "hanning"
    assert [fbank(np.zeros(n, np.int16), SCENIC).shape[0] for n in (159999, 160000, 160001)] == [1000, 1000, 1001]
    mel, valid = fixed_length(fbank(speech_like_pcm(160000), SCENIC), SCENIC.target_frames, "float32")
    assert mel.shape == (1000, 128) and valid == 1000
    assert np.all(mel[-1, 1:] > np.log(1e-6))  # the last frame is signal, not padding (band 0 is always empty)


def test_prepared_wavs_take_the_first_channel_as_it_is():
    """CAV-MAE's prepared wavs reach the front end as (channels, samples) from torchaudio: the first channel, without
    the mean removal CAV-MAE's fbank does; another sample rate is refused."""
    first = torch.from_numpy(speech_like_pcm(8000).astype(np.float32) / 32768) + 0.25  # a DC offset that must stay
    stereo = torch.stack([first, torch.zeros_like(first)])
    assert torch.equal(waveform_fbank(stereo, 16000, SCENIC), scenic_logmel(first, SCENIC))
    assert not torch.equal(waveform_fbank(stereo, 16000, SCENIC), scenic_logmel(first - first.mean(), SCENIC))
    with pytest.raises(ValueError, match="audio at 44100 Hz: the scenic audio front end takes 16000 Hz"):
        waveform_fbank(stereo, 44100, SCENIC)


def test_bad_parameters_are_one_line_naming_the_key():
    with pytest.raises(ValueError, match="audio_frontend 'kaldi': not one of cavmae, scenic"):
        FeatureParams(audio_frontend="kaldi")
    with pytest.raises(ValueError, match="window_type 'hanning': the scenic audio front end uses a hamming window"):
        fbank(np.zeros(800, np.int16), FeatureParams(audio_frontend="scenic"))
    assert audio_frontend({}) == "cavmae"  # a manifest written before the field holds CAV-MAE's log-mels
    assert audio_frontend({"audio_frontend": "scenic"}) == "scenic"


def _stored(folder) -> dict[str, tuple[np.ndarray, dict]]:
    return {key: (np.load(io.BytesIO(members[LOGMEL_MEMBER]), allow_pickle=False), json.loads(members[METADATA_MEMBER]))
            for key, members in shard_members(folder).items()}


def test_a_scenic_build_records_it_and_stores_the_front_end_of_the_decoded_pcm(synth_corpus, tmp_path):
    arguments = build_arguments(synth_corpus, tmp_path / "scenic", "--audio-frontend", "scenic", val_fraction=0,
                                logmel_dtype="float32")
    at = arguments.index("--target-frames")
    del arguments[at:at + 2]  # the front end's own default length
    assert shard_main(arguments) == 0
    features = read_manifest(tmp_path / "scenic")["features"]
    assert (features["audio_frontend"], features["window_type"], features["target_frames"]) == ("scenic", "hamming", 1000)
    samples = _stored(tmp_path / "scenic")
    assert len(samples) == 12
    key = sorted(samples)[0]
    mel, meta = samples[key]
    pcm = decode_segment(meta["path"], meta["start"], meta["end"] - meta["start"], num_frames=8, short_side=72,
                         jpeg_qscale=3, sample_rate=16000).pcm
    expected, valid = fixed_length(scenic_logmel(torch.from_numpy(pcm.astype(np.float32) / 32768), SCENIC), 1000,
                                   "float32")
    assert mel.dtype == np.float32 and mel.shape == (1000, 128)
    assert meta["audio_valid_frames"] == valid == -(-len(pcm) // 160) == 200  # 2 s segments
    assert np.array_equal(mel, expected)
    np.testing.assert_allclose(mel[:valid], reference_logmel(pcm).astype(np.float32), rtol=1e-6, atol=1e-6)


def test_a_default_build_is_cavmae_and_says_so(shards):
    """The tiny shards of the other tests (no flag): CAV-MAE's window and length, the front end named."""
    features = read_manifest(shards)["features"]
    assert (features["audio_frontend"], features["window_type"]) == ("cavmae", "hanning")


def test_an_unknown_front_end_is_refused_by_the_flag(synth_corpus, tmp_path, capsys):
    with pytest.raises(SystemExit):
        shard_main(build_arguments(synth_corpus, tmp_path / "x", "--audio-frontend", "kaldi"))
    assert "--audio-frontend" in capsys.readouterr().err
