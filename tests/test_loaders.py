"""Loaders: the DALI and torch backends give the same evaluation batches; ranks and workers read disjoint
data; evaluation covers every sample once; training streams never run dry; bad data is named and skipped."""

from __future__ import annotations

import json
import logging
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

from avmae.data.augment import mixup, noise_and_shift, spec_augment
from avmae.data.config import AugmentConfig, DataConfig
from avmae.cli.eval import _eval_parser
from avmae.config import from_dict
from avmae.data.loader import build_loader, choose_backend
from avmae.data.samples import frame_members
from avmae.data.spec import DataMismatchError
from avmae.shard.format import LOGMEL_MEMBER
from tests.faults.damage import flip_bits_in_place, keys_of, rewrite_samples, write_label_sidecar
from tests.helpers import build_shards


@pytest.fixture(scope="module")
def shards(synth_corpus, tmp_path_factory) -> Path:
    """The tiny shards, every clip in split train."""
    return build_shards(synth_corpus, tmp_path_factory.mktemp("loader") / "shards", val_fraction=0)


@pytest.fixture(params=["torch", pytest.param("dali", marks=pytest.mark.dali)])
def backend(request) -> str:
    """Each loader backend; DALI's cases are skipped where it is not installed."""
    if request.param == "dali":
        pytest.importorskip("nvidia.dali")
    return request.param


def config(shards: Path, **overrides) -> DataConfig:
    base = dict(shards=str(shards), eval_split="train", batch_size=2, workers=0, num_frames=4, crop_size=64,
                shuffle_buffer=2)
    return DataConfig(**{**base, **overrides})


def test_frame_members_spread_evenly():
    assert frame_members(16, 16) == [f"{i:02d}.jpg" for i in range(16)]
    assert frame_members(16, 4) == ["02.jpg", "06.jpg", "10.jpg", "14.jpg"]
    with pytest.raises(ValueError, match="wants 8 frames"):
        frame_members(4, 8)


def test_webdataset_is_the_torch_backends_older_name_in_configs_and_on_the_command_line(shards):
    """Configs written before the rename still run, on the torch backend and with its batches."""
    assert choose_backend("webdataset") == choose_backend("torch") == "torch"
    with pytest.raises(ValueError, match="use auto, dali or torch"):
        choose_backend("wds")
    flags = _eval_parser().parse_args(["--ckpt", "run", "--data", str(shards), "--task", "vggsound",
                                       "--backend", "webdataset"])
    assert choose_backend(flags.backend) == "torch"
    older = from_dict(DataConfig, {**vars(config(shards)), "backend": "webdataset"})
    loader = build_loader(older, "train", train=False)
    assert loader.backend == "torch"
    current = list(build_loader(config(shards, backend="torch"), "train", train=False))
    for ours, theirs in zip(loader, current, strict=True):
        assert ours["key"] == theirs["key"] and torch.equal(ours["video"], theirs["video"])


@pytest.mark.dali
def test_dali_and_torch_give_the_same_eval_batches(shards):
    pytest.importorskip("nvidia.dali")
    batches = {}
    for backend in ("torch", "dali"):
        loader = build_loader(config(shards, backend=backend), "train", train=False)
        batches[backend] = list(loader)
        assert len(batches[backend]) == len(loader) == 6  # 12 samples / batch 2
    for ours, theirs in zip(batches["torch"], batches["dali"]):
        assert ours["key"] == theirs["key"]
        assert torch.equal(ours["valid"], theirs["valid"]) and torch.equal(ours["label"], theirs["label"])
        assert torch.equal(ours["audio"], theirs["audio"])  # the same float16 array, normalised the same way
        assert ours["video"].shape == theirs["video"].shape == (2, 4, 3, 64, 64)
        # Both decode with libjpeg-turbo; allow the decoders' rounding (in normalised units: 2/255 / std).
        assert (ours["video"] - theirs["video"]).abs().max() <= 2 / 255 / 0.224 + 1e-6


@pytest.mark.dali
@pytest.mark.parametrize("workers,offsets,crop,stride,frames", [
    (0, 1, "random_resized", 0, 4), (2, 4, "random_resized", 0, 4), (0, 1, "scale_jitter", 0, 4),
    (2, 1, "scale_jitter", 1, 4),
    (0, 1, "scale_jitter", 2, 12)])  # a window longer than the 8 stored frames wraps, as Scenic's does
def test_dali_and_torch_train_on_the_same_samples_with_the_same_crops(shards, workers, offsets, crop, stride, frames):
    pytest.importorskip("nvidia.dali")
    batches = {}
    for backend in ("torch", "dali"):
        cfg = config(shards, backend=backend, workers=workers, batch_size=3, frame_stride=stride, num_frames=frames)
        augment = AugmentConfig(crop=crop, crop_scale=(0.1, 1.0), train_offsets=offsets, jitter_short_side=72)
        stream = iter(build_loader(cfg, "train", train=True, rank=1, world=2, augment=augment))
        batches[backend] = [next(stream) for _ in range(5)]  # past one epoch of the rank's 6 samples
    for ours, theirs in zip(batches["torch"], batches["dali"]):
        assert ours["key"] == theirs["key"]
        assert torch.equal(ours["label"], theirs["label"]) and torch.equal(ours["audio"], theirs["audio"])
        # Same box and flip, two resize implementations: equal but for rounding and the box's edge pixels
        # (DALI's filter reads a little past the box, torch clamps at it). In grey levels:
        levels = (ours["video"] - theirs["video"]).abs() * 0.224 * 255
        assert levels.mean() < 1.0 and levels.quantile(0.99) < 12


def test_two_ranks_cover_an_odd_eval_set_exactly_once(shards, backend):
    keys, valid_keys, lengths = [], [], []
    for rank in range(2):
        cfg = config(shards, backend=backend, batch_size=4)
        loader = build_loader(cfg, "train", train=False, rank=rank, world=2)
        batches = list(loader)
        lengths.append(len(batches))
        for batch in batches:
            keys += batch["key"]
            valid_keys += [k for k, ok in zip(batch["key"], batch["valid"].tolist()) if ok]
    assert lengths[0] == lengths[1]  # no rank waits for another in a collective
    assert len(valid_keys) == len(set(valid_keys)) == 12


def test_odd_count_padding_is_invalid(tmp_path, shards):
    # 12 samples over 5 ranks: ranges of 2 and 3 samples, all ranks 2 batches of 2.
    seen = []
    for rank in range(5):
        batches = list(build_loader(config(shards, batch_size=2), "train", train=False, rank=rank, world=5))
        assert len(batches) == 2
        seen += [k for b in batches for k, ok in zip(b["key"], b["valid"].tolist()) if ok]
    assert sorted(seen) == sorted(set(seen)) and len(seen) == 12


@pytest.mark.parametrize("workers", [0, 2])
def test_training_ranks_and_workers_read_disjoint_shards(shards, workers):
    per_rank = []
    for rank in range(2):
        loader = build_loader(config(shards, workers=workers, batch_size=1, shuffle_buffer=1), "train",
                              train=True, rank=rank, world=2)
        stream = iter(loader)
        per_rank.append({key for _ in range(40) for key in next(stream)["key"]})  # several passes: endless
    assert per_rank[0].isdisjoint(per_rank[1])
    assert len(per_rank[0] | per_rank[1]) == 12


def test_fewer_shards_than_readers_splits_by_sample(shards):
    # 6 shards, 4 ranks x 2 workers = 8 readers: still disjoint, still complete.
    seen = []
    for rank in range(4):
        loader = build_loader(config(shards, workers=2, batch_size=1, shuffle_buffer=1), "train",
                              train=True, rank=rank, world=4)
        stream = iter(loader)
        seen.append({key for _ in range(12) for key in next(stream)["key"]})
    assert all(a.isdisjoint(b) for i, a in enumerate(seen) for b in seen[i + 1:])
    assert len(set().union(*seen)) == 12


def test_training_frames_come_from_a_random_offset_per_draw(shards):
    # One frame per sample, no crop or flip randomness: a clip looks the same every time unless its frame changes.
    fixed = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip=False)
    for offsets, expected in ((1, {1}), (4, {2, 3, 4})):
        stream = iter(build_loader(config(shards, num_frames=1, batch_size=1), "train", train=True,
                                   augment=AugmentConfig(train_offsets=offsets, **fixed)))
        looks: dict[str, set[bytes]] = {}
        for _ in range(72):  # six passes over the 12 clips
            batch = next(stream)
            looks.setdefault(batch["key"][0], set()).add(batch["video"].numpy().tobytes())
        assert {len(v) for v in looks.values()} <= expected and max(len(v) for v in looks.values()) == max(expected)


def test_training_stream_reshuffles_each_epoch(shards):
    loader = build_loader(config(shards, batch_size=1, shuffle_buffer=4), "train", train=True)
    stream = iter(loader)
    first = [next(stream)["key"][0] for _ in range(12)]
    second = [next(stream)["key"][0] for _ in range(12)]
    assert len(set(first + second)) == 12  # the stream wraps around and keeps going
    assert first != second


def test_train_augmentation_is_the_same_for_every_frame(shards, tmp_path, backend):
    copy = tmp_path / "still"
    shutil.copytree(shards, copy)
    for tar in copy.glob("train-*.tar"):  # every frame of a clip becomes its first frame
        rewrite_samples(tar, lambda parts: {ext: parts["00.jpg"] if ext.endswith(".jpg") else data
                                             for ext, data in parts.items()})
    loader = build_loader(config(copy, backend=backend, batch_size=4), "train", train=True,
                          augment=AugmentConfig(crop_scale=(0.2, 0.5)))
    stream = iter(loader)
    for _ in range(3):
        video = next(stream)["video"]
        # one random crop and flip per clip: identical input frames stay identical
        assert torch.allclose(video, video[:, :1].expand_as(video))
        assert not torch.allclose(video[0, 0], video[1, 0])


def test_feature_mismatch_is_an_error_naming_both_values(shards):
    with pytest.raises(DataMismatchError, match="target_frames=208 but the run expects 1024"):
        build_loader(config(shards), "train", train=False, expect={"target_frames": 1024})


def test_evaluation_frames_smaller_than_the_crop_are_refused_naming_the_setting(shards, backend):
    with pytest.raises(ValueError, match=r"short side 72 are smaller than data.crop_size 96: set data.eval_short_side"):
        build_loader(config(shards, backend=backend, crop_size=96), "train", train=False)
    loader = build_loader(config(shards, backend=backend, crop_size=96, eval_short_side=96), "train", train=False)
    assert next(iter(loader))["video"].shape[-2:] == (96, 96)


def test_the_audio_front_end_must_be_the_models_and_an_older_manifest_means_cavmaes(shards, tmp_path):
    with pytest.raises(DataMismatchError, match="audio_frontend='cavmae' but the run expects 'scenic'"):
        build_loader(config(shards), "train", train=False, expect={"audio_frontend": "scenic"})
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["features"]["audio_frontend"]  # a build from before the option
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert len(build_loader(config(copy), "train", train=False, expect={"audio_frontend": "cavmae"})) > 0
    with pytest.raises(DataMismatchError, match="audio_frontend='cavmae'"):
        build_loader(config(copy), "train", train=False, expect={"audio_frontend": "scenic"})


def test_unknown_format_version_is_refused(shards, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="format version 99"):
        build_loader(config(copy), "train", train=False)


def _drop_member(tar_path: Path, member_ext: str) -> str:
    """Rewrite a tar without one member of its first sample; returns that sample's key."""
    with tarfile.open(tar_path) as tar:
        first_key = tar.getmembers()[0].name.split(".", 1)[0]

    def drop(parts: dict[str, bytes]) -> dict[str, bytes]:
        if parts["json"] and json.loads(parts["json"])["key"] == first_key:
            return {ext: data for ext, data in parts.items() if ext != member_ext}
        return parts

    rewrite_samples(tar_path, drop)
    return first_key


def test_a_sample_missing_a_member_is_named_and_skipped(shards, tmp_path, caplog):
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    broken = sorted(copy.glob("train-*.tar"))[0]
    key = _drop_member(broken, "03.jpg")  # one of the frames the loader uses (01, 03, 05, 07 of 8)
    caplog.set_level(logging.WARNING)
    loader = build_loader(config(copy, batch_size=1, shuffle_buffer=1), "train", train=True)
    stream = iter(loader)
    keys = {next(stream)["key"][0] for _ in range(30)}
    assert key not in keys and len(keys) == 11
    assert any(key in r.getMessage() and broken.name in r.getMessage() and "03.jpg" in r.getMessage()
               for r in caplog.records)
    # In evaluation it keeps its place, marked invalid, so the other samples still count once.
    batches = list(build_loader(config(copy, batch_size=4), "train", train=False))
    invalid = [k for b in batches for k, ok in zip(b["key"], b["valid"].tolist()) if not ok]
    valid = [k for b in batches for k, ok in zip(b["key"], b["valid"].tolist()) if ok]
    assert len(valid) == 11 and key not in valid and invalid


def test_a_truncated_tar_is_logged_and_the_rest_still_streams(shards, tmp_path, caplog):
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    broken = sorted(copy.glob("train-*.tar"))[1]
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 3])
    caplog.set_level(logging.WARNING)
    loader = build_loader(config(copy, batch_size=1, shuffle_buffer=1), "train", train=True)
    stream = iter(loader)
    keys = {next(stream)["key"][0] for _ in range(30)}
    assert 10 <= len(keys) <= 11  # the samples after the cut are lost, the other shards are read
    assert any(broken.name in r.getMessage() for r in caplog.records)


def test_spec_augment_masks_one_band_and_one_span_per_sample():
    audio = torch.ones(8, 100, 32)
    masked = spec_augment(audio, freq_mask=10, time_mask=30, generator=torch.Generator().manual_seed(0))
    for sample in masked:
        zero_bins = (sample == 0).all(dim=0).nonzero().flatten()
        zero_frames = (sample == 0).all(dim=1).nonzero().flatten()
        assert len(zero_bins) < 10 and len(zero_frames) < 30
        for run in (zero_bins, zero_frames):  # contiguous
            assert len(run) == 0 or int(run[-1] - run[0]) + 1 == len(run)
    assert spec_augment(audio, 0, 0).equal(audio)


def test_mixup_mixes_inputs_and_targets_with_one_lambda():
    torch.manual_seed(0)
    batch = {"audio": torch.randn(6, 5, 3), "video": torch.randn(6, 2, 3, 4, 4), "label": torch.tensor([0, 1, 2, 3, 0, 1])}
    out = mixup(batch, {"label": 4}, probability=1.0, generator=torch.Generator().manual_seed(1))
    lam, partner = out["mixup_lambda"], out["mixup_partner"]
    assert ((lam > 0.2) & (lam < 0.8)).all()  # Beta(10, 10)
    one_hot = torch.nn.functional.one_hot(batch["label"], 4).float()
    for i in range(6):
        j = int(partner[i])
        assert torch.allclose(out["audio"][i], lam[i] * batch["audio"][i] + (1 - lam[i]) * batch["audio"][j])
        assert torch.allclose(out["video"][i], lam[i] * batch["video"][i] + (1 - lam[i]) * batch["video"][j])
        assert torch.allclose(out["targets"]["label"][i], lam[i] * one_hot[i] + (1 - lam[i]) * one_hot[j])
    unmixed = mixup(batch, {"label": 4}, probability=0.0)
    assert torch.equal(unmixed["audio"], batch["audio"]) and torch.equal(unmixed["targets"]["label"], one_hot)


def test_balanced_weights_favour_rare_labels():
    from avmae.data.schedule import balanced_weights

    counts = {"speech": 100, "music": 50, "whale": 2}
    weights = balanced_weights([["speech"], ["speech", "music"], ["whale"], []], counts)
    assert weights[0] == pytest.approx(0.01) and weights[1] == pytest.approx(0.03) and weights[2] == pytest.approx(0.5)
    assert weights[3] == pytest.approx(0.01)  # unlabelled: the smallest weight


def test_balanced_sampling_draws_each_class_about_equally(shards, tmp_path, backend):
    # Make class_00 rare: only one of its three samples keeps the label, the others become class_01.
    copy = tmp_path / "skewed"
    shutil.copytree(shards, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    relabelled = []

    def relabel(parts):
        meta = json.loads(parts["json"])
        if meta["labels"] == ["class_00"] and relabelled:
            meta["labels"] = ["class_01"]
        if meta["labels"] == ["class_00"]:
            relabelled.append(meta["key"])
        return {**parts, "json": json.dumps(meta).encode()}

    for tar in sorted(copy.glob("train-*.tar")):
        rewrite_samples(tar, relabel)
        write_label_sidecar(tar)  # balanced sampling weighs by the sidecar: it must carry the new labels too
    manifest["splits"]["train"]["label_counts"] = {"class_00": 1, "class_01": 5, "class_02": 3, "class_03": 3}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    draws = {}
    for balanced in (False, True):
        cfg = config(copy, backend=backend, batch_size=12, balanced_sampling=balanced)
        loader = build_loader(cfg, "train", train=True)
        stream = iter(loader)
        labels = torch.cat([next(stream)["label"] for _ in range(60)])
        draws[balanced] = torch.bincount(labels, minlength=4).float() / len(labels)
    assert draws[False][0] == pytest.approx(1 / 12, abs=0.03)
    assert draws[True][0] == pytest.approx(1 / 4, abs=0.05)  # four classes, equal mass
    assert draws[True].max() - draws[True].min() < 0.1


@pytest.mark.parametrize("backend,workers", [("torch", 0), ("torch", 2),
                                             pytest.param("dali", 2, marks=pytest.mark.dali)])
def test_a_resumed_stream_continues_where_it_stopped(shards, backend, workers):
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    cfg = config(shards, backend=backend, workers=workers, batch_size=2, shuffle_buffer=3)
    straight = iter(build_loader(cfg, "train", train=True))
    expected = [next(straight) for _ in range(9)]
    resumed = iter(build_loader(cfg, "train", train=True, start_batch=5))
    for batch in expected[5:]:
        again = next(resumed)
        assert again["key"] == batch["key"]
        assert torch.equal(again["video"], batch["video"])  # the same crops and flips too


@pytest.mark.parametrize("backend,workers", [("torch", 0), ("torch", 2),
                                             pytest.param("dali", 0, marks=pytest.mark.dali),
                                             pytest.param("dali", 2, marks=pytest.mark.dali)])
def test_a_stream_resumed_after_bad_samples_continues_where_it_stopped(shards, tmp_path, backend, workers):
    """A reader's batch takes its bad draws too: the resumed stream starts each reader after the draws its last
    consumed batch reports (``drawn``), not after batches x batch size, which would replay samples."""
    if backend == "dali":
        pytest.importorskip("nvidia.dali")
    damaged = Path(shutil.copytree(shards, tmp_path / "shards"))
    for tar in sorted(damaged.glob("train-*.tar")):  # one bad sample in every shard: each reader meets some early
        flip_bits_in_place(tar, LOGMEL_MEMBER, len(keys_of(tar)) - 1)  # read by every draw, whatever its frames
    cfg = config(damaged, backend=backend, workers=workers, batch_size=2, shuffle_buffer=3, max_skip_fraction=1.0)
    straight = iter(build_loader(cfg, "train", train=True))
    expected = [next(straight) for _ in range(9)]
    assert any(batch["skipped"] for batch in expected[:5])  # bad samples were met before the stop
    positions = {}
    for batch in expected[:5]:
        reader, draws = batch["drawn"]
        positions[reader] = draws
    resumed = iter(build_loader(cfg, "train", train=True, start_batch=5, reader_draws=positions))
    for batch in expected[5:]:
        again = next(resumed)
        assert again["key"] == batch["key"] and again["drawn"] == batch["drawn"]
        assert again["skipped"] == batch["skipped"]
        assert torch.equal(again["video"], batch["video"])  # the same crops and flips too
    # batches x batch size, as before the readers' draws were recorded: the stream slips back over used samples
    replayed = iter(build_loader(cfg, "train", train=True, start_batch=5))
    assert [next(replayed)["key"] for _ in expected[5:]] != [batch["key"] for batch in expected[5:]]


def test_noise_and_shift_adds_bounded_noise_then_rolls_each_sample_in_time():
    audio = torch.arange(2 * 50 * 4, dtype=torch.float32).view(2, 50, 4)
    out = noise_and_shift(audio, generator=torch.Generator().manual_seed(3))
    for sample, original in zip(out, audio):
        # Some circular shift of the original time axis explains the output up to noise in [0, 0.1).
        fits = [s for s in range(50) if ((sample - original.roll(s, dims=0)) >= 0).all()
                and ((sample - original.roll(s, dims=0)) < 0.1).all()]
        assert len(fits) == 1
    assert not torch.equal(out[0] - audio[0], out[1] - audio[1])  # each sample its own shift and noise
