"""Shards from CAV-MAE's prepared data (for users who hold its extracted frames and wavs, not the videos): its data
JSON, ``frame_{i}/{video_id}.jpg`` folders and 16 kHz wavs, laid out here with CAV-MAE's own file naming from real
clips by ffmpeg. The log-mel must equal CAV-MAE's ``_wav2fbank`` on the same wav (computed below from its source,
with an independent wav reader), the frames must be the extracted JPEGs byte for byte, and every entry whose files
are missing must be a failure naming the file."""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio
from PIL import Image
from scipy.io import wavfile

from avmae.shard.checking.verify import verify
from avmae.shard.format import LOGMEL_MEMBER, METADATA_MEMBER, frame_member
from avmae.shard.inputs.collect import InputSpec, reads_cavmae_prepared
from avmae.shard.inputs.media import ffmpeg_binary
from avmae.shard.writing.manifest import read_manifest
from tests.helpers import build_shards, shard_members

TARGET_LENGTH = 1024  # CAV-MAE's target_length in every released run


def cavmae_wav2fbank(wav: Path) -> np.ndarray:
    """CAV-MAE src/dataloader.py ``_wav2fbank`` without mixup, step for step: torchaudio.load (int16 / 2**15, here
    read by scipy), waveform - waveform.mean(), the fbank call verbatim with the file's rate, ZeroPad2d or cut."""
    sr, pcm = wavfile.read(wav)
    assert pcm.dtype == np.int16
    waveform = torch.from_numpy(np.ascontiguousarray(pcm.reshape(len(pcm), -1).T).astype(np.float32) / 32768)
    waveform = waveform - waveform.mean()
    fbank = torchaudio.compliance.kaldi.fbank(waveform, htk_compat=True, sample_frequency=sr, use_energy=False,
                                              window_type='hanning', num_mel_bins=128, dither=0.0, frame_shift=10)
    p = TARGET_LENGTH - fbank.shape[0]
    if p > 0:
        fbank = torch.nn.ZeroPad2d((0, 0, 0, p))(fbank)
    elif p < 0:
        fbank = fbank[0:TARGET_LENGTH, :]
    return fbank.numpy()


def _ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_binary(), "-nostdin", "-v", "error", "-y", *args], check=True, capture_output=True)


def prepare_like_cavmae(video: Path, video_id: str, frames_root: Path, wav_dir: Path, *, frame_size: str = "224:224",
                        first_channel: bool = True, seconds: float = 10.0) -> Path:
    """CAV-MAE's preprocessing of one video: 10 frames of the first 10 s, one per second, as
    ``frames_root/frame_{i}/{video_id}.jpg`` (224 x 224 like its Resize + CenterCrop), and ``ffmpeg -vn -ar 16000``
    then sox ``remix 1`` (here ffmpeg's pan filter: the first channel) to ``wav_dir/{video_id}.wav``."""
    staging = frames_root / f".{video_id}"
    staging.mkdir(parents=True)
    _ffmpeg("-i", str(video), "-vf", f"fps=10/{seconds},scale={frame_size}", "-frames:v", "10",
            str(staging / "%d.jpg"))
    for i in range(10):
        (frames_root / f"frame_{i}").mkdir(exist_ok=True)
        (staging / f"{i + 1}.jpg").rename(frames_root / f"frame_{i}" / f"{video_id}.jpg")
    staging.rmdir()
    wav_dir.mkdir(exist_ok=True)
    wav = wav_dir / f"{video_id}.wav"
    _ffmpeg("-i", str(video), "-vn", "-ar", "16000", *(["-af", "pan=mono|c0=c0"] if first_channel else []), str(wav))
    return wav


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, clip_factory) -> Path:
    """A CAV-MAE data JSON over five prepared clips: two good ones (one with stereo, un-remixed wav), one whose
    frames are 160x120 (re-encoded to the short side), one with frame_7 deleted, one whose wav is gone."""
    root = tmp_path_factory.mktemp("cavmae")
    frames, wavs = root / "frames", root / "audio"
    entries = []
    plans = {"vid_a": {}, "vid_b": {"first_channel": False}, "vid_small": {"frame_size": "160:120"},
             "vid_no_frame7": {}, "vid_no_wav": {}}
    for n, (video_id, options) in enumerate(plans.items()):
        video = clip_factory(root / "videos" / f"{video_id}.mp4", seconds=10, size="64x48", frequency=300 + 150 * n)
        wav = prepare_like_cavmae(video, video_id, frames, wavs, **options)
        labels = "/m/dog" if n % 2 == 0 else "/m/cat,/m/dog"
        entries.append({"video_id": video_id, "wav": str(wav) if n else f"audio/{video_id}.wav",  # one relative
                        "video_path": str(frames) if n else "frames", "labels": labels})
    (frames / "frame_7" / "vid_no_frame7.jpg").unlink()
    (wavs / "vid_no_wav.wav").unlink()
    (root / "class_labels_indices.csv").write_text("index,mid,display_name\n0,/m/cat,Cat\n1,/m/dog,Dog\n")
    (root / "datafile.json").write_text(json.dumps({"data": entries}, indent=1))
    return root


@pytest.fixture(scope="module")
def built(prepared, tmp_path_factory) -> Path:
    return build_shards(prepared / "datafile.json", tmp_path_factory.mktemp("out") / "shards", "--list-format",
                        "cavmae", "--class-labels", str(prepared / "class_labels_indices.csv"), "--split", "train",
                        num_frames=10, short_side=224, target_frames=TARGET_LENGTH, num_mel_bins=128,
                        logmel_dtype="float32", shard_size=2, workers=1, val_fraction=0)


def _samples(out: Path) -> dict[str, dict[str, bytes]]:
    """video_id -> members of its sample."""
    return {json.loads(members[METADATA_MEMBER])["video_id"]: members for members in shard_members(out).values()}


def test_logmel_equals_cavmae_wav2fbank_and_frames_are_the_extracted_jpegs(built, prepared):
    samples = _samples(built)
    assert sorted(samples) == ["vid_a", "vid_b", "vid_small"]
    for video_id in ("vid_a", "vid_b"):
        members = samples[video_id]
        mel = np.load(io.BytesIO(members[LOGMEL_MEMBER]), allow_pickle=False)
        reference = cavmae_wav2fbank(prepared / "audio" / f"{video_id}.wav")
        assert mel.dtype == np.float32 and mel.shape == (TARGET_LENGTH, 128)
        assert np.array_equal(mel, reference), f"{video_id}: max diff {np.abs(mel - reference).max()}"
        for i in range(10):
            assert members[frame_member(i)] == (prepared / "frames" / f"frame_{i}" / f"{video_id}.jpg").read_bytes()
        meta = json.loads(members[METADATA_MEMBER])
        assert meta["frame_count"] == 10 and meta["frame_times"] == [float(i) for i in range(10)]
        assert meta["frame_timing"] == "cavmae_one_per_second" and meta["frames_reencoded"] is False
        samples_in_wav = len(wavfile.read(prepared / "audio" / f"{video_id}.wav")[1])
        assert 160000 <= samples_in_wav < 161000  # 10 s at 16 kHz, plus the AAC decoder's priming
        assert meta["audio_samples"] == samples_in_wav and meta["end"] == pytest.approx(samples_in_wav / 16000)
        assert meta["audio_valid_frames"] == (samples_in_wav - 400) // 160 + 1  # kaldi's snip_edges frame count
        assert meta["split"] == "train"
    assert json.loads(samples["vid_b"][METADATA_MEMBER])["wav_channels"] == 2  # the wav without sox's remix
    assert json.loads(samples["vid_a"][METADATA_MEMBER])["labels"] == ["/m/dog"]
    assert json.loads(samples["vid_b"][METADATA_MEMBER])["labels"] == ["/m/cat", "/m/dog"]


def test_frames_of_another_size_are_reencoded_to_the_short_side(built):
    members = _samples(built)["vid_small"]
    assert json.loads(members[METADATA_MEMBER])["frames_reencoded"] is True
    for i in range(10):
        with Image.open(io.BytesIO(members[frame_member(i)])) as image:
            assert image.format == "JPEG" and image.size == (298, 224)  # 160x120 scaled to short side 224, even width


def test_missing_files_are_failures_naming_them_and_the_build_verifies(built, prepared):
    manifest = read_manifest(built)
    assert manifest["source"]["kind"] == "cavmae"
    assert manifest["labels"]["names"] == ["/m/cat", "/m/dog"] and manifest["labels"]["display_names"] == ["Cat", "Dog"]
    assert manifest["features"]["num_frames"] == 10 and manifest["features"]["short_side"] == 224
    totals = manifest["totals"]
    assert (totals["inputs"], totals["inputs_ok"], totals["failures"], totals["samples"]) == (5, 3, 2, 3)
    failures = {row["id"]: row for row in map(json.loads, (built / "failures.jsonl").read_text().splitlines())}
    assert failures["vid_no_frame7"]["reason"] == "missing_frame"
    assert str(prepared / "frames" / "frame_7" / "vid_no_frame7.jpg") in failures["vid_no_frame7"]["detail"]
    assert failures["vid_no_wav"]["reason"] == "missing_wav"
    assert str(prepared / "audio" / "vid_no_wav.wav") in failures["vid_no_wav"]["detail"]
    assert failures["vid_no_wav"]["source"] == "datafile.json:data[4]"
    result = verify(built)
    assert result["ok"], result["problems"]


def test_cli_defaults_to_cavmae_geometry_and_rejects_a_malformed_datafile(prepared, tmp_path, capsys):
    from avmae.cli.shard import main as shard_main

    out = tmp_path / "defaults"
    assert shard_main(["build", "--list", str(prepared / "datafile.json"), "--out", str(out), "--target-frames",
                       "64", "--workers", "1", "--json"]) == 0  # format detected from the JSON
    features = read_manifest(out)["features"]
    assert (features["num_frames"], features["short_side"]) == (10, 224)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"data": [{"video_id": "x", "wav": "x.wav", "labels": "/m/a"}]}))
    assert shard_main(["build", "--list", str(bad), "--list-format", "cavmae", "--out", str(tmp_path / "o")]) == 2
    assert "data[0] lacks the text field(s) video_path" in capsys.readouterr().err


def test_one_rule_tells_cavmae_prepared_data(prepared, tmp_path):
    """The command's frame defaults and the input collection ask the same question of inputs/collect.py."""
    datafile = prepared / "datafile.json"
    csv = tmp_path / "segments.csv"
    csv.write_text('# YTID, start_seconds, end_seconds, positive_labels\nAAAAAAAAAAA, 0, 10, "/m/dog"\n')
    odd = tmp_path / "odd.txt"
    odd.write_text("what is this\n")
    assert reads_cavmae_prepared(InputSpec(list_path=datafile))  # told from the file
    assert reads_cavmae_prepared(InputSpec(list_path=tmp_path / "gone.json", list_format="cavmae"))  # as named
    assert not reads_cavmae_prepared(InputSpec(list_path=csv))
    assert not reads_cavmae_prepared(InputSpec(list_path=datafile, list_format="audioset"))
    assert not reads_cavmae_prepared(InputSpec(list_path=odd))  # the list reader says what is wrong with it
    assert not reads_cavmae_prepared(InputSpec(src=tmp_path))
