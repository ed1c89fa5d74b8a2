"""Bad input to the shard stage's commands ends in one line and exit code 2 (``verify`` reports damage it finds as
problems and exits 1): member names without a dot, damaged tar headers, wrong paths, empty and foreign folders, a
split smaller than the loader bench's batch."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest

from avmae.cli.bench import main as bench_main
from avmae.cli.shard import main as shard_main

from tests.helpers import SMALL_BUILD, build_shards


@pytest.fixture(scope="module")
def shards(tmp_path_factory, clip_factory) -> Path:
    src = tmp_path_factory.mktemp("clips")
    for name in ("a.mp4", "b.mp4"):
        clip_factory(src / name, seconds=2)
    out = tmp_path_factory.mktemp("build") / "shards"
    return build_shards(src, out, shard_size=2, **SMALL_BUILD)


def _copy(shards: Path, tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "shards"
    shutil.copytree(shards, out)
    return out, out / "train-000000.tar"


def _one_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture
def undotted(shards, tmp_path) -> Path:
    """The first member renamed to ``nodotname`` in the tar and, consistently, in its index."""
    out, tar_path = _copy(shards, tmp_path)
    with tarfile.open(tar_path) as tar:
        members = [(info.name, tar.extractfile(info).read()) for info in tar.getmembers()]
    first = members[0][0]
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo("nodotname" if name == first else name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    idx = tar_path.with_suffix(".idx")
    idx.write_text(idx.read_text().replace(f" {first}", " nodotname", 1))
    return out


def test_verify_reports_a_member_without_a_dot(undotted, capsys):
    from avmae.shard.checking.verify import verify

    assert shard_main(["verify", str(undotted), "--json"]) == 1
    problems = verify(undotted)["problems"]
    assert any("without a '.<member>' part" in p and "nodotname" in p for p in problems), problems


def test_inspect_refuses_a_member_without_a_dot(undotted, tmp_path, capsys):
    assert shard_main(["inspect", str(undotted), "--sample", "0", "--png-dir", str(tmp_path / "png")]) == 2
    line = _one_line(capsys)
    assert "train-000000.tar" in line and "nodotname" in line and "not a sample of this format" in line
    assert not (tmp_path / "png").exists()


def test_a_damaged_tar_header(shards, tmp_path, capsys):
    out, tar_path = _copy(shards, tmp_path)
    data = bytearray(tar_path.read_bytes())
    data[148:156] = b"garbage!"  # the first header's checksum field
    tar_path.write_bytes(bytes(data))
    assert shard_main(["inspect", str(out), "--sample", "0", "--png-dir", str(tmp_path / "png")]) == 2
    line = _one_line(capsys)
    assert "train-000000.tar" in line and "invalid header" in line
    assert shard_main(["verify", str(out)]) == 1
    assert "train-000000: unreadable: invalid header" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["verify", "inspect", "finalize"])
@pytest.mark.parametrize("folder", ["missing", "empty", "foreign"])
def test_folders_that_are_no_shard_folders(tmp_path, capsys, command, folder):
    path = tmp_path / folder
    if folder != "missing":
        path.mkdir()
    if folder == "foreign":
        (path / "clip.mp4").write_bytes(b"not a shard folder")
    assert shard_main([command, str(path)]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"avmae-shard {command}: ") and str(path) in line
    assert "not a shard" in line


def test_inspect_an_unknown_sample(shards, capsys):
    assert shard_main(["inspect", str(shards), "--sample", "nokey"]) == 2
    assert _one_line(capsys) == f"avmae-shard inspect: {shards}: no sample 'nokey' (give a key or a position below 2)"


def test_build_from_a_missing_folder(tmp_path, capsys):
    assert shard_main(["build", "--src", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert _one_line(capsys) == (f"avmae-shard build: --src {tmp_path / 'nowhere'} is not a folder, a .tar file, "
                                 "a tar pattern or a URL")
    assert shard_main(["build", "--out", str(tmp_path / "out")]) == 2
    assert _one_line(capsys) == ("avmae-shard build: --src is needed (a folder of clips or video2dataset tars), "
                                 "unless a dataset list is given")


def test_loader_bench_refuses_a_split_smaller_than_a_batch(shards, capsys):
    assert bench_main(["loader", "--data", str(shards), "--batch-size", "3", "--workers", "0",
                       "--backend", "torch"]) == 2
    assert _one_line(capsys) == (f"avmae-bench loader: {shards}: split 'train' holds 2 samples, fewer than one "
                                 "batch of 3")
    assert bench_main(["loader", "--data", str(shards), "--split", "val"]) == 2
    assert "no split 'val'" in _one_line(capsys)


@pytest.mark.parametrize("text", ["{\"format_version\": 2, ", "[1, 2]", "\xff\xfe not text"])
def test_a_damaged_manifest_is_one_line_naming_it(shards, tmp_path, capsys, text):
    out, _ = _copy(shards, tmp_path)
    (out / "manifest.json").write_bytes(text.encode("latin-1"))
    for command in ("verify", "inspect"):
        assert shard_main([command, str(out)]) == 2
        line = _one_line(capsys)
        assert line.startswith(f"avmae-shard {command}: {out / 'manifest.json'}: ") and "damaged" in line, line


@pytest.mark.parametrize("flags, message", [
    (["--val-fraction", "1.5"], "--val-fraction must be in [0, 1), got 1.5"),
    (["--labelled-per-class", "-1"], "--labelled-per-class must be at least 0, got -1"),
    (["--shard-size", "0"], "--shard-size must be at least 1, got 0"),
    (["--task-index", "2", "--num-tasks", "2"], "--task-index 2 is not in [0, --num-tasks 2)"),
])
def test_build_parameters_are_refused_by_their_flags(tmp_path, capsys, flags, message):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "clip.mp4").write_bytes(b"never decoded: the parameters are refused first")
    assert shard_main(["build", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), *flags]) == 2
    assert _one_line(capsys) == f"avmae-shard build: {message}"


def test_the_library_names_parameters_not_flags():
    from avmae.shard.errors import ParameterError
    from avmae.shard.inputs.synth import make_corpus
    from avmae.shard.writing.plan import assign_splits

    with pytest.raises(ParameterError, match=r"^val_fraction must be in \[0, 1\), got 1.5$"):
        assign_splits([], 1.5, seed=0)
    with pytest.raises(ParameterError, match="^num_classes must be at least 1, got 0$"):
        make_corpus(Path("unused"), 1, 0)


def test_synth_refuses_by_its_flags(tmp_path, capsys):
    assert shard_main(["synth", "--out", str(tmp_path / "corpus"), "--classes", "0"]) == 2
    assert _one_line(capsys) == "avmae-shard synth: --classes must be at least 1, got 0"


def test_another_build_in_the_output_folder_names_the_flags(shards, tmp_path, capsys):
    out, _ = _copy(shards, tmp_path)
    source = json.loads((out / "build.json").read_text())["source"]["src"]
    assert shard_main(["build", "--src", source, "--out", str(out), "--num-frames", "3", "--workers", "1"]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"avmae-shard build: --out {out} already holds a build of other inputs or parameters")
    assert line.endswith("use another folder, or --overwrite to start over"), line


def test_a_resume_with_another_ffmpeg_is_refused_naming_both(shards, tmp_path, capsys):
    """As an array task on a node with another ffmpeg module would find the build.json of the first task."""
    out, _ = _copy(shards, tmp_path)
    build = json.loads((out / "build.json").read_text())
    ours = build["tools"]["ffmpeg"]
    build["tools"]["ffmpeg"] = "ffmpeg version 4.4.2-0ubuntu0.22.04.1"
    (out / "build.json").write_text(json.dumps(build))
    build_shards(Path(build["source"]["src"]), out, shard_size=2, exit_code=2, **SMALL_BUILD)
    line = _one_line(capsys)
    assert line.startswith(f"avmae-shard build: --out {out} was started with other tools (ffmpeg "
                           f"'ffmpeg version 4.4.2-0ubuntu0.22.04.1' there, {ours!r} here)"), line
    assert line.endswith("or --overwrite to start over"), line


def test_overwrite_with_array_tasks_is_refused(shards, tmp_path, capsys):
    out, _ = _copy(shards, tmp_path)
    source = json.loads((out / "build.json").read_text())["source"]["src"]
    before = sorted(p.name for p in out.iterdir())
    assert shard_main(["build", "--src", source, "--out", str(out), "--overwrite", "--num-tasks", "2",
                       "--task-index", "1"]) == 2
    assert _one_line(capsys) == ("avmae-shard build: --overwrite cannot be used with array tasks (2): each would "
                                 "delete the shards the others write; clear the output once before submitting the "
                                 "array (rm -r, or one build with --overwrite and no array)")
    assert sorted(p.name for p in out.iterdir()) == before  # nothing deleted
