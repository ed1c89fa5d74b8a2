"""Samples whose members are well-formed bytes but hostile content, made for real by the builder (a generic list
with a blank labels cell) or written into built shards: each is a recorded bad sample of both backends (skipped in
training, invalid in evaluation), never a crash at collate time, and ``avmae-shard verify`` reports each member it
cannot parse instead of losing its report to a traceback."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from avmae.cli.shard import main as shard_main
from avmae.data.checked import SampleChecker
from avmae.data.config import DataConfig
from avmae.data.faults import SampleError
from avmae.data.loader import build_loader
from avmae.data.samples import frame_members, label_tensors
from avmae.data.spec import DataSpec, load_spec
from avmae.data.tar_reader import IndexedShard
from avmae.shard.format import (CHECKSUM_SUFFIX, LOGMEL_MEMBER, META_KEY, META_LABELS, METADATA_MEMBER, LabelMode,
                                label_mode)
from avmae.shard.checking.sample_rules import metadata_problem
from avmae.shard.checking.verify import verify
from avmae.shard.writing.manifest import MANIFEST_FILE, read_manifest
from tests.faults.damage import change_one, keys_of
from tests.helpers import build_shards, shard_members, training_skips


@pytest.fixture(params=["torch", pytest.param("dali", marks=pytest.mark.dali)])
def backend(request) -> str:
    if request.param == "dali":
        pytest.importorskip("nvidia.dali")
    return request.param


@pytest.fixture(scope="module")
def one_unlabelled(synth_corpus, tmp_path_factory) -> tuple[Path, str]:
    """Single-label shards built from the synthetic corpus's list with one labels cell left blank (as a user's
    generic list can have it); returns the folder and that sample's key."""
    root = tmp_path_factory.mktemp("unlabelled")
    with open(synth_corpus, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    rows[4]["labels"] = ""
    listed = root / "list.csv"
    with open(listed, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "labels"])
        writer.writerows([str(synth_corpus.parent / row["path"]), row["labels"]] for row in rows)
    out = build_shards(listed, root / "shards", val_fraction="0")
    unlabelled = [key for key, members in shard_members(out).items()
                  if json.loads(members[METADATA_MEMBER])[META_LABELS] == []]
    assert len(unlabelled) == 1
    return out, unlabelled[0]


def _config(shards: Path, **overrides) -> DataConfig:
    base = dict(shards=str(shards), eval_split="train", batch_size=1, workers=0, num_frames=4, crop_size=64,
                shuffle_buffer=1, max_skip_fraction=1.0)
    return DataConfig(**{**base, **overrides})


def _tar_of(shards: Path, key: str) -> Path:
    return next(tar for tar in sorted(shards.glob("train-*.tar")) if key in keys_of(tar))


def test_the_build_says_single_label(one_unlabelled):
    shards, _ = one_unlabelled
    manifest = read_manifest(shards)
    assert label_mode(manifest) == LabelMode.SINGLE  # what made label_tensors stop the run
    assert manifest["labels"]["unlabelled_inputs"] == 1


def test_the_build_report_counts_the_unlabelled_input(one_unlabelled, tmp_path, capsys):
    """Run again on a copy of the finished folder: every shard is done, so the build only reports."""
    shards, _ = one_unlabelled
    copy = Path(shutil.copytree(shards, tmp_path / "shards"))
    build_shards(shards.parent / "list.csv", copy, val_fraction="0")
    report = json.loads(capsys.readouterr().out)
    assert (report["shards_written"], report["label_mode"], report["unlabelled_inputs"]) == (0, "single", 1)
    build_shards(shards.parent / "list.csv", copy, val_fraction="0", as_json=False)
    printed = " ".join(capsys.readouterr().out.split())
    assert "unlabelled │ 1 inputs have samples but no label:" in printed, printed


def test_verify_names_the_unlabelled_sample_as_the_loaders_skip_it(one_unlabelled):
    shards, key = one_unlabelled
    result = verify(shards)
    assert result["problems"] == [f"{_tar_of(shards, key).name}: sample {key}: member {METADATA_MEMBER}: decode: 0 "
                                  "labels []; single-label data needs exactly one per sample"]
    assert verify(shards, deep=False)["ok"]  # only the deep check opens the samples


def test_training_skips_an_unlabelled_sample_of_single_label_data_on_both_backends(one_unlabelled, backend):
    shards, key = one_unlabelled
    stream = iter(build_loader(_config(shards, backend=backend), "train", train=True))
    batches = [next(stream) for _ in range(2 * 11 + 1)]  # two epochs of the 11 good samples and one more
    records = [record for batch in batches for record in batch["skipped"]]
    assert len(records) >= 2 and {record["key"] for record in records} == {key}
    tar = _tar_of(shards, key)
    assert all(record["shard"] == str(tar) and record["member"] == METADATA_MEMBER and record["reason"] == "decode"
               for record in records), records
    assert records[0]["detail"] == "0 labels []; single-label data needs exactly one per sample"
    assert key not in [k for batch in batches for k in batch["key"]]
    assert all(batch["label"].shape == (1,) for batch in batches)


def test_both_backends_record_the_unlabelled_sample_alike(one_unlabelled):
    pytest.importorskip("nvidia.dali")
    shards, _ = one_unlabelled
    records = {backend: training_skips(_config(shards, backend=backend), 13) for backend in ("torch", "dali")}
    assert any(records["torch"]) and records["torch"] == records["dali"]


def test_evaluation_keeps_the_unlabelled_sample_in_place_invalid(one_unlabelled, backend):
    shards, key = one_unlabelled
    batches = list(build_loader(_config(shards, backend=backend, batch_size=4), "train", train=False))
    order = [k for tar in sorted(shards.glob("train-*.tar")) for k in keys_of(tar)]
    valid = [ok for batch in batches for ok in batch["valid"].tolist()]
    assert valid == [k != key for k in order]
    records = [record for batch in batches for record in batch["skipped"]]
    assert [(r["key"], r["member"], r["reason"]) for r in records] == [(key, METADATA_MEMBER, "decode")]


def test_label_tensors_names_each_sample_and_its_own_count():
    spec = DataSpec(root="shards", shards=(), features={}, label_mode=LabelMode.SINGLE, label_names=("a", "b"),
                    heads={"label": 2}, logmel_mean=0.0, logmel_std=1.0, label_counts={})
    metadata = [{META_KEY: "k1", META_LABELS: ["a"]}, {META_KEY: "k2", META_LABELS: []},
                {META_KEY: "k3", META_LABELS: ["a", "b"]}]
    with pytest.raises(ValueError) as caught:
        label_tensors(metadata, spec)
    assert str(caught.value) == "single-label data, but sample k2 has 0 labels, sample k3 has 2 labels"


@pytest.mark.parametrize("metadata, mode, problem", [
    ([1], LabelMode.NONE, "the JSON is list, not an object"),
    ({"labels": ["a"]}, LabelMode.SINGLE, "the JSON has no 'key' string"),
    ({"key": "k", "labels": []}, LabelMode.NONE, None),  # unlabelled data batches no labels
    ({"key": "k", "labels": []}, LabelMode.MULTI, None),  # no positive label: a row of zeros
    ({"key": "k", "labels": ["a", "zz"]}, LabelMode.MULTI,
     "labels ['zz'] are not among the manifest's 2 label names"),
    ({"key": "k", "labels": "a"}, LabelMode.SINGLE, "labels 'a' are not a list of label names"),
    ({"key": "k", "labels": ["a", "b"]}, LabelMode.SINGLE,
     "2 labels ['a', 'b']; single-label data needs exactly one per sample"),
    ({"key": "k", "verb_class": 3, "noun_class": 7}, LabelMode.VERB_NOUN, None),
    ({"key": "k", "verb_class": 3}, LabelMode.VERB_NOUN, "noun_class None is not a class index"),
    ({"key": "k", "verb_class": True, "noun_class": 7}, LabelMode.VERB_NOUN, "verb_class True is not a class index"),
    ({"key": "k", "verb_class": 3, "noun_class": 300}, LabelMode.VERB_NOUN,
     "noun_class 300 is outside the manifest's 300 classes"),
])
def test_metadata_problems_for_each_label_mode(metadata, mode, problem):
    assert metadata_problem(metadata, mode, frozenset({"a", "b"}), {"verb": 97, "noun": 300}) == problem


# --- members numpy and json cannot parse ---------------------------------------------------------------------------

def _token_error_npy(npy: bytes) -> bytes:
    """The log-mel with its header's first quote turned into a bracket: numpy's fallback header parser raises
    tokenize.TokenError, no ValueError."""
    assert npy[11:12] == b"'"
    return npy[:11] + b"(" + npy[12:]


HOSTILE = {"token_error": (LOGMEL_MEMBER, _token_error_npy), "empty_npy": (LOGMEL_MEMBER, lambda _: b""),
           "json_list": (METADATA_MEMBER, lambda _: b"[1]")}


@pytest.fixture(scope="module")
def hostile(one_unlabelled, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A copy of the shards with each HOSTILE member written into the first sample of its own tar (not the one of the
    unlabelled sample), with its CRC32 recorded (so the parsing behind the checksum is what must cope); returns it
    and {case: key}."""
    out = tmp_path_factory.mktemp("hostile") / "shards"
    shutil.copytree(one_unlabelled[0], out)
    tars = [tar for tar in sorted(out.glob("train-*.tar")) if one_unlabelled[1] not in keys_of(tar)]
    keys = {case: change_one(tar, member, damage, fix_checksums=True)
            for tar, (case, (member, damage)) in zip(tars, HOSTILE.items())}
    return out, keys


def test_numpy_raises_a_token_error_on_that_header():
    import tokenize

    out = io.BytesIO()
    np.save(out, np.zeros((4, 3), np.float16))
    with pytest.raises(tokenize.TokenError):
        np.load(io.BytesIO(_token_error_npy(out.getvalue())))


@pytest.mark.parametrize("case, detail", [
    ("token_error", "not a .npy array: TokenError: ('EOF in multi-line statement', (2, 0))"),
    ("empty_npy", "not a .npy array: not a .npy file (no NUMPY magic)"),
    ("json_list", "the JSON is list, not an object"),
])
def test_the_sample_checker_names_the_member(hostile, case, detail):
    shards, keys = hostile
    spec = load_spec(shards, "train")
    tar = _tar_of(shards, keys[case])
    shard = next(IndexedShard(s.tar, s.idx, s.crc) for s in spec.shards if s.tar == str(tar))
    with pytest.raises(SampleError) as caught:
        SampleChecker(spec).read(shard, 0, frame_members(spec.features["num_frames"], 4))
    error = caught.value
    assert (error.shard, error.key, error.member, error.reason, error.detail) == (
        str(tar), keys[case], HOSTILE[case][0], "decode", detail)
    assert "\n" not in str(error)


def test_version_1_shards_skip_the_hostile_members(hostile, one_unlabelled, tmp_path, backend):
    """Without checksums nothing stops the bytes before the parsers: the checks must turn them into records."""
    shards = Path(shutil.copytree(hostile[0], tmp_path / "v1"))
    manifest = json.loads((shards / MANIFEST_FILE).read_text())
    manifest["format_version"] = 1
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            del shard["crc"]
    (shards / MANIFEST_FILE).write_text(json.dumps(manifest))
    for sidecar in shards.glob(f"*{CHECKSUM_SUFFIX}"):
        sidecar.unlink()
    unlabelled = one_unlabelled[1]
    batches = list(build_loader(_config(shards, backend=backend, batch_size=4), "train", train=False))
    records = {(r["key"], r["member"], r["reason"]) for batch in batches for r in batch["skipped"]}
    assert records == {(key, HOSTILE[case][0], "decode") for case, key in hostile[1].items()} | {
        (unlabelled, METADATA_MEMBER, "decode")}


def test_verify_reports_each_hostile_member_and_keeps_its_report(hostile, capsys):
    shards, keys = hostile
    tars = {case: _tar_of(shards, key).name for case, key in keys.items()}
    result = verify(shards)
    assert not result["ok"]
    expected = {  # the loaders' own checks, reasons and details (test_the_sample_checker_names_the_member)
        "token_error": f"member {LOGMEL_MEMBER}: decode: not a .npy array: TokenError: ('EOF in multi-line statement', "
                       "(2, 0))",
        "empty_npy": f"member {LOGMEL_MEMBER}: decode: not a .npy array: not a .npy file (no NUMPY magic)",
        "json_list": f"member {METADATA_MEMBER}: decode: the JSON is list, not an object",
    }
    for case, problem in expected.items():
        assert f"{tars[case]}: sample {keys[case]}: {problem}" in result["problems"], result["problems"]
    assert shard_main(["verify", str(shards), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["problems"] == result["problems"]


# --- members that parse but that the loaders would still skip ------------------------------------------------------

def _nan_logmel(npy: bytes) -> bytes:
    mel = np.load(io.BytesIO(npy)).copy()
    mel[3, 5] = np.nan
    out = io.BytesIO()
    np.save(out, mel)
    return out.getvalue()


def _small_frame(jpeg: bytes) -> bytes:
    """A whole JPEG of another size: its frame header's height lowered by one."""
    at = next(i for i in range(2, len(jpeg) - 1) if jpeg[i] == 0xFF and jpeg[i + 1] in (0xC0, 0xC2))
    height = int.from_bytes(jpeg[at + 5:at + 7], "big")
    return jpeg[:at + 5] + (height - 1).to_bytes(2, "big") + jpeg[at + 7:]


CONTENT_FAULTS = {"nan_logmel": (LOGMEL_MEMBER, _nan_logmel), "truncated_jpeg": ("01.jpg", lambda jpeg: jpeg[:-2]),
                  "small_frame": ("00.jpg", _small_frame)}


def test_verify_names_each_sample_the_loaders_skip_with_their_reason_and_detail(one_unlabelled, tmp_path):
    """Checksums recorded for the new bytes: what must catch them is the checks behind the checksum, the same in
    ``avmae-shard verify`` as in the loaders (shard/checking/sample_rules.py)."""
    shards = Path(shutil.copytree(one_unlabelled[0], tmp_path / "shards"))
    tars = [tar for tar in sorted(shards.glob("train-*.tar")) if one_unlabelled[1] not in keys_of(tar)]
    keys = {case: change_one(tar, member, damage, fix_checksums=True)
            for tar, (case, (member, damage)) in zip(tars, CONTENT_FAULTS.items())}
    spec = load_spec(shards, "train")
    checker, stored = SampleChecker(spec), frame_members(spec.features["num_frames"], spec.features["num_frames"])
    expected = {f"{_tar_of(shards, one_unlabelled[1]).name}: sample {one_unlabelled[1]}: member {METADATA_MEMBER}: "
                "decode: 0 labels []; single-label data needs exactly one per sample"}
    for case, key in keys.items():
        shard = next(IndexedShard(s.tar, s.idx, s.crc) for s in spec.shards if key in keys_of(Path(s.tar)))
        with pytest.raises(SampleError) as caught:
            checker.read(shard, shard.keys.index(key), stored)
        error = caught.value
        assert (error.member, error.reason) == (CONTENT_FAULTS[case][0], {"nan_logmel": "not_finite",
                                                "truncated_jpeg": "truncated", "small_frame": "decode"}[case])
        expected.add(f"{Path(error.shard).name}: sample {key}: member {error.member}: {error.reason}: {error.detail}")
    rewritten = {f"{tar.name}: checksum differs from the manifest (file changed or damaged)"
                 for tar in tars[:len(CONTENT_FAULTS)]}  # the tar's sha256; its members' CRC32s all match
    assert set(verify(shards, deep=False)["problems"]) == rewritten  # only the sample checks see the faults
    problems = verify(shards)["problems"]
    assert set(problems) == expected | rewritten and len(problems) == len(expected | rewritten), problems
