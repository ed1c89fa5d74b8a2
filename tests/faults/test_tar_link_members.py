"""video2dataset tars holding links, for real: a symbolic link (here to a path outside the tar) and a hard link to
another member are never read, and each is a failure of its own (``link_member``) naming the tar, the member and
its target, counted in the source description and in failures.jsonl, so that inputs = samples + failures still
holds and nothing is dropped without a record."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from avmae.cli.shard import main as shard_main
from avmae.shard.inputs.source_tars import list_tar
from avmae.shard.inputs.video2dataset import tar_items
from avmae.shard.writing.manifest import read_manifest
from tests.helpers import SMALL_BUILD, build_flags

V2D = {**SMALL_BUILD, "segment_seconds": "2", "shard_size": "4", "workers": "1"}


def _meta(key: str, ytid: str) -> bytes:
    return json.dumps({"url": f"https://www.youtube.com/watch?v={ytid}", "key": key, "status": "success",
                       "error_message": None, "yt_meta_dict": {}}).encode()


def _link(tar: tarfile.TarFile, name: str, kind: bytes, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    tar.addfile(info)


@pytest.fixture(scope="module")
def linked(tmp_path_factory, clip_factory) -> Path:
    """A tar with one video (and its JSON), a symbolic link to /etc/passwd named as a video with its JSON, and a
    hard link to the video under another key."""
    root = tmp_path_factory.mktemp("links")
    clip = clip_factory(root / "clip.mp4", seconds=2, size="96x64").read_bytes()
    path = root / "00000.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (("000000000.mp4", clip), ("000000000.json", _meta("000000000", "AAAAAAAAAAA"))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        _link(tar, "000000001.mp4", tarfile.SYMTYPE, "/etc/passwd")
        info = tarfile.TarInfo("000000001.json")
        data = _meta("000000001", "BBBBBBBBBBB")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        _link(tar, "000000002.mp4", tarfile.LNKTYPE, "000000000.mp4")
    return path


def test_links_are_listed_as_unread_with_their_targets(linked):
    listing = list_tar(str(linked), lambda name: name.endswith(".json"))
    assert [entry.name for entry in listing.entries] == ["000000000.mp4", "000000000.json", "000000001.json"]
    assert listing.unread == [("000000001.mp4", "symbolic link to /etc/passwd"),
                              ("000000002.mp4", "hard link to 000000000.mp4")]


def test_each_link_is_a_failure_naming_tar_member_and_target(linked):
    items, description = tar_items(str(linked))
    faults = {item.item_id: item.fault for item in items if item.fault}
    assert faults["000000001.mp4"] == ("link_member", f"{linked}: member 000000001.mp4 is a symbolic link to "
                                                      "/etc/passwd: not read")
    assert faults["000000002.mp4"] == ("link_member", f"{linked}: member 000000002.mp4 is a hard link to "
                                                      "000000000.mp4: not read")
    assert faults["000000001"][0] == "no_video_member"  # its JSON, left without a video
    assert description["unread_members"] == 2 and description["members"] == 3
    assert [item.item_id for item in items if not item.fault] == ["000000000"]


def test_a_build_records_the_links_in_failures(linked, tmp_path):
    out = tmp_path / "out"
    assert shard_main(["build", "--src", str(linked), "--out", str(out), *build_flags(**V2D), "--json"]) == 0
    failures = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    links = {row["id"]: row for row in failures if row["reason"] == "link_member"}
    assert sorted(links) == ["000000001.mp4", "000000002.mp4"]
    assert "symbolic link to /etc/passwd" in links["000000001.mp4"]["detail"]
    manifest = read_manifest(out)
    totals = manifest["totals"]
    assert (totals["inputs"], totals["samples"], totals["failures"]) == (4, 1, 3)
    assert manifest["source"]["unread_members"] == 2
