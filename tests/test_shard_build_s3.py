"""``avmae-shard build --out s3://…`` against a real S3 server (moto, loopback): the objects equal a local build's
files byte for byte, a resumed build redoes only the shards without a part record (after a lost record, a SIGKILL,
or an upload refused mid-shard), array tasks share the prefix, another build is refused, and a bucket that cannot
be used is one line naming the URL."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager, redirect_stdout
from pathlib import Path

import fsspec  # imported before any test sets FSSPEC_S3_*: fsspec reads those once, at import
import pytest

from avmae.cli.shard import main as shard_main
from tests.helpers import SMALL_BUILD, build_arguments, build_shards, free_port
from tests.servers import apply_env, refusing_proxy, s3_server

BUILD = {**SMALL_BUILD, "shard_size": "3"}  # 12 clips: 4 shards
SHARDS = ["train-000000", "train-000001", "train-000002", "train-000003"]


@pytest.fixture(scope="module")
def s3_env():
    with s3_server() as env:
        yield env


@pytest.fixture
def s3(s3_env, monkeypatch) -> None:
    """The server's credentials and endpoint in this test's environment."""
    apply_env(s3_env, monkeypatch)


@pytest.fixture
def bucket(s3, request) -> str:
    """A fresh bucket per test (names from the test's name, >= 3 characters)."""
    name = request.node.name.replace("_", "-")[:50].strip("-").lower()
    fsspec.filesystem("s3", skip_instance_cache=True).mkdir(name)
    return name


@pytest.fixture(scope="module")
def local_build(synth_corpus, tmp_path_factory) -> Path:
    return build_shards(synth_corpus, tmp_path_factory.mktemp("local") / "shards", **BUILD)


def _s3():
    return fsspec.filesystem("s3", skip_instance_cache=True)


def _download(prefix: str, folder: Path) -> Path:
    """Every object under ``bucket/prefix`` into ``folder``, keeping the relative names."""
    fs = _s3()
    for path in fs.find(prefix):
        target = folder / path[len(prefix) + 1:]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(fs.cat_file(path))
    return folder


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _report(corpus: Path, url: str, capsys, *extra: str, **options) -> dict:
    capsys.readouterr()
    assert shard_main(build_arguments(corpus, url, *extra, **{**BUILD, **options})) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def s3_build(synth_corpus, s3_env, tmp_path_factory) -> tuple[str, dict, Path]:
    """The build into ``s3://built/shards/`` (two workers, a --stage folder): its URL, report and stage folder."""
    stage = tmp_path_factory.mktemp("stage")
    with pytest.MonkeyPatch.context() as monkeypatch:
        apply_env(s3_env, monkeypatch)
        _s3().mkdir("built")
        arguments = build_arguments(synth_corpus, "s3://built/shards/", "--stage", str(stage), **{**BUILD, "workers": 2})
        with _stdout() as out:
            assert shard_main(arguments) == 0
    return "s3://built/shards", json.loads(out.getvalue()), stage


@contextmanager
def _stdout():
    buffer = io.StringIO()
    with redirect_stdout(buffer):
        yield buffer


def test_s3_build_equals_the_local_build(local_build, s3_build, s3, tmp_path):
    url, report, stage = s3_build
    assert report["out"] == url and report["finished"]
    assert report["shards_written"] == 4 and report["totals"]["samples"] == 12
    remote = _files(_download("built/shards", tmp_path / "copy"))
    # Every file, build.json and the part records included: nothing in them depends on where the output is.
    assert remote == _files(local_build)
    assert {f"{name}{suffix}" for name in SHARDS for suffix in (".tar", ".idx", ".crc", ".labels")} <= set(remote)
    assert shard_main(["verify", str(tmp_path / "copy"), "--json"]) == 0
    assert list(stage.iterdir()) == []  # the run's staging folder is gone, nothing left on local disk


def test_s3_resume_rebuilds_only_the_shard_without_a_part_record(local_build, s3_build, synth_corpus, s3, tmp_path,
                                                                  capsys):
    url = s3_build[0]
    # As if the build had died between shard 2's tar and its record: the tar, index and sidecar objects stay.
    fs = _s3()
    fs.rm(["built/shards/_parts/train-000002.json", "built/shards/manifest.json"])
    assert fs.exists("built/shards/train-000002.tar")
    resumed = _report(synth_corpus, url, capsys)
    assert (resumed["shards_written"], resumed["shards_skipped"], resumed["items_processed"]) == (1, 3, 3)
    assert resumed["finished"]
    assert _files(_download("built/shards", tmp_path / "copy")) == _files(local_build)
    again = _report(synth_corpus, url, capsys)  # a finished build: nothing to redo
    assert (again["shards_written"], again["shards_skipped"]) == (0, 4)


def test_s3_build_killed_mid_way_resumes_to_the_same_objects(local_build, synth_corpus, bucket, s3_env, tmp_path,
                                                             capsys):
    url = f"s3://{bucket}/killed"
    command = [sys.executable, "-m", "avmae.cli.shard", *build_arguments(synth_corpus, url, **BUILD)]
    process = subprocess.Popen(command, env={**os.environ, **s3_env}, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    fs = _s3()
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        fs.invalidate_cache()
        if fs.exists(f"{bucket}/killed/_parts/train-000000.json"):
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    fs.invalidate_cache()
    done_before = len(fs.find(f"{bucket}/killed/_parts"))
    assert 1 <= done_before < 4, "the kill should land mid-build"
    assert not fs.exists(f"{bucket}/killed/manifest.json")
    resumed = _report(synth_corpus, url, capsys)
    assert (resumed["shards_skipped"], resumed["shards_written"]) == (done_before, 4 - done_before)
    assert _files(_download(f"{bucket}/killed", tmp_path / "copy")) == _files(local_build)


def test_an_upload_refused_mid_shard_stops_the_build_and_the_rerun_redoes_that_shard(local_build, synth_corpus,
                                                                                    bucket, s3_env, monkeypatch,
                                                                                    tmp_path, capsys):
    url = f"s3://{bucket}/refused"
    # Shard 1's tar goes up, its index is refused: the shard is half there, with no part record.
    with refusing_proxy(s3_env["AWS_ENDPOINT_URL"],
                        lambda method, path: method == "PUT" and path.endswith("/train-000001.idx")) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy[0])
        monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
        assert shard_main(build_arguments(synth_corpus, url, **BUILD)) == 2
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_env["AWS_ENDPOINT_URL"])
    assert proxy[1:] == [f"PUT /{bucket}/refused/train-000001.idx"]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{url}" in err and "access denied" in err, err
    fs = _s3()
    fs.invalidate_cache()
    assert fs.exists(f"{bucket}/refused/train-000001.tar") and not fs.exists(f"{bucket}/refused/train-000001.idx")
    assert [Path(p).name for p in fs.find(f"{bucket}/refused/_parts")] == ["train-000000.json"]
    assert not fs.exists(f"{bucket}/refused/manifest.json")
    resumed = _report(synth_corpus, url, capsys)
    assert (resumed["shards_skipped"], resumed["shards_written"]) == (1, 3) and resumed["finished"]
    assert _files(_download(f"{bucket}/refused", tmp_path / "copy")) == _files(local_build)


def test_s3_array_tasks_then_finalize(local_build, synth_corpus, bucket, tmp_path, capsys):
    url = f"s3://{bucket}/array"
    first = _report(synth_corpus, url, capsys, task_index=1, num_tasks=2)
    assert first["shards_written"] == 2 and not first["finished"]
    assert shard_main(["finalize", url]) == 2  # refused while task 0's shards are missing
    assert "2 of 4 shards are not built yet" in capsys.readouterr().err
    fs = _s3()
    assert not fs.exists(f"{bucket}/array/manifest.json")
    last = _report(synth_corpus, url, capsys, task_index=0, num_tasks=2)
    assert last["finished"]  # the last task found every shard done and wrote the manifest
    fs.rm([f"{bucket}/array/manifest.json", f"{bucket}/array/failures.jsonl"])
    assert shard_main(["finalize", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["samples"] == 12
    assert _files(_download(f"{bucket}/array", tmp_path / "copy")) == _files(local_build)


def test_s3_another_build_into_the_same_prefix_is_refused(synth_corpus, bucket, capsys):
    url = f"s3://{bucket}/mixed"
    _report(synth_corpus, url, capsys, task_index=0, num_tasks=4)  # shard 0 only
    objects_before = sorted(_s3().find(f"{bucket}/mixed"))
    assert shard_main(build_arguments(synth_corpus, url, **{**BUILD, "num_frames": "3"})) == 2
    line = capsys.readouterr().err.strip()
    assert line.count("\n") == 0 and f"--out {url} already holds a build of other inputs" in line
    assert sorted(_s3().find(f"{bucket}/mixed")) == objects_before
    # --overwrite with array tasks is refused before anything goes: each task would delete the others' shards
    assert shard_main(build_arguments(synth_corpus, url, "--overwrite", **{**BUILD, "num_frames": "3",
                                                                          "task_index": 1, "num_tasks": 4})) == 2
    assert "--overwrite cannot be used with array tasks (4)" in capsys.readouterr().err
    assert sorted(_s3().find(f"{bucket}/mixed")) == objects_before
    # --overwrite starts over: every old object goes (shard 0 of the old build too), the new build's are there
    old_tar = _s3().cat_file(f"{bucket}/mixed/train-000000.tar")
    assert _report(synth_corpus, url, capsys, "--overwrite", num_frames="3")["finished"]
    shards = [f"train-00000{i}" for i in range(4)]
    names = ["build.json", "manifest.json", "failures.jsonl", *(f"_parts/{s}.json" for s in shards),
             *(f"{s}.{ext}" for s in shards for ext in ("crc", "idx", "labels", "tar"))]
    assert sorted(_s3().find(f"{bucket}/mixed")) == sorted(f"{bucket}/mixed/{name}" for name in names)
    assert json.loads(_s3().cat_file(f"{bucket}/mixed/build.json"))["features"]["num_frames"] == 3
    assert _s3().cat_file(f"{bucket}/mixed/train-000000.tar") != old_tar


@pytest.mark.parametrize("problem", ["no_bucket", "no_credentials", "unreachable"])
def test_s3_output_that_cannot_be_used_is_one_line(problem, synth_corpus, s3_env, monkeypatch, tmp_path, capsys):
    apply_env(s3_env, monkeypatch)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's retries would take ~12 s against a closed port
    url, expected = "s3://avmae-missing/shards", "bucket 'avmae-missing' does not exist"
    if problem == "no_credentials":
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            monkeypatch.delenv(name)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup off the machine
        expected = "no credentials found"
    elif problem == "unreachable":
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
        expected = "endpoint unreachable"
    assert shard_main(build_arguments(synth_corpus, url, **BUILD)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"avmae-shard build: {url}: {expected}"), err
