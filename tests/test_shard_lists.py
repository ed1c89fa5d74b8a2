"""Dataset lists in the formats users have, matched to files named as downloaders name them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from avmae.shard.inputs.items import ClipItem
from avmae.shard.inputs.lists import ListFormatError, detect_format, read_list
from avmae.shard.writing.manifest import read_manifest
from avmae.shard.writing.plan import unique_ids
from tests.helpers import SMALL_BUILD, build_shards


def _metadata(out: Path, by: str = "id") -> dict[str, dict]:
    import tarfile

    manifest = read_manifest(out)
    found = {}
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            with tarfile.open(out / shard["tar"]) as tar:
                for name in tar.getnames():
                    if name.endswith(".json"):
                        meta = json.loads(tar.extractfile(name).read())
                        found[meta[by]] = meta
    return found


def _failures(out: Path) -> dict[str, str]:
    return {json.loads(line)["id"]: json.loads(line)["reason"] for line in (out / "failures.jsonl").read_text().splitlines()}


def test_audioset_segments_csv_with_downloader_names(tmp_path, clip_factory):
    videos = tmp_path / "videos"
    clip_factory(videos / "--abc-DEF_1.mp4", seconds=6)  # whole video, named by its YTID (leading dashes)
    clip_factory(videos / "cut_one_30000_40000.mp4", seconds=2)  # cut by a downloader, times in ms
    clip_factory(videos / "cut_two_12.500_22.500.mkv", seconds=2)  # cut, decimal seconds
    clip_factory(videos / "decoy_7_999.mp4", seconds=2)  # a YTID that merely looks like a cut of "decoy"
    (tmp_path / "class_labels_indices.csv").write_text(
        'index,mid,display_name\n0,/m/09x0r,"Speech"\n1,/m/04rlf,"Music"\n2,/m/0jbk,"Animal"\n3,/m/empty,"Never used"\n')
    (tmp_path / "balanced_train_segments.csv").write_text(
        "# Segments csv created Sun Mar  5 10:54:31 2017\n"
        "# num_ytids=5, num_segs=5, num_unique_labels=3, num_positive_labels=7\n"
        "# YTID, start_seconds, end_seconds, positive_labels\n"
        '--abc-DEF_1, 2.000, 4.000, "/m/09x0r,/m/04rlf"\n'
        'cut_one, 30.000, 40.000, "/m/04rlf"\n'
        'cut_two, 12.500, 22.500, "/m/0jbk,/m/09x0r"\n'
        'decoy, 30.000, 40.000, "/m/0jbk"\n'
        'gone_from_youtube, 0.000, 10.000, "/m/0jbk"\n')
    out = tmp_path / "as"
    build_shards(tmp_path / "balanced_train_segments.csv", out, "--src", str(videos),
                 "--class-labels", str(tmp_path / "class_labels_indices.csv"), **SMALL_BUILD)
    manifest = read_manifest(out)
    assert manifest["source"]["kind"] == "audioset"
    assert manifest["labels"]["names"] == ["/m/09x0r", "/m/04rlf", "/m/0jbk", "/m/empty"]
    assert manifest["labels"]["display_names"][0] == "Speech"
    meta = _metadata(out)
    whole = meta["--abc-DEF_1_2000"]
    assert (whole["start"], whole["end"]) == (2.0, 4.0) and whole["labels"] == ["/m/09x0r", "/m/04rlf"]
    assert all(2.0 <= t < 4.0 for t in whole["frame_times"])
    cut = meta["cut_one_30000"]
    assert cut["start"] == 0.0 and cut["end"] == pytest.approx(2.0, abs=0.05)  # list says 10 s, the file has 2
    assert cut["list_start"] == 30.0
    assert meta["cut_two_12500"]["path"].endswith("cut_two_12.500_22.500.mkv")
    assert _failures(out) == {"decoy_30000": "missing", "gone_from_youtube_0": "missing"}
    coverage = manifest["label_coverage"]
    assert coverage["/m/0jbk"] == {"rows": 3, "ok": 1}  # the class that suffers from missing videos
    assert coverage["/m/09x0r"] == {"rows": 2, "ok": 2}


def test_audioset_label_outside_class_list_is_an_error(tmp_path):
    (tmp_path / "labels.csv").write_text("index,mid,display_name\n0,/m/a,A\n")
    (tmp_path / "list.csv").write_text('# YTID, start_seconds, end_seconds, positive_labels\nx, 0, 10, "/m/a,/m/zz"\n')
    with pytest.raises(ListFormatError, match="/m/zz"):
        read_list(tmp_path / "list.csv", "audioset", None, class_labels=tmp_path / "labels.csv")


def test_vggsound_csv_with_splits_and_padded_start_names(tmp_path, clip_factory):
    videos = tmp_path / "vgg"
    clip_factory(videos / "yt_A_000004.mp4", seconds=3)
    clip_factory(videos / "yt_B.mp4", seconds=8)
    (tmp_path / "vggsound.csv").write_text(
        "yt_A,4,dog barking,train\nyt_B,5,playing cello,test\nyt_C,0,dog barking,train\n")
    assert detect_format(tmp_path / "vggsound.csv") == "vggsound"
    out = tmp_path / "out"
    build_shards(tmp_path / "vggsound.csv", out, "--src", str(videos), segment_seconds=3, **SMALL_BUILD)
    manifest = read_manifest(out)
    assert manifest["labels"]["names"] == ["dog barking", "playing cello"]
    assert {name: split["samples"] for name, split in manifest["splits"].items()} == {"test": 1, "train": 1}
    meta = _metadata(out)
    assert meta["yt_A_4000"]["start"] == 0.0 and meta["yt_A_4000"]["split"] == "train"
    assert (meta["yt_B_5000"]["start"], meta["yt_B_5000"]["end"]) == (5.0, 8.0)
    assert _failures(out) == {"yt_C_0": "missing"}


def test_epic_kitchens_annotations(tmp_path, clip_factory):
    videos = tmp_path / "EPIC-KITCHENS" / "P01" / "videos"
    clip_factory(videos / "P01_01.MP4", seconds=6)
    (tmp_path / "EPIC_100_train.csv").write_text(
        "narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
        "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n"
        "P01_01_0,P01,P01_01,00:00:00.10,00:00:00.50,00:00:02.25,25,112,open door,open,3,door,8,['door'],[8]\n"
        'P01_01_1,P01,P01_01,00:00:03.00,00:00:03.10,00:00:05.90,155,295,"take cup, blue",take,0,cup,13,[\'cup\'],[13]\n'
        "P02_09_0,P02,P02_09,00:00:01.00,00:00:01.00,00:00:03.00,50,150,wash pan,wash,2,pan,20,['pan'],[20]\n")
    out = tmp_path / "epic"
    build_shards(tmp_path / "EPIC_100_train.csv", out, "--src", str(tmp_path / "EPIC-KITCHENS"), **SMALL_BUILD)
    manifest = read_manifest(out)
    assert manifest["source"]["kind"] == "epic"
    assert manifest["labels"]["heads"] == {"verb": 97, "noun": 300}
    meta = _metadata(out)
    first, second = meta["P01_01_0"], meta["P01_01_1"]
    assert (first["verb_class"], first["noun_class"]) == (3, 8)
    assert (first["start"], first["end"]) == (0.5, 2.25)
    assert second["narration"] == "take cup, blue" and second["end"] == 5.9
    assert _failures(out) == {"P02_09_0": "missing"}


def test_generic_csv_with_segments_and_relative_paths(tmp_path, clip_factory):
    clip_factory(tmp_path / "clips" / "a.mp4", seconds=5)
    (tmp_path / "list.csv").write_text("path,labels,start,end\nclips/a.mp4,cat;dog,1,3\nclips/a.mp4,dog,3,5\n"
                                       "clips/missing.mp4,cat,0,2\n")
    out = tmp_path / "out"
    build_shards(tmp_path / "list.csv", out, **SMALL_BUILD)
    meta = _metadata(out)
    assert meta["clips/a.mp4_1000"]["labels"] == ["cat", "dog"]
    assert meta["clips/a.mp4_3000"]["start"] == 3.0
    assert _failures(out) == {"clips/missing.mp4_0": "missing"}


def test_list_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("# YTID, start_seconds, end_seconds, positive_labels\nabc, zero, 10, \"/m/x\"\n")
    with pytest.raises(ListFormatError, match=r"bad.csv:2: start/end are not numbers"):
        read_list(bad, "audioset", None)
    unknown = tmp_path / "unknown.csv"
    unknown.write_text("hello world\n")
    with pytest.raises(ListFormatError, match="cannot tell the list format"):
        read_list(unknown, "auto", None)


def test_folder_segments_middle_and_all_with_dir_labels(tmp_path, clip_factory):
    clip_factory(tmp_path / "src" / "birds" / "long.mp4", seconds=7)
    out = tmp_path / "all"
    build_shards(tmp_path / "src", out, "--segments", "all", "--labels-from-dirs", segment_seconds=2, **SMALL_BUILD)
    segments = sorted((m["start"], m["end"]) for m in _metadata(out, by="key").values())
    assert segments == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0), (6.0, 7.0)]  # the 1 s remainder >= --min-seconds
    manifest = read_manifest(out)
    assert manifest["totals"]["inputs"] == 1 and manifest["totals"]["samples"] == 4
    assert manifest["labels"]["names"] == ["birds"]
    middle = tmp_path / "middle"
    build_shards(tmp_path / "src", middle, "--segments", "middle", segment_seconds=2, **SMALL_BUILD)
    [only] = _metadata(middle).values()
    assert (only["start"], only["end"]) == (2.5, 4.5)


def test_repeated_rows_get_ids_no_other_row_has():
    def ids(*names: str) -> list[str]:
        return [item.item_id for item in unique_ids([ClipItem(name, name, "list", None) for name in names])]

    assert ids("a", "a", "a") == ["a", "a~2", "a~3"]
    assert ids("a", "a", "a~2") == ["a", "a~3", "a~2"]  # a~2 is a row's own id: the repeat passes it over
    assert ids("a~2", "a", "a", "a~3") == ["a~2", "a", "a~4", "a~3"]
