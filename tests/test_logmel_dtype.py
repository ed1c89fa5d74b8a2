"""Log-mel precision (float16 halves the stored log-mel, float32 keeps CAV-MAE's features exactly):
``--logmel-dtype float32`` stores CAV-MAE's float32 features bit for bit, the default float16 build is those features
rounded, both loaders read either, and a folder without the field is float16."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torchaudio

from avmae.cli.shard import main as shard_main
from avmae.config import to_dict
from avmae.data.checked import SampleChecker
from avmae.data.config import DataConfig
from avmae.data.faults import SampleError
from avmae.data.loader import build_loader
from avmae.data.spec import load_spec
from avmae.data.tar_reader import IndexedShard
from avmae.shard.checking.verify import verify
from avmae.shard.format import FORMAT_VERSION, LOGMEL_MEMBER, METADATA_MEMBER
from avmae.shard.inputs.media import decode_segment
from avmae.shard.params import BuildParams, FeatureParams
from avmae.shard.writing.manifest import read_manifest
from avmae.shard.writing.plan import fingerprint
from tests.helpers import TINY_SHARDS, build_shards, shard_members

FRAMES, BINS = int(TINY_SHARDS["target_frames"]), 128


@pytest.fixture(scope="module")
def builds(synth_corpus, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dtype")
    return {dtype: build_shards(synth_corpus, root / dtype, val_fraction=0, logmel_dtype=dtype)
            for dtype in ("float16", "float32")}


def stored(folder: Path) -> dict[str, tuple[np.ndarray, dict]]:
    """key -> (log-mel as stored, metadata) of every sample of the folder."""
    return {key: (np.load(io.BytesIO(members[LOGMEL_MEMBER]), allow_pickle=False), json.loads(members[METADATA_MEMBER]))
            for key, members in shard_members(folder).items()}


def first_sample(folder: Path) -> tuple[IndexedShard, int]:
    shard = load_spec(folder, "train").shards[0]
    return IndexedShard(shard.tar, shard.idx, shard.crc), 0


def cavmae_fbank(pcm: np.ndarray) -> np.ndarray:
    """CAV-MAE's dataloader call on 16-bit PCM (torchaudio.load gives int16 / 32768), zero-padded to FRAMES."""
    waveform = torch.from_numpy(pcm.astype(np.float32) / 32768).unsqueeze(0)
    waveform = waveform - waveform.mean()
    mel = torchaudio.compliance.kaldi.fbank(waveform, htk_compat=True, sample_frequency=16000, use_energy=False,
                                            window_type="hanning", num_mel_bins=BINS, dither=0.0,
                                            frame_shift=10).numpy()
    out = np.zeros((FRAMES, BINS), dtype=np.float32)
    out[:min(len(mel), FRAMES)] = mel[:FRAMES]
    return out


def test_float32_is_the_fbank_output_and_float16_its_rounding(builds):
    half, full = stored(builds["float16"]), stored(builds["float32"])
    assert sorted(half) == sorted(full) and len(full) == 12
    for key, (mel32, meta) in full.items():
        mel16 = half[key][0]
        assert mel32.dtype == np.float32 and mel16.dtype == np.float16 and mel32.shape == (FRAMES, BINS)
        assert np.array_equal(mel16, mel32.astype(np.float16))
    # One sample against an independent fbank call on the segment's PCM.
    key = sorted(full)[0]
    mel32, meta = full[key]
    pcm = decode_segment(meta["path"], meta["start"], meta["end"] - meta["start"], num_frames=8, short_side=72,
                         jpeg_qscale=3, sample_rate=16000).pcm
    reference = cavmae_fbank(pcm)
    assert np.array_equal(mel32, reference)
    assert np.array_equal(half[key][0], reference.astype(np.float16))
    # float16 keeps 11 significant bits: log-mels of |x| < 32 are within 2**-7 / 2 of the float32 value.
    assert 0 < np.abs(half[key][0].astype(np.float32) - reference).max() <= 2 ** -6


def test_manifests_record_the_dtype_and_the_fingerprints_differ(builds):
    manifests = {dtype: read_manifest(folder) for dtype, folder in builds.items()}
    assert manifests["float32"]["features"]["logmel_dtype"] == "float32"
    assert manifests["float16"]["features"]["logmel_dtype"] == "float16"
    assert manifests["float16"]["fingerprint"] != manifests["float32"]["fingerprint"]
    # The statistics come from the stored values: equal to float16 rounding.
    assert manifests["float16"]["logmel_mean"] == pytest.approx(manifests["float32"]["logmel_mean"], abs=1e-3)


def test_the_default_fingerprint_is_the_one_before_the_option():
    """A float16 CAV-MAE build begun before the options existed resumes: its fingerprint is the payload without
    the fields."""
    build = BuildParams()
    features = {name: value for name, value in to_dict(FeatureParams()).items()
                if name not in ("logmel_dtype", "audio_frontend")}
    before = {"format_version": FORMAT_VERSION, "features": features, "build": to_dict(build), "shards": []}
    assert fingerprint([], FeatureParams(), build) == \
        hashlib.sha256(json.dumps(before, sort_keys=True).encode("utf-8")).hexdigest()
    assert fingerprint([], FeatureParams(logmel_dtype="float32"), build) != fingerprint([], FeatureParams(), build)
    assert fingerprint([], FeatureParams.for_frontend("scenic"), build) != fingerprint([], FeatureParams(), build)


@pytest.mark.parametrize("backend", ["torch", pytest.param("dali", marks=pytest.mark.dali)])
def test_both_loaders_read_float32_shards(builds, backend):
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    folder = builds["float32"]
    manifest = read_manifest(folder)
    mean, std = manifest["logmel_mean"], manifest["logmel_std"]
    config = DataConfig(shards=str(folder), eval_split="train", batch_size=4, workers=0, num_frames=4, crop_size=64,
                        backend=backend)
    full = stored(folder)
    seen = 0
    for batch in build_loader(config, "train", train=False):
        for key, audio, valid in zip(batch["key"], batch["audio"], batch["valid"]):
            if valid:
                expected = (torch.from_numpy(full[key][0]) - mean) / std
                assert torch.allclose(audio.float(), expected, atol=1e-5, rtol=0)
                seen += 1
    assert seen == 12


def test_a_manifest_without_the_field_reads_as_float16(builds, tmp_path):
    """Format-version-2 folders written before the option: no logmel_dtype, float16 log-mels; they load."""
    folder = tmp_path / "old"
    shutil.copytree(builds["float16"], folder)
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["features"]["logmel_dtype"]
    path.write_text(json.dumps(manifest))
    config = DataConfig(shards=str(folder), eval_split="train", batch_size=4, workers=0, num_frames=4, crop_size=64)
    assert sum(int(v) for batch in build_loader(config, "train", train=False) for v in batch["valid"]) == 12
    assert shard_main(["verify", str(folder), "--json"]) == 0


def test_a_float32_member_in_a_float16_folder_is_named(builds, tmp_path):
    """The checks hold the folder to its dtype: DALI declares it, so a stray float32 array would break a batch."""
    folder = tmp_path / "mixed"
    shutil.copytree(builds["float32"], folder)
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["features"]["logmel_dtype"] = "float16"
    path.write_text(json.dumps(manifest))
    problems = verify(folder)["problems"]
    assert len(problems) == 12 and all(
        p.endswith("member logmel.npy: bad_shape: dtype float32, the manifest promises float16") for p in problems)
    with pytest.raises(SampleError, match="member logmel.npy.*dtype float32, the manifest promises float16"):
        SampleChecker(load_spec(folder, "train")).read(*first_sample(folder), frames=["00.jpg"])


def test_an_unknown_dtype_is_refused_in_one_line(synth_corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        shard_main(["build", "--list", str(synth_corpus), "--out", str(tmp_path / "x"), "--logmel-dtype", "int8"])
    assert exit_.value.code == 2
    assert "--logmel-dtype" in capsys.readouterr().err
