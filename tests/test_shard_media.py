"""ffmpeg decoding and features: the right frames, rotation, the CAV-MAE log-mel."""

from __future__ import annotations

import io
import subprocess

import numpy as np
import pytest
import torch
import torchaudio
from PIL import Image

from avmae.shard.inputs.media import bin_centres, decode_segment, ffmpeg_binary, probe, split_mjpeg
from avmae.shard.params import FeatureParams
from avmae.shard.samples.logmel import fbank, fixed_length, logmel


def _frame_index_clip(path, seconds=8, rate=25, extra_filter=""):
    """A lossless clip whose frame n has luma 16 + n (n < 200), so a decoded frame tells which frame it was."""
    source = f"color=c=black:s=64x48:r={rate}:d={seconds},geq=lum='16+N':cb=128:cr=128{extra_filter}"
    subprocess.run([ffmpeg_binary(), "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", source,
                    "-c:v", "libx264", "-qp", "0", "-pix_fmt", "yuv420p", str(path)], check=True)
    return path


def _frame_numbers(jpegs):
    # JPEG decoding maps limited-range luma to full range: value = (Y - 16) * 255 / 219.
    return [np.asarray(Image.open(io.BytesIO(j)).convert("L"), dtype=np.float64).mean() * 219 / 255
            for j in jpegs]


@pytest.mark.parametrize("start,duration", [(0.0, 8.0), (2.0, 4.0), (1.3, 2.5)])
def test_frames_are_the_first_at_or_after_each_bin_centre(tmp_path, start, duration):
    clip = _frame_index_clip(tmp_path / "index.mp4")
    segment = decode_segment(str(clip), start, duration, num_frames=8, short_side=48, jpeg_qscale=2, sample_rate=None)
    assert len(segment.jpegs) == 8
    expected = [np.ceil((start + t) * 25 - 1e-6) for t in bin_centres(duration, 8)]
    assert np.allclose(_frame_numbers(segment.jpegs), expected, atol=1.0)
    # showinfo's timestamps are relative to the segment start and name the same frames
    assert np.allclose([start + t for t in segment.frame_times], [n / 25 for n in expected], atol=0.05)


def test_variable_frame_rate_keeps_timestamp_order(tmp_path):
    # Frame n is shown at n/25 + small irregular offsets; with -fps_mode vfr the gaps stay irregular.
    clip = _frame_index_clip(tmp_path / "vfr.mp4", extra_filter=",setpts='N/25/TB+0.02*sin(N)/TB'")
    segment = decode_segment(str(clip), 0.0, 7.5, num_frames=6, short_side=48, jpeg_qscale=2, sample_rate=None)
    assert len(segment.jpegs) == 6
    assert segment.frame_times == sorted(segment.frame_times)
    for time, target in zip(segment.frame_times, bin_centres(7.5, 6)):
        assert target - 1e-6 <= time < target + 0.1


def test_display_rotation_is_applied_before_the_short_side_resize(tmp_path, clip_factory):
    clip = clip_factory(tmp_path / "wide.mp4", size="128x64", seconds=2)
    rotated = tmp_path / "rotated.mp4"
    subprocess.run([ffmpeg_binary(), "-nostdin", "-v", "error", "-y", "-i", str(clip), "-c", "copy",
                    "-metadata:s:v", "rotate=90", str(rotated)], check=True)
    assert probe(str(rotated)).rotation in (90, -90, 270)
    plain = decode_segment(str(clip), 0, 2, num_frames=2, short_side=32, jpeg_qscale=3, sample_rate=None)
    turned = decode_segment(str(rotated), 0, 2, num_frames=2, short_side=32, jpeg_qscale=3, sample_rate=None)
    assert Image.open(io.BytesIO(plain.jpegs[0])).size == (64, 32)
    assert Image.open(io.BytesIO(turned.jpegs[0])).size == (32, 64)


def test_audio_is_the_first_channel_resampled_to_16k(tmp_path):
    # Left channel a 440 Hz tone, right channel silence: a down-mix would halve the amplitude.
    path = tmp_path / "stereo.mkv"
    subprocess.run([ffmpeg_binary(), "-nostdin", "-v", "error", "-y",
                    "-f", "lavfi", "-i", "testsrc2=size=64x48:rate=10:duration=2",
                    "-f", "lavfi", "-i", "aevalsrc='0.5*sin(2*PI*440*t)|0':s=48000:d=2",
                    "-c:v", "libx264", "-c:a", "pcm_s16le", str(path)], check=True)
    segment = decode_segment(str(path), 0, 2, num_frames=2, short_side=48, jpeg_qscale=3, sample_rate=16000)
    assert abs(len(segment.pcm) - 32000) <= 16
    rms = np.sqrt(np.mean((segment.pcm.astype(np.float64) / 32768) ** 2))
    assert rms == pytest.approx(0.5 / np.sqrt(2), rel=0.02)


def test_logmel_equals_torchaudio_kaldi_fbank_with_cavmae_arguments():
    rng = np.random.default_rng(0)
    pcm = (rng.standard_normal(16000 * 3) * 3000).astype(np.int16)
    params = FeatureParams()
    # The reference: CAV-MAE's dataloader on a 16-bit wav (torchaudio.load gives int16 / 32768).
    waveform = torch.from_numpy(pcm.astype(np.float32) / 32768).unsqueeze(0)
    waveform = waveform - waveform.mean()
    reference = torchaudio.compliance.kaldi.fbank(
        waveform, htk_compat=True, sample_frequency=16000, use_energy=False, window_type="hanning",
        num_mel_bins=128, dither=0.0, frame_shift=10)
    ours = fbank(pcm, params)
    assert ours.shape == (298, 128)
    assert torch.equal(ours, reference)
    stored, valid = logmel(pcm, params)
    assert stored.shape == (1024, 128) and stored.dtype == np.float16 and valid == 298
    assert np.array_equal(stored[:298], reference.numpy().astype(np.float16))
    assert not stored[298:].any()  # zero-padded at the end, in the log-mel domain (CAV-MAE)


def test_fixed_length_cuts_long_inputs():
    features = torch.arange(2000 * 4, dtype=torch.float32).reshape(2000, 4)
    out, valid = fixed_length(features, 1024)
    assert valid == 1024 and out.shape == (1024, 4)
    assert np.array_equal(out, features[:1024].numpy().astype(np.float16))


def test_split_mjpeg_recovers_each_jpeg():
    images = []
    for shade in (10, 128, 250):
        buffer = io.BytesIO()
        Image.new("RGB", (16, 8), (shade, shade, shade)).save(buffer, format="JPEG")
        images.append(buffer.getvalue())
    assert split_mjpeg(b"".join(images)) == images
    assert split_mjpeg(b"") == []
