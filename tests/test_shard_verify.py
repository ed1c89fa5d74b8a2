"""``avmae-shard verify`` checks every member against the CRC32 its ``.crc`` sidecar recorded at build time and names
each damaged member by shard, key and member; a version-1 folder (no sidecars) is said to be unchecked."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from avmae.cli.shard import main as shard_main
from avmae.shard.checking.verify import verify
from avmae.shard.format import CHECKSUM_SUFFIX, LOGMEL_MEMBER, frame_member
from avmae.shard.writing.manifest import MANIFEST_FILE, read_manifest
from tests.faults.damage import flip_bits_in_place


@pytest.fixture
def copy(shards, tmp_path) -> Path:
    """A copy of the tiny training shards (conftest), to damage."""
    return Path(shutil.copytree(shards, tmp_path / "shards"))


def _first_tar(folder: Path) -> tuple[str, Path]:
    shard = read_manifest(folder)["splits"]["train"]["shards"][0]
    return shard["name"], folder / shard["tar"]


def test_a_clean_build_is_checked_and_passes(copy):
    result = verify(copy)
    assert result["ok"] and result["checksums"] == "checked" and result["damaged"] == [], result["problems"]


def test_flipped_bits_are_named_by_shard_key_and_member(copy, capsys):
    name, tar = _first_tar(copy)
    jpeg_key = flip_bits_in_place(tar, frame_member(1), sample=0)  # in the JPEG's entropy-coded data
    mel_key = flip_bits_in_place(tar, LOGMEL_MEMBER, sample=1)
    result = verify(copy, deep=False)  # the checksums are checked without opening samples too
    assert not result["ok"]
    assert [(d["shard"], d["key"], d["member"]) for d in result["damaged"]] == [
        (name, jpeg_key, frame_member(1)), (name, mel_key, LOGMEL_MEMBER)]
    assert all("recorded at build time" in d["detail"] for d in result["damaged"])
    assert f"{tar.name}: sample {jpeg_key}: member {frame_member(1)}: CRC32 " in "\n".join(result["problems"])
    assert shard_main(["verify", str(copy), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["damaged"] == result["damaged"]


def test_a_missing_sidecar_is_a_problem(copy):
    name, tar = _first_tar(copy)
    tar.with_suffix(CHECKSUM_SUFFIX).unlink()
    problems = verify(copy)["problems"]
    assert any(p.startswith(f"{name}: checksum sidecar unusable") for p in problems), problems


def test_a_version_1_folder_is_said_to_be_unchecked(copy, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    manifest = read_manifest(copy)
    manifest["format_version"] = 1
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            (copy / shard.pop("crc")).unlink()
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    result = verify(copy)
    assert result["ok"] and result["checksums"] == "unchecked" and result["damaged"] == [], result["problems"]
    assert shard_main(["verify", str(copy)]) == 0
    assert "format version 1: no member checksums recorded, member bytes unchecked" in capsys.readouterr().out
