"""Sample keys read out of a tar are data: a key that is an absolute path or climbs with ``..`` never chooses
where ``avmae-shard inspect`` or ``avmae-bench loader`` write a file; such keys are reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from avmae.cli.shard import main as shard_main
from avmae.shard.inputs.items import file_stem_for_key, safe_key
from avmae.shard.writing.manifest import read_manifest

from tests.faults.shard_helpers import files_under, rename_keys
from tests.helpers import SMALL_BUILD, build_shards


@pytest.fixture(scope="module")
def clean_shards(tmp_path_factory, clip_factory) -> Path:
    src = tmp_path_factory.mktemp("clips")
    for name in ("a.mp4", "b.mp4", "c.mp4"):
        clip_factory(src / name, seconds=2)
    out = tmp_path_factory.mktemp("build") / "shards"
    return build_shards(src, out, shard_size=3, **SMALL_BUILD)


@pytest.fixture
def hostile(clean_shards, tmp_path) -> tuple[Path, Path, list[str]]:
    """A copy of the build whose samples are keyed ``<tmp>/outside/evil`` (absolute), ``sub/evil`` and ``../../evil``
    (for avmae's readers, which split member names at the first dot like DALI, the last has the key "")."""
    out = tmp_path / "shards"
    shutil.copytree(clean_shards, out)
    outside = tmp_path / "outside"
    outside.mkdir()
    shard = read_manifest(out)["splits"]["train"]["shards"][0]
    keys = [line.split()[3].split(".", 1)[0] for line in (out / shard["idx"]).read_text().splitlines()[1:]]
    hostile_keys = [str(outside / "evil"), "sub/evil", "../../evil"]
    rename_keys(out, shard["tar"], dict(zip(keys, hostile_keys)))
    return out, outside, hostile_keys


def test_stems_of_safe_keys_are_the_keys_and_hostile_ones_are_confined():
    key = safe_key("sub dir/-x.mp4", 3)
    assert file_stem_for_key(key) == key
    for bad in ("/etc/passwd", "../../evil", "..", "", "a/b", "a\\b", "x" * 300, "ünï"):
        stem = file_stem_for_key(bad)
        assert "/" not in stem and "." not in stem and "\\" not in stem and 0 < len(stem) <= 80, (bad, stem)
    assert file_stem_for_key("a/b") != file_stem_for_key("a_b")  # two keys never share a file


@pytest.mark.parametrize("position", [0, 1])  # by position: avmae's sample order is the tar's
def test_inspect_writes_only_inside_the_png_folder(hostile, tmp_path, capsys, position):
    out, outside, hostile_keys = hostile
    png_dir = tmp_path / "deep" / "er" / "png"
    before = files_under(tmp_path)
    assert shard_main(["inspect", str(out), "--sample", str(position), "--png-dir", str(png_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)["sample"]
    assert info["key"] == hostile_keys[position] and info["unsafe_key"] is True  # reported, under its real key
    written = files_under(tmp_path) - before
    assert written == {Path(info["frames_png"]), Path(info["spectrogram_png"])}
    assert all(path.parent == png_dir for path in written)
    assert not any(outside.iterdir())


def test_inspect_prints_the_unsafe_key(hostile, tmp_path, capsys):
    out, _, hostile_keys = hostile
    assert shard_main(["inspect", str(out), "--sample", hostile_keys[1], "--png-dir", str(tmp_path / "png")]) == 0
    printed = capsys.readouterr().out
    assert "'sub/evil' is not a safe file name" in printed


def test_inspect_refuses_a_key_that_is_no_key(hostile, tmp_path, capsys):
    out, outside, _ = hostile
    before = files_under(tmp_path)
    assert shard_main(["inspect", str(out), "--sample", "2", "--png-dir", str(tmp_path / "png")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "../../evil.00.jpg" in error and "missing" in error, error
    assert files_under(tmp_path) == before


def test_loader_bench_files_stay_in_their_folder(hostile, tmp_path):
    from avmae.bench.loader import export_cavmae_layout
    from avmae.data.spec import load_spec

    out, outside, hostile_keys = hostile
    scratch = tmp_path / "a" / "b" / "scratch"
    before = files_under(tmp_path)
    rows, renamed = export_cavmae_layout(load_spec(out, "train"), scratch, ["00.jpg", "01.jpg"])
    assert sorted(renamed) == sorted(hostile_keys)
    assert set(renamed.values()) == {file_stem_for_key(key) for key in hostile_keys}
    written = files_under(tmp_path) - before
    assert len(rows) == 3 and len(written) == 3 * 3  # two frames and a wav per sample, all under the scratch folder
    assert all(scratch in path.parents for path in written)
    assert not any(outside.iterdir())
