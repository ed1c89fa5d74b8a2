"""Corrupt samples, made for real in shards from the real builder, on both backends: each is caught by the check
meant for it, skipped in training (used + skipped = drawn) and kept in place, invalid, in evaluation (scored +
invalid = the split's count), and recorded in ``batch["skipped"]`` with the same key and reason on both backends.
A rank whose every sample is bad stops with SkipBudgetExceeded; version-1 shards load, unchecked, with a notice."""

from __future__ import annotations

import io
import json
import logging
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from avmae.data.config import DataConfig
from avmae.data.faults import SkipBudgetExceeded
from avmae.data.loader import build_loader
from avmae.data.readers import open_shards
from avmae.data.schedule import TrainSchedule
from avmae.data.spec import load_spec
from avmae.shard.format import CHECKSUM_SUFFIX, LOGMEL_MEMBER
from tests.faults.damage import change_one, cut_in_half, flip_bits_in_place, flip_every_sample, keys_of, stray_marker
from tests.helpers import build_shards, training_skips


@pytest.fixture(scope="module")
def clean(synth_corpus, tmp_path_factory) -> Path:
    return build_shards(synth_corpus, tmp_path_factory.mktemp("faults") / "shards", val_fraction="0")


@pytest.fixture(params=["torch", pytest.param("dali", marks=pytest.mark.dali)])
def backend(request) -> str:
    if request.param == "dali":
        pytest.importorskip("nvidia.dali")
    return request.param


def _inf_logmel(npy: bytes) -> bytes:
    mel = np.load(io.BytesIO(npy))
    mel[3, 5] = np.inf
    out = io.BytesIO()
    np.save(out, mel)
    return out.getvalue()


@pytest.fixture(scope="module")
def damaged(clean, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A copy of the shards with one fault per shard; returns it and {bad key: expected reason}."""
    out = tmp_path_factory.mktemp("damaged") / "shards"
    shutil.copytree(clean, out)
    tars = sorted(out.glob("train-*.tar"))
    assert len(tars) == 6
    bad = {flip_bits_in_place(tars[0], "01.jpg"): "checksum"}  # entropy data: decodes to wrong pixels unchecked
    bad[change_one(tars[1], "03.jpg", lambda d: d[:2] + b"\x00\x00" + d[4:], fix_checksums=True)] = "decode"
    bad[change_one(tars[2], "05.jpg", lambda d: d[:len(d) // 2], fix_checksums=True)] = "truncated"
    bad[change_one(tars[3], LOGMEL_MEMBER, _inf_logmel, fix_checksums=True)] = "not_finite"
    bad[change_one(tars[5], "07.jpg", lambda d: stray_marker(d)[0], fix_checksums=True)] = "decode"  # DALI took it
    for key in cut_in_half(tars[4]):
        bad[key] = "truncated"
    return out, bad


def config(shards: Path, **overrides) -> DataConfig:
    base = dict(shards=str(shards), eval_split="train", batch_size=1, workers=0, num_frames=4, crop_size=64,
                shuffle_buffer=1, max_skip_fraction=1.0)
    return DataConfig(**{**base, **overrides})


def _expected_training_records(cfg: DataConfig, bad: dict[str, str], batches: int) -> list[list[str]]:
    """The reference: walk the rank's schedule; each batch carries the bad draws since the previous batch."""
    spec = load_spec(cfg.shards, "train")
    draws = TrainSchedule(open_shards(spec), cfg, spec.label_counts, rank=0, world=1, readers=1).draws(0)
    expected, pending = [], []
    for draw in draws:
        key = draw.shard.keys[draw.index]
        if key in bad:
            pending.append(key)
            continue
        expected.append(pending)
        pending = []
        if len(expected) == batches:
            return expected
    raise AssertionError("the schedule ended")


def test_training_skips_and_records_each_fault(damaged, backend):
    shards, bad = damaged
    assert sorted(set(bad.values())) == ["checksum", "decode", "not_finite", "truncated"]
    cfg = config(shards, backend=backend)
    batches = 2 * (12 - len(bad)) + 1  # two epochs and the start of a third
    stream = iter(build_loader(cfg, "train", train=True))
    got = [next(stream) for _ in range(batches)]
    expected = _expected_training_records(cfg, bad, batches)
    assert [[r["key"] for r in b["skipped"]] for b in got] == expected
    records = [r for b in got for r in b["skipped"]]
    assert all(r["reason"] == bad[r["key"]] and r["shard"].endswith(".tar") and r["detail"] for r in records)
    assert all(r["member"] for r in records), "a record names the damaged member"
    used = [k for b in got for k in b["key"]]
    assert not set(used) & set(bad)
    assert len(used) + len(records) == batches + sum(len(e) for e in expected)  # used + skipped = drawn
    assert len(records) >= 2 * len(bad)  # every bad sample was drawn and skipped in both epochs


def test_evaluation_keeps_bad_samples_in_place_invalid_and_recorded(damaged, backend):
    shards, bad = damaged
    loader = build_loader(config(shards, backend=backend, batch_size=4), "train", train=False)
    batches = list(loader)
    order = [key for tar in sorted(shards.glob("train-*.tar")) for key in keys_of(tar)]
    assert len(batches) == len(loader) == 3
    for number, batch in enumerate(batches):
        in_batch = order[4 * number: 4 * number + 4]
        assert [r["key"] for r in batch["skipped"]] == [k for k in in_batch if k in bad]
        assert batch["valid"].tolist() == [k not in bad for k in in_batch]
        assert [k for k, ok in zip(batch["key"], batch["valid"].tolist()) if ok] == [k for k in in_batch if k not in bad]
        assert all(r["reason"] == bad[r["key"]] for r in batch["skipped"])
    scored = sum(int(b["valid"].sum()) for b in batches)
    invalid = sum(len(b["skipped"]) for b in batches)
    assert scored + invalid == load_spec(shards, "train").samples == 12


def test_both_backends_record_the_same_faults(damaged):
    pytest.importorskip("nvidia.dali")
    shards, _ = damaged
    records = {backend: training_skips(config(shards, backend=backend), 9) for backend in ("torch", "dali")}
    assert records["torch"] == records["dali"]


@pytest.mark.serial
def test_a_rank_whose_every_sample_is_bad_stops_within_the_budget(clean, tmp_path, backend):
    shards = tmp_path / "all_bad"
    shutil.copytree(clean, shards)
    flip_every_sample(shards.glob("train-*.tar"), "01.jpg")
    started = time.monotonic()
    cfg = config(shards, backend=backend, max_skip_run=5, max_skip_fraction=0.01)
    # (DALI reads ahead when its pipeline is built, so the error may come from build_loader already)
    with pytest.raises(SkipBudgetExceeded, match=r"6 bad samples in a row \(data.max_skip_run=5\); most skips in "
                                                 r".*train-.*reasons: checksum 6"):
        next(iter(build_loader(cfg, "train", train=True)))
    assert time.monotonic() - started < 30


def test_the_share_budget_names_the_worst_shard(damaged):
    shards, bad = damaged
    stream = iter(build_loader(config(shards, max_skip_fraction=0.2, max_skip_run=1), "train", train=True))
    with pytest.raises(SkipBudgetExceeded, match=r"of \d+ draws bad \(data.max_skip_fraction=0.2\); most skips in"):
        for _ in range(100):
            next(stream)


def test_version_1_shards_load_unchecked_with_one_notice(clean, tmp_path, caplog, backend):
    shards = tmp_path / "v1"
    shutil.copytree(clean, shards)
    flipped = flip_bits_in_place(sorted(shards.glob("train-*.tar"))[0], "01.jpg")
    for sidecar in shards.glob(f"*{CHECKSUM_SUFFIX}"):
        sidecar.unlink()
    manifest = json.loads((shards / "manifest.json").read_text())
    manifest["format_version"] = 1
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            del shard["crc"]
    (shards / "manifest.json").write_text(json.dumps(manifest))
    caplog.set_level(logging.WARNING)
    for _ in range(2):
        batches = list(build_loader(config(shards, backend=backend, batch_size=4), "train", train=False))
    notices = [r for r in caplog.records if "read unchecked" in r.getMessage()]
    assert len(notices) == 1 and str(shards) in notices[0].getMessage()
    valid = [k for b in batches for k, ok in zip(b["key"], b["valid"].tolist()) if ok]
    assert len(valid) == 12 and flipped in valid  # unchecked: the flipped bits pass, as they did before
