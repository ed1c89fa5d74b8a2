"""Whole builds: reproducible bytes, resume after a kill, array tasks, verify, inspect, and readers (DALI,
webdataset) that accept the shards."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from avmae.cli.shard import main as shard_main
from avmae.shard.writing.manifest import read_manifest
from avmae.shard.writing.writer import PARTS_DIR
from tests.helpers import build_arguments, build_shards

# The tiny shards at 4 frames of 64 px and 256 log-mel frames: what the manifest, inspect and reader tests assert.
GEOMETRY = {"num_frames": "4", "short_side": "64", "target_frames": "256"}


def _shard_bytes(out: Path) -> dict[str, bytes]:
    """Every output file that defines the dataset (tars, indexes, manifest, failures)."""
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())
            if p.suffix in (".tar", ".idx") or p.name in ("manifest.json", "failures.jsonl")}


@pytest.fixture(scope="module")
def reference_build(synth_corpus, tmp_path_factory) -> Path:
    return build_shards(synth_corpus, tmp_path_factory.mktemp("reference") / "shards", **GEOMETRY)


def test_manifest_describes_the_build(reference_build):
    manifest = read_manifest(reference_build)
    assert manifest["totals"] == {"inputs": 12, "inputs_ok": 12, "failures": 0, "samples": 12, "failure_reasons": {}}
    assert set(manifest["splits"]) == {"train", "val"}
    assert sum(s["samples"] for s in manifest["splits"].values()) == 12
    assert manifest["labels"]["names"] == ["class_00", "class_01", "class_02", "class_03"]
    assert manifest["features"]["num_frames"] == 4 and manifest["features"]["target_frames"] == 256
    assert manifest["label_coverage"]["class_00"] == {"rows": 3, "ok": 3}
    # Dataset statistics recomputed from the training shards' valid frames.
    import tarfile

    values = []
    for shard in manifest["splits"]["train"]["shards"]:
        with tarfile.open(reference_build / shard["tar"]) as tar:
            for name in tar.getnames():
                if name.endswith(".json"):
                    meta = json.loads(tar.extractfile(name).read())
                    mel = np.load(io.BytesIO(tar.extractfile(name.replace(".json", ".logmel.npy")).read()))
                    values.append(mel[: meta["audio_valid_frames"]].astype(np.float64).ravel())
    values = np.concatenate(values)
    assert manifest["logmel_mean"] == pytest.approx(values.mean(), rel=1e-9)
    assert manifest["logmel_std"] == pytest.approx(values.std(), rel=1e-9)


def test_val_split_is_by_video_and_deterministic(reference_build, synth_corpus, tmp_path):
    manifest = read_manifest(reference_build)
    assert 1 <= manifest["splits"]["val"]["samples"] <= 6
    again = tmp_path / "again"
    build_shards(synth_corpus, again, **GEOMETRY)
    assert read_manifest(again)["splits"] == manifest["splits"]


def test_output_bytes_do_not_depend_on_the_worker_count(reference_build, synth_corpus, tmp_path):
    parallel = tmp_path / "parallel"
    build_shards(synth_corpus, parallel, workers=2, **GEOMETRY)
    assert _shard_bytes(parallel) == _shard_bytes(reference_build)


def test_array_tasks_then_finalize_equal_one_build(reference_build, synth_corpus, tmp_path):
    out = tmp_path / "tasks"
    for task in (1, 0, 2):
        build_shards(synth_corpus, out, task_index=task, num_tasks=3, **GEOMETRY)
    # the last task to finish found every shard done and wrote the manifest
    assert _shard_bytes(out) == _shard_bytes(reference_build)
    (out / "manifest.json").unlink()
    assert shard_main(["finalize", str(out), "--json"]) == 0
    assert _shard_bytes(out) == _shard_bytes(reference_build)


def test_finalize_refuses_an_incomplete_build(synth_corpus, tmp_path):
    out = tmp_path / "half"
    build_shards(synth_corpus, out, task_index=0, num_tasks=2, **GEOMETRY)
    assert not (out / "manifest.json").exists()
    assert shard_main(["finalize", str(out)]) == 2


def test_resume_after_kill_gives_the_same_shards(reference_build, synth_corpus, tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "avmae.cli.shard", *build_arguments(synth_corpus, out, **GEOMETRY)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((out / PARTS_DIR).glob("*.json"))) < 2:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = sorted(p.name for p in (out / PARTS_DIR).glob("*.json"))
    planned = len(json.loads((out / "build.json").read_text())["shards"])
    assert 2 <= len(done_before) < planned, "the kill should land mid-build"
    assert not (out / "manifest.json").exists()
    mtimes = {name: (out / PARTS_DIR / name).stat().st_mtime_ns for name in done_before}
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    report = json.loads(result.stdout)
    assert report["shards_skipped"] == len(done_before)  # finished shards are not redone
    assert report["shards_written"] == planned - len(done_before)
    assert {name: (out / PARTS_DIR / name).stat().st_mtime_ns for name in done_before} == mtimes
    assert _shard_bytes(out) == _shard_bytes(reference_build)
    assert not list(out.glob(".*partial"))


def test_resume_with_other_parameters_is_refused(reference_build, synth_corpus, tmp_path):
    out = tmp_path / "mixed"
    build_shards(synth_corpus, out, task_index=0, num_tasks=2, **GEOMETRY)
    build_shards(synth_corpus, out, exit_code=2, **{**GEOMETRY, "num_frames": "8"})


def test_labelled_split_copies_few_training_clips_per_class(synth_corpus, tmp_path):
    out = tmp_path / "few_labels"
    build_shards(synth_corpus, out, labelled_per_class=1, **GEOMETRY)
    manifest = read_manifest(out)
    splits = manifest["splits"]
    # One copy per class, on top of the same train and val splits as a build without the option.
    assert splits["labelled"]["label_counts"] == {f"class_{k:02d}": 1 for k in range(4)}
    assert splits["train"]["samples"] + splits["val"]["samples"] == 12 and manifest["totals"]["samples"] == 16
    import tarfile

    def sources(split: str) -> set[str]:
        found = set()
        for shard in splits[split]["shards"]:
            with tarfile.open(out / shard["tar"]) as tar:
                found |= {json.loads(tar.extractfile(n).read())["path"] for n in tar.getnames() if n.endswith(".json")}
        return found

    labelled = sources("labelled")
    assert len(labelled) == 4 and labelled <= sources("train") and not labelled & sources("val")


def test_labelled_split_choice_is_seeded_and_skips_missing_files():
    from avmae.shard.inputs.items import ClipItem
    from avmae.shard.writing.plan import add_labelled_split

    items = [ClipItem(item_id=f"c{i}", video_id=f"c{i}", source=f"c{i}", path=None if i == 0 else f"/v/c{i}.mp4",
                      labels=("a",) if i % 2 == 0 else ("a", "b")) for i in range(10)]
    items.append(ClipItem(item_id="held", video_id="held", source="held", path="/v/held.mp4", labels=("b",), split="val"))
    chosen = [item for item in add_labelled_split(items, 2, seed=0) if item.split == "labelled"]
    counts = {label: sum(label in item.labels for item in chosen) for label in ("a", "b")}
    assert counts["a"] >= 2 and counts["b"] >= 2  # taken while either of an input's classes still needs one
    assert all(item.item_id.endswith("~labelled") and item.path is not None for item in chosen)
    assert "held~labelled" not in {item.item_id for item in chosen}
    assert chosen == [item for item in add_labelled_split(items, 2, seed=0) if item.split == "labelled"]
    assert chosen != [item for item in add_labelled_split(items, 2, seed=5) if item.split == "labelled"]
    assert add_labelled_split(items, 0, seed=0) == items


def test_verify_passes_then_catches_damage(reference_build, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(reference_build, copy)
    assert shard_main(["verify", str(copy), "--json"]) == 0
    tar = sorted(copy.glob("train-*.tar"))[0]
    data = bytearray(tar.read_bytes())
    data[700] ^= 0xFF  # one flipped byte inside the first frame
    tar.write_bytes(bytes(data))
    assert shard_main(["verify", str(copy), "--json"]) == 1
    idx = sorted(copy.glob("val-*.idx"))[0]
    idx.write_text(idx.read_text().replace(" 512 ", " 1024 ", 1))
    from avmae.shard.checking.verify import verify

    problems = verify(copy)["problems"]
    assert any("checksum" in p for p in problems) and any("does not describe" in p for p in problems)


def test_inspect_writes_pngs(reference_build, tmp_path, capsys):
    from PIL import Image

    assert shard_main(["inspect", str(reference_build), "--sample", "0", "--png-dir", str(tmp_path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["totals"]["samples"] == 12
    assert sum(info["label_histogram"].values()) == 12
    sheet = Image.open(info["sample"]["frames_png"])
    assert sheet.size[1] == 64  # 4 frames on one row of the contact sheet, short side 64
    assert Image.open(info["sample"]["spectrogram_png"]).size[0] > 300


@pytest.mark.dali
def test_dali_reads_the_shards_with_our_index(reference_build):
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    manifest = read_manifest(reference_build)
    shards = [s for split in manifest["splits"].values() for s in split["shards"]]

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)  # CPU only (docs/reference/libraries.md#dali-on-a-cpu)
    def pipeline():
        frame, mel, meta = fn.readers.webdataset(
            paths=[str(reference_build / s["tar"]) for s in shards],
            index_paths=[str(reference_build / s["idx"]) for s in shards],
            ext=["03.jpg", "logmel.npy", "json"], missing_component_behavior="error", name="reader")
        return fn.decoders.image(frame, device="cpu"), fn.decoders.numpy(mel), meta

    pipe = pipeline()
    pipe.build()
    assert pipe.reader_meta("reader")["epoch_size"] == 12
    keys = []
    for _ in range(12):
        image, mel, meta = (output.at(0) for output in pipe.run())
        assert min(image.shape[:2]) == 64 and image.shape[2] == 3
        assert mel.shape == (256, 128) and mel.dtype == np.float16
        keys.append(json.loads(bytes(meta))["key"])
    assert len(set(keys)) == 12
    del dali


def test_webdataset_library_reads_the_shards(reference_build):
    import webdataset as wds

    manifest = read_manifest(reference_build)
    urls = [str(reference_build / s["tar"]) for split in manifest["splits"].values() for s in split["shards"]]
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert len(samples) == 12
    for sample in samples:
        assert {f"{i:02d}.jpg" for i in range(4)} | {"logmel.npy", "json"} <= set(sample)
        assert json.loads(sample["json"])["key"] == sample["__key__"]
