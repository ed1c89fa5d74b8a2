"""Shards from video2dataset output (a common way to download AudioSet and VGGSound; read in place, since
unpacking millions of clips costs a copy of the dataset): tars in video2dataset's layout, written here with tarfile
around real clips made by ffmpeg, read in place (locally, through a brace pattern, and over a loopback HTTP server).
Every member group must end as a sample or a failure naming the tar and member, and a clip read from a tar must give
the same frames and log-mel as the same clip read from a file."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from avmae.cli.shard import main as shard_main
from avmae.shard.format import LOGMEL_MEMBER, METADATA_MEMBER
from avmae.shard.inputs import source_tars
from avmae.shard.inputs.source_tars import list_tar, read_member
from avmae.shard.inputs.video2dataset import tar_items, youtube_id
from avmae.shard.writing.manifest import read_manifest
from tests.helpers import SMALL_BUILD, build_flags, build_shards, shard_members
from tests.servers import apply_env, http_server, s3_server

V2D = {**SMALL_BUILD, "segment_seconds": "2", "shard_size": "4", "workers": "1"}


def _build(src: str, out: Path, *extra: str) -> Path:
    """``avmae-shard build --src SRC`` (tars, a pattern or a URL) with the small geometry; returns ``out``."""
    assert shard_main(["build", "--src", src, "--out", str(out), *build_flags(**V2D), *extra, "--json"]) == 0
    return out


def _meta(key: str, url: str, status: str = "success", **fields) -> bytes:
    """video2dataset's KEY.json (data_writer.py: json.dumps(indent=4)) for an input row with ``url``."""
    return json.dumps({"url": url, "caption": None, "key": key, "status": status,
                       "error_message": None if status == "success" else "ERROR: [youtube] xyz: Video unavailable",
                       "yt_meta_dict": {}, **fields}, indent=4).encode()


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def downloads(tmp_path_factory, clip_factory) -> Path:
    """Two video2dataset tars: 00000.tar holds a whole video (moov atom at the end), a clip cut by the clipping
    subsampler (webm), a failed download (JSON and caption, no video), a corrupt mp4, an audio-only download and a
    stray README; 00001.tar one more video (faststart)."""
    root = tmp_path_factory.mktemp("v2d")
    clips = root / "clips"
    whole = clip_factory(clips / "whole.mp4", seconds=3, size="96x64", frequency=330)
    cut = clip_factory(clips / "cut.webm", seconds=3, size="96x64", vcodec="libvpx-vp9", acodec="libopus",
                       audio_rate=48000, frequency=550)
    audio = clip_factory(clips / "audio.m4a", seconds=3, video=False)
    fast = clip_factory(clips / "fast.mp4", seconds=3, size="64x48", extra=["-movflags", "+faststart"])
    downloads = root / "downloads"
    downloads.mkdir()
    _write_tar(downloads / "00000.tar", [
        ("000000000.mp4", whole.read_bytes()),
        ("000000000.txt", b"a dog barks"),
        ("000000000.json", _meta("000000000", "https://www.youtube.com/watch?v=AAAAAAAAAAA", labels="/m/dog")),
        ("000000001_00000.webm", cut.read_bytes()),
        ("000000001_00000.json", _meta("000000001_00000", "https://youtu.be/BBBBBBBBBBB", clips=[[30.0, 33.0]],
                                       labels=["/m/cat", "/m/dog"])),
        ("000000002.json", _meta("000000002", "https://www.youtube.com/watch?v=CCCCCCCCCCC", "failed_to_download")),
        ("000000002.txt", b"gone"),
        ("000000003.mp4", b"\x00\x00\x00\x18ftypmp42" + b"not really a video" * 100),
        ("000000003.json", _meta("000000003", "https://www.youtube.com/watch?v=EEEEEEEEEEE")),
        ("000000004.m4a", audio.read_bytes()),
        ("000000004.json", _meta("000000004", "https://www.youtube.com/watch?v=FFFFFFFFFFF")),
        ("README.md", b"downloaded with video2dataset\n"),
    ])
    _write_tar(downloads / "00001.tar", [
        ("000010000.mp4", fast.read_bytes()),
        ("000010000.json", _meta("000010000", "https://www.youtube.com/shorts/GGGGGGGGGGG")),
    ])
    (downloads / "00000_stats.json").write_text("{}")  # video2dataset's done markers are not inputs
    return downloads


def _samples(out: Path) -> dict[str, tuple[dict, dict[str, bytes]]]:
    """metadata id -> (metadata, members by extension) of every sample."""
    return {json.loads(members[METADATA_MEMBER])["id"]: (json.loads(members[METADATA_MEMBER]), members)
            for members in shard_members(out).values()}


def _failures(out: Path) -> dict[str, dict]:
    return {row["id"]: row for row in map(json.loads, (out / "failures.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def local_build(downloads, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out") / "local"
    return _build(str(downloads / "{00000..00001}.tar"), out)


def test_every_member_is_a_sample_or_a_failure_naming_tar_and_member(local_build, downloads):
    manifest = read_manifest(local_build)
    assert manifest["source"]["kind"] == "video2dataset"
    assert (manifest["source"]["tars"], manifest["source"]["members"]) == (2, 14)
    totals = manifest["totals"]
    assert (totals["inputs"], totals["inputs_ok"], totals["failures"], totals["samples"]) == (7, 3, 4, 3)
    failures = _failures(local_build)
    tar0 = str(downloads / "00000.tar")
    expected = {"000000002": "download_failed", "000000003": "unreadable", "000000004": "no_video_member",
                "README": "not_a_video"}
    assert {key: row["reason"] for key, row in failures.items()} == expected
    assert failures["000000002"]["source"] == f"{tar0}#000000002.{{json,txt}}"
    assert "Video unavailable" in failures["000000002"]["detail"] and tar0 in failures["000000002"]["detail"]
    assert failures["000000003"]["source"] == f"{tar0}#000000003.{{json,mp4}}"
    assert failures["README"]["source"] == f"{tar0}#README.md" and "README.md" in failures["README"]["detail"]
    assert "000000004.m4a" in failures["000000004"]["detail"]
    samples = _samples(local_build)
    assert sorted(samples) == ["000000000", "000000001_00000", "000010000"]
    whole = samples["000000000"][0]
    assert (whole["ytid"], whole["video_id"], whole["labels"], whole["caption"]) == (
        "AAAAAAAAAAA", "AAAAAAAAAAA", ["/m/dog"], "a dog barks")
    assert whole["v2d_members"] == ["000000000.json", "000000000.mp4", "000000000.txt"]
    assert whole["source"] == f"{tar0}#000000000.{{json,mp4,txt}}" and (whole["start"], whole["end"]) == (0.0, 2.0)
    cut = samples["000000001_00000"][0]
    assert (cut["ytid"], cut["v2d_clip"], cut["labels"]) == ("BBBBBBBBBBB", [30.0, 33.0], ["/m/cat", "/m/dog"])
    assert samples["000010000"][0]["ytid"] == "GGGGGGGGGGG"
    assert sorted(manifest["labels"]["names"]) == ["/m/cat", "/m/dog"]


def test_a_clip_read_from_a_tar_equals_the_same_clip_read_from_a_file(local_build, downloads, tmp_path):
    """The member path (memfd, moov atom at the end included) decodes exactly as the file path does."""
    folder = tmp_path / "files"
    with tarfile.open(downloads / "00000.tar") as tar:
        tar.extractall(folder, members=[tar.getmember("000000000.mp4"), tar.getmember("000000001_00000.webm")],
                       filter="data")
    from_files = _samples(build_shards(folder, tmp_path / "files_out", **V2D))
    from_tars = _samples(local_build)
    for key, name in (("000000000", "000000000.mp4"), ("000000001_00000", "000000001_00000.webm")):
        tar_members, file_members = from_tars[key][1], from_files[name][1]
        assert sorted(tar_members) == sorted(file_members)
        for ext in tar_members:
            if ext != METADATA_MEMBER:
                assert tar_members[ext] == file_members[ext], f"{key}: {ext} differs"
        assert from_tars[key][0]["frame_times"] == from_files[name][0]["frame_times"]


def test_remote_tars_over_http_give_the_local_build(local_build, downloads, tmp_path):
    """python -m http.server ignores Range requests: the member reads fall back to streaming the tar."""
    with http_server(downloads) as base:
        out = _build(f"{base}/{{00000..00001}}.tar", tmp_path / "http")
    remote, local = _samples(out), _samples(local_build)
    assert sorted(remote) == sorted(local)
    for key, (meta, members) in remote.items():
        assert meta["v2d_tar"].startswith(base) and meta["path"] == meta["v2d_tar"]
        assert members[LOGMEL_MEMBER] == local[key][1][LOGMEL_MEMBER]
        assert [members[ext] for ext in sorted(members) if ext.endswith("jpg")] == \
               [local[key][1][ext] for ext in sorted(local[key][1]) if ext.endswith("jpg")]
    assert {key: row["reason"] for key, row in _failures(out).items()} == {
        key: row["reason"] for key, row in _failures(local_build).items()}


def test_tars_in_s3_are_read_with_ranged_reads_and_give_the_local_build(local_build, downloads, tmp_path,
                                                                           monkeypatch):
    import fsspec

    with s3_server() as env:
        apply_env(env, monkeypatch)
        s3 = fsspec.filesystem("s3", skip_instance_cache=True)
        s3.mkdir("v2d")
        for name in ("00000.tar", "00001.tar"):
            s3.put_file(str(downloads / name), f"v2d/downloads/{name}")
        out = _build("s3://v2d/downloads/{00000..00001}.tar", tmp_path / "s3")
    remote, local = _samples(out), _samples(local_build)
    assert sorted(remote) == sorted(local)
    for key, (meta, members) in remote.items():
        assert meta["v2d_tar"].startswith("s3://v2d/downloads/")
        assert {ext: data for ext, data in members.items() if ext != METADATA_MEMBER} == \
               {ext: data for ext, data in local[key][1].items() if ext != METADATA_MEMBER}
    assert sorted(_failures(out)) == sorted(_failures(local_build))


def test_audioset_list_joined_by_youtube_id(downloads, tmp_path):
    (tmp_path / "segments.csv").write_text(
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        'AAAAAAAAAAA, 0.500, 2.500, "/m/dog"\n'  # the whole video: the row's segment is cut from it
        'BBBBBBBBBBB, 30.000, 40.000, "/m/cat"\n'  # the clip that starts at the row's start: read from 0
        'BBBBBBBBBBB, 50.000, 60.000, "/m/cat"\n'  # no clip starts at 50 s
        'CCCCCCCCCCC, 0.000, 10.000, "/m/cat"\n'  # video2dataset could not download it
        'ZZZZZZZZZZZ, 0.000, 10.000, "/m/dog"\n')  # never downloaded
    out = _build(str(downloads / "{00000..00001}.tar"), tmp_path / "joined", "--list", str(tmp_path / "segments.csv"))
    manifest = read_manifest(out)
    assert manifest["source"]["kind"] == "video2dataset+audioset"
    # the rows, and the README: a failure no YouTube id ties to a row stays an input
    assert manifest["totals"]["inputs"] == 6 and manifest["totals"]["samples"] == 2
    # the corrupt mp4, the audio-only download and the video of GGG: no row names them
    assert manifest["source"]["ignored_files"] == {"(tar member groups no list row names)": 3}
    samples = {meta["ytid"] + f"@{meta['list_start']}": meta for meta, _ in _samples(out).values()}
    whole = samples["AAAAAAAAAAA@0.5"]
    assert (whole["start"], whole["end"], whole["labels"]) == (0.5, 2.5, ["/m/dog"])
    assert all(0.5 <= t < 2.5 for t in whole["frame_times"])
    clip = samples["BBBBBBBBBBB@30.0"]
    assert clip["start"] == 0.0 and clip["end"] == pytest.approx(3.0, abs=0.1)  # the clip lasts 3 s, not 10
    assert clip["v2d_key"] == "000000001_00000"
    assert {key: row["reason"] for key, row in _failures(out).items()} == {
        "BBBBBBBBBBB_50000": "missing", "CCCCCCCCCCC_0": "download_failed", "ZZZZZZZZZZZ_0": "missing",
        "README": "not_a_video"}


def test_a_cut_tar_joined_to_a_list_keeps_its_failure(downloads, tmp_path):
    """The rows whose videos were past the break are missing, and failures.jsonl says which tar broke and why."""
    cut = tmp_path / "cut"
    cut.mkdir()
    data = (downloads / "00000.tar").read_bytes()
    (cut / "00000.tar").write_bytes(data[: len(data) * 2 // 3])
    (tmp_path / "segments.csv").write_text(
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        'AAAAAAAAAAA, 0.500, 2.500, "/m/dog"\n'  # listed before the break
        'CCCCCCCCCCC, 0.000, 10.000, "/m/cat"\n')  # its JSON lies past the break
    out = _build(str(cut), tmp_path / "out", "--list", str(tmp_path / "segments.csv"))
    failures = _failures(out)
    broken = [row for row in failures.values() if row["reason"] == "unreadable_tar"]
    assert len(broken) == 1 and str(cut / "00000.tar") in broken[0]["detail"]
    assert "unexpected end of data" in broken[0]["detail"]
    assert failures["CCCCCCCCCCC_0"]["reason"] == "missing"
    totals = read_manifest(out)["totals"]
    assert totals["inputs"] == 3 == totals["samples"] + totals["failures"] == len(_samples(out)) + len(failures)


def test_a_cut_tar_is_a_failure_and_its_first_members_stay(downloads, tmp_path):
    cut = tmp_path / "cut"
    cut.mkdir()
    data = (downloads / "00000.tar").read_bytes()
    (cut / "00000.tar").write_bytes(data[: len(data) * 2 // 3])
    shutil.copy(downloads / "00001.tar", cut / "00001.tar")
    out = _build(str(cut), tmp_path / "out")  # a folder of tars
    failures = _failures(out)
    broken = [row for row in failures.values() if row["reason"] == "unreadable_tar"]
    assert len(broken) == 1 and str(cut / "00000.tar") in broken[0]["detail"]
    assert "000000000" in _samples(out) and "000010000" in _samples(out)
    totals = read_manifest(out)["totals"]
    assert totals["inputs"] == totals["samples"] + totals["failures"] == len(_samples(out)) + len(failures)
    # the fault's words are part of the build's fingerprint: they depend on the tar's bytes only
    assert [item.to_json() for item in tar_items(str(cut))[0]] == [item.to_json() for item in tar_items(str(cut))[0]]
    assert broken[0]["detail"] == f"{cut / '00000.tar'}: read stopped after 4 members: ReadError: unexpected end of data"


class _ResetAfter:
    """A local tar whose connection is reset once ``limit`` bytes were read: a storage failure, not a damaged tar."""

    def __init__(self, path: str, limit: int):
        self._file, self._limit = open(path, "rb"), limit

    def read(self, size: int = -1) -> bytes:
        if self._file.tell() >= self._limit:
            raise ConnectionResetError(104, "Connection reset by peer")
        return self._file.read(size)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._file.close()


def test_a_storage_error_while_listing_stops_the_build_and_the_same_build_then_resumes(
        downloads, local_build, tmp_path, monkeypatch, capsys):
    """A reset connection says nothing about the tar: it must not become an unreadable_tar failure, whose text the
    build's fingerprint would hold (a re-run reading the tar fine would be refused). The build stops naming the tar."""
    flaky = str(downloads / "00001.tar")
    monkeypatch.setattr(source_tars, "open", lambda path, mode: _ResetAfter(path, 1024) if path == flaky
                        else open(path, mode), raising=False)
    out = tmp_path / "out"
    src = str(downloads / "{00000..00001}.tar")
    assert shard_main(["build", "--src", src, "--out", str(out), *build_flags(**V2D), "--json"]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and flaky in message and "Connection reset" in message
    assert not (out / "failures.jsonl").exists()
    monkeypatch.undo()
    _build(src, out)
    assert read_manifest(out)["fingerprint"] == read_manifest(local_build)["fingerprint"]


def test_a_read_error_on_a_member_stops_instead_of_failing_the_clip(downloads, monkeypatch):
    """Reading a listed member: a reset connection (or a disk's read error) is an OSError naming the tar, which stops
    the build (resumable), not an unreadable_member failure recorded for good; a tar shorter than listed is one."""
    tar = str(downloads / "00001.tar")
    entry = next(e for e in list_tar(tar, lambda name: False).entries if e.name.endswith(".mp4"))
    assert len(read_member(tar, entry.offset, entry.size)) == entry.size
    monkeypatch.setattr(source_tars, "open", lambda path, mode: _ResetAfter(path, 0), raising=False)
    with pytest.raises(OSError, match=rf"{tar}: cannot read the member at byte {entry.offset}: .*reset") as caught:
        read_member(tar, entry.offset, entry.size)
    assert not isinstance(caught.value, source_tars.MediaError)
    monkeypatch.undo()
    with pytest.raises(source_tars.MediaError, match="shorter than when it was listed"):
        read_member(tar, entry.offset, Path(tar).stat().st_size)


class _ResetAt(_ResetAfter):
    """A local tar whose connection is reset when a read starts at byte ``offset``: the listing (headers, small
    members) reads fine, the build's read of the member there fails."""

    def read(self, size: int = -1) -> bytes:
        if self._file.tell() == self._limit:
            raise ConnectionResetError(104, "Connection reset by peer")
        return self._file.read(size)


def test_a_read_error_on_a_member_mid_build_stops_the_build_and_the_rerun_builds_the_clip(
        downloads, local_build, tmp_path, monkeypatch, capsys):
    """Through the whole build: the reset must reach the build (exit 2, one line naming the tar), leave no part record
    and no failure for the clip; it was an internal_error recorded for good, which a rerun never retried."""
    flaky = str(downloads / "00001.tar")
    video = next(e for e in list_tar(flaky, lambda name: False).entries if e.name.endswith(".mp4"))
    monkeypatch.setattr(source_tars, "open", lambda path, mode: _ResetAt(path, video.offset) if path == flaky
                        else open(path, mode), raising=False)
    out = tmp_path / "out"
    src = str(downloads / "{00000..00001}.tar")
    assert shard_main(["build", "--src", src, "--out", str(out), *build_flags(**V2D), "--json"]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and flaky in message and "Connection reset" in message, message
    assert not (out / "failures.jsonl").exists() and not (out / "manifest.json").exists()
    recorded = [json.loads(p.read_text()) for p in (out / "_parts").glob("*.json")]
    assert all(f["reason"] != "internal_error" for record in recorded for f in record["failures"]), recorded
    monkeypatch.undo()
    _build(src, out)
    assert read_manifest(out)["fingerprint"] == read_manifest(local_build)["fingerprint"]
    assert _samples(out) == _samples(local_build)
    assert _failures(out) == _failures(local_build)


def test_tars_in_s3_are_listed_by_seeking_past_videos_and_members_read_with_one_exact_get(tmp_path, monkeypatch):
    """Counts the S3 requests: listing skips the video bytes (a few block-sized GETs, not one per 10 KB tar record)
    and a member is one GET of exactly its bytes (no read-ahead)."""
    import fsspec
    import s3fs

    rng = np.random.default_rng(0)
    members = [("a.json", _meta("a", "https://youtu.be/AAAAAAAAAAA")), ("a.mp4", rng.bytes(3 << 20)),
               ("b.json", _meta("b", "https://youtu.be/BBBBBBBBBBB")), ("b.txt", b"caption"),
               ("b.mp4", rng.bytes(3 << 20)), ("c.json", _meta("c", "https://youtu.be/CCCCCCCCCCC")),
               ("c.mp4", rng.bytes(200_000))]
    _write_tar(tmp_path / "00000.tar", members)
    gets: list[tuple[int, int]] = []
    call_s3 = s3fs.S3FileSystem._call_s3

    async def counted(self, method, *args, **kwargs):
        if method == "get_object":
            first, _, last = kwargs.get("Range", "bytes=0-").removeprefix("bytes=").partition("-")
            gets.append((int(first), int(last or -1)))
        return await call_s3(self, method, *args, **kwargs)

    with s3_server() as env:
        apply_env(env, monkeypatch)
        s3 = fsspec.filesystem("s3", skip_instance_cache=True)
        s3.mkdir("v2d")
        s3.put_file(str(tmp_path / "00000.tar"), "v2d/00000.tar")
        monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counted)
        listing = list_tar("s3://v2d/00000.tar", lambda name: not name.endswith(".mp4"))
        listed = list(gets)
        gets.clear()
        entry = next(entry for entry in listing.entries if entry.name == "c.mp4")
        data = read_member("s3://v2d/00000.tar", entry.offset, entry.size)
    assert listing.error is None and [entry.name for entry in listing.entries] == [name for name, _ in members]
    assert [entry.data for entry in listing.entries] == [None if name.endswith(".mp4") else data
                                                        for name, data in members]
    fetched = sum(last + 1 - first for first, last in listed)
    assert len(listed) <= 4 and fetched < (1 << 20), f"listing: {len(listed)} GETs, {fetched} bytes"
    assert data == members[-1][1] and gets == [(entry.offset, entry.offset + entry.size - 1)]


def test_youtube_ids_from_video2dataset_urls():
    assert youtube_id("https://www.youtube.com/watch?v=abcDEF_-123&t=5") == "abcDEF_-123"
    assert youtube_id("https://youtu.be/abcDEF_-123?si=x") == "abcDEF_-123"
    assert youtube_id("https://www.youtube.com/shorts/abcDEF_-123") == "abcDEF_-123"
    assert youtube_id("https://example.com/watch?v=abcDEF_-123") is None
    assert youtube_id(None) is None
