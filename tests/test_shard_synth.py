"""The synthetic corpus is learnable: each class has its own picture and its own sound, in the shards; and a seed
gives the same corpus (the demo's numbers are quoted per seed)."""

from __future__ import annotations

import io
import json
import tarfile
from collections import defaultdict

import numpy as np
from PIL import Image

from avmae.shard.writing.manifest import read_manifest
from tests.helpers import build_shards


def test_classes_differ_in_picture_and_in_sound(synth_corpus, tmp_path):
    # 2 s = 200 log-mel frames at 128 bins (the tone's pitch), every clip in split train
    out = build_shards(synth_corpus, tmp_path / "shards", num_frames=2, short_side=32, target_frames=200,
                       val_fraction=0)
    colours, pitches = defaultdict(list), defaultdict(list)
    manifest = read_manifest(out)
    for shard in manifest["splits"]["train"]["shards"]:
        with tarfile.open(out / shard["tar"]) as tar:
            for name in tar.getnames():
                if not name.endswith(".json"):
                    continue
                key = name[: -len(".json")]
                label = json.loads(tar.extractfile(name).read())["labels"][0]
                frame = np.asarray(Image.open(io.BytesIO(tar.extractfile(f"{key}.00.jpg").read())), dtype=np.float64)
                colours[label].append(np.median(frame.reshape(-1, 3), axis=0))  # the background dominates
                mel = np.load(io.BytesIO(tar.extractfile(f"{key}.logmel.npy").read())).astype(np.float64)
                pitches[label].append(int(np.argmax(mel[:150].mean(axis=0))))  # the tone's mel bin
    labels = sorted(colours)
    assert len(labels) == 4 and all(len(colours[label]) == 3 for label in labels)
    # Every clip is nearer its own class's colour centroid than any other's (so a classifier can learn it)...
    centroids = {label: np.mean(colours[label], axis=0) for label in labels}
    for label in labels:
        for colour in colours[label]:
            assert min(labels, key=lambda other: np.linalg.norm(colour - centroids[other])) == label
    # ...and each class's tone sits in its own mel bins, rising with the class index.
    bins = [int(np.median(pitches[label])) for label in labels]
    assert bins == sorted(bins) and len(set(bins)) == 4
    for label in labels:
        assert max(pitches[label]) - min(pitches[label]) <= 2


def test_a_seed_gives_the_same_corpus(tmp_path):
    from avmae.shard.inputs.synth import make_corpus

    first = make_corpus(tmp_path / "a", 3, 2, seed=4, seconds=1.0, width=64, height=48)
    second = make_corpus(tmp_path / "b", 3, 2, seed=4, seconds=1.0, width=64, height=48)
    other = make_corpus(tmp_path / "c", 3, 2, seed=5, seconds=1.0, width=64, height=48)
    assert first.read_text() == second.read_text() == other.read_text()  # the same names and labels
    clips = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.mp4"))
    assert len(clips) == 3
    assert all((tmp_path / "a" / c).read_bytes() == (tmp_path / "b" / c).read_bytes() for c in clips)
    assert any((tmp_path / "a" / c).read_bytes() != (tmp_path / "c" / c).read_bytes() for c in clips)
