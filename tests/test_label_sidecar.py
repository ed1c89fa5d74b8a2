"""The per-shard ``.labels`` sidecar: written by every build beside the tar, index and checksums, listed in the
manifest, equal to the samples' JSON labels; class-balanced sampling weighs by it without reading any tar, and draws
exactly what it draws from the JSONs (shards built before the sidecar); a sidecar that disagrees with its index is
one line naming it, and ``avmae-shard verify`` reports one that disagrees with the JSONs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from avmae.data.config import DataConfig
from avmae.data.loader import build_loader
from avmae.data.readers import open_shards
from avmae.data.schedule import TrainSchedule
from avmae.data.spec import load_spec
from avmae.shard.checking.verify import verify
from avmae.shard.format import LABELS_SUFFIX, METADATA_MEMBER, labels_text, parse_labels
from avmae.shard.writing.manifest import MANIFEST_FILE, read_manifest
from tests.faults.damage import change_one, flip_bits_in_place, json_label_rows, keys_of
from tests.helpers import SMALL_BUILD, build_shards

# Skewed label counts, so that the weights, hence the draws, depend on each sample's labels.
SKEWED = {"class_00": 1, "class_01": 8, "class_02": 3, "class_03": 5}


@pytest.fixture(scope="module")
def built(synth_corpus, tmp_path_factory) -> Path:
    """The 12 clips of 2 s cut into 1 s segments: 24 samples (two per clip) in 6 shards of split train."""
    return build_shards(synth_corpus, tmp_path_factory.mktemp("labels") / "shards",
                        **{**SMALL_BUILD, "segments": "all", "segment_seconds": "1", "shard_size": "2"})


@pytest.fixture
def skewed(built, tmp_path) -> tuple[Path, Path]:
    """Two copies with SKEWED label counts: as built (sidecars), and with the manifest's "labels" fields removed, as
    a build made before the sidecar existed lists its shards."""
    with_sidecar, without = tmp_path / "sidecar", tmp_path / "json"
    for folder, keep in ((with_sidecar, True), (without, False)):
        shutil.copytree(built, folder)
        manifest = read_manifest(folder)
        manifest["splits"]["train"]["label_counts"] = SKEWED
        if not keep:
            for shard in manifest["splits"]["train"]["shards"]:
                del shard["labels"]
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    return with_sidecar, without


def _config(root: str | Path, **overrides) -> DataConfig:
    base = dict(shards=str(root), eval_split="train", batch_size=4, workers=0, num_frames=2, crop_size=32,
                shuffle_buffer=3, balanced_sampling=True)
    return DataConfig(**{**base, **overrides})


def _schedule(root: str | Path, *, rank: int = 0, world: int = 1, readers: int = 1, **overrides) -> TrainSchedule:
    spec = load_spec(root, "train")
    return TrainSchedule(open_shards(spec), _config(root, **overrides), spec.label_counts, rank=rank, world=world,
                         readers=readers)


def _draws(schedule: TrainSchedule, reader: int, count: int) -> list[tuple[str, int, str]]:
    """The first ``count`` draws of a reader as (shard file name, sample index, augmentation seed)."""
    stream = schedule.draws(reader)
    return [(Path(draw.shard.tar).name, draw.index, draw.seed) for draw, _ in zip(stream, range(count))]


def test_a_build_writes_a_labels_sidecar_per_shard_equal_to_the_json_labels(built):
    shards = read_manifest(built)["splits"]["train"]["shards"]
    assert len(shards) == 6 and sum(shard["samples"] for shard in shards) == 24
    keys = []
    for shard in shards:
        assert shard["labels"] == f"{shard['name']}{LABELS_SUFFIX}"
        text = (built / shard["labels"]).read_text(encoding="utf-8")
        rows = parse_labels(text, shard["labels"])
        assert rows == json_label_rows(built / shard["tar"]) and len(rows) == shard["samples"]
        assert text == labels_text(rows)  # the writer's own text, byte for byte
        keys += [key for key, _ in rows]
    # every clip gave two samples, each with its row and the clip's label
    by_clip: dict[str, list[list[str]]] = {}
    for shard in shards:
        for key, labels in parse_labels((built / shard["labels"]).read_text(), shard["labels"]):
            assert len(labels) == 1 and labels[0].startswith("class_")
            by_clip.setdefault(key.rsplit("_", 1)[0], []).append(labels)
    assert len(by_clip) == 12 and all(len(rows) == 2 and rows[0] == rows[1] for rows in by_clip.values())
    assert sorted(key.rsplit("_", 1)[1] for key in keys) == ["000"] * 12 + ["001"] * 12


@pytest.mark.parametrize("world,readers", [(1, 2), (2, 4)])  # whole shards per reader; every 8th sample
def test_balanced_draws_from_the_sidecar_equal_those_from_the_jsons(skewed, world, readers):
    with_sidecar, without = skewed
    for rank in range(world):
        ours, theirs = (_schedule(root, rank=rank, world=world, readers=readers) for root in skewed)
        assert all(shard.labels for shard in ours.shards) and not any(shard.labels for shard in theirs.shards)
        for reader in range(readers):
            owned = ours.owned(reader)
            assert ours.owned_labels(owned) == theirs.owned_labels(theirs.owned(reader))
            assert _draws(ours, reader, 40) == _draws(theirs, reader, 40)
    # the labels matter: with even counts, the same schedule draws other samples
    even = _schedule(with_sidecar, readers=2)
    even.label_counts = {name: 4 for name in SKEWED}
    assert _draws(even, 0, 40) != _draws(_schedule(with_sidecar, readers=2), 0, 40)


def test_balanced_loader_batches_are_the_same_with_and_without_sidecars(skewed):
    batches = [build_loader(_config(root), "train", train=True) for root in skewed]
    keys = [[batch["key"] for batch, _ in zip(loader, range(8))] for loader in batches]
    assert keys[0] == keys[1] and len(keys[0]) == 8


def test_weighing_by_the_sidecars_reads_no_tar(skewed, tmp_path):
    """Over a pipe: root that logs every file it is asked for: the balanced weights of every reader cost one read of
    each owned shard's sidecar and none of its tar; the JSON fallback reads the tars (so the check would see it)."""
    logged = {}
    for root, name in zip(skewed, ("sidecar", "json")):
        log = tmp_path / f"{name}.log"
        schedule = _schedule(f"pipe:echo {{}} >> {log}; cat {root}/{{}}", readers=3)
        log.unlink()  # what load_spec and open_shards read: the manifest, indexes and checksum sidecars
        for reader in range(3):
            schedule._balanced_order(schedule.owned(reader))
        logged[name] = log.read_text().split()
    assert sorted(logged["sidecar"]) == [f"train-{n:06d}.labels" for n in range(6)]
    assert not [name for name in logged["json"] if not name.endswith(".tar")] and len(logged["json"]) >= 6


def test_a_bad_json_member_of_a_shard_without_sidecar_is_a_sample_without_labels_not_a_stop(skewed, caplog):
    """Shards built before the sidecar are weighed by their JSON members, read before the first draw: a flipped
    bit there (a CRC mismatch) or a member that is not JSON gives that sample no labels (the smallest weight) and
    a warning naming it; when drawn, the sample is skipped and recorded like any bad one."""
    _, without = skewed
    first, second = sorted(without.glob("train-*.tar"))[:2]
    flipped = flip_bits_in_place(first, METADATA_MEMBER, 0)
    change_one(second, METADATA_MEMBER, lambda _: b"not json", fix_checksums=True)
    schedule = _schedule(without)
    owned = schedule.owned(0)
    labels = dict(zip([shard.keys[i] for shard, indices in owned for i in indices], schedule.owned_labels(owned)))
    assert labels[flipped] == [] and labels[keys_of(second)[0]] == []
    assert sum(1 for value in labels.values() if value) == len(labels) - 2  # every other sample keeps its labels
    assert f"sample {flipped} member json: checksum" in caplog.text and "its JSON member" in caplog.text
    stream = iter(build_loader(_config(without, max_skip_fraction=1.0), "train", train=True))
    batches = [next(stream) for _ in range(12)]
    skipped = {record["key"] for batch in batches for record in batch["skipped"]}
    assert skipped <= {flipped, keys_of(second)[0]}


def _sidecar_of_first_shard(folder: Path) -> tuple[Path, list[str]]:
    shard = read_manifest(folder)["splits"]["train"]["shards"][0]
    path = folder / shard["labels"]
    return path, path.read_text().splitlines(keepends=True)


@pytest.mark.parametrize("damage,message", [
    (lambda lines: lines[:-1], "3 label rows for the 4 samples of the shard's index"),
    (lambda lines: [lines[1], lines[0], *lines[2:]], ":1: row of sample "),
    (lambda lines: ["other_000" + lines[0][lines[0].index("\t"):], *lines[1:]], ":1: row of sample 'other_000'"),
    (lambda lines: [lines[0].replace("\t", " "), *lines[1:]], ":1: "),
])
def test_a_sidecar_that_disagrees_with_the_index_is_one_line_naming_it(skewed, damage, message):
    folder = skewed[0]
    path, lines = _sidecar_of_first_shard(folder)
    path.write_text("".join(damage(lines)))
    schedule = _schedule(folder)
    with pytest.raises(ValueError) as caught:
        schedule.owned_labels(schedule.owned(0))
    text = str(caught.value)
    assert "\n" not in text and text.startswith(str(path)) and message in text, text
    assert any(f"{path.stem}: labels sidecar unusable: {path.name}" in p for p in verify(folder)["problems"])


def test_verify_reports_a_sidecar_whose_labels_differ_from_the_jsons(built, tmp_path):
    copy = Path(shutil.copytree(built, tmp_path / "shards"))
    assert verify(copy)["ok"]
    path, lines = _sidecar_of_first_shard(copy)
    key, labels = parse_labels(lines[1], path.name)[0]
    wrong = ["class_03" if labels != ["class_03"] else "class_00"]
    path.write_text("".join([lines[0], labels_text([(key, wrong)]), *lines[2:]]))
    result = verify(copy, deep=False)
    assert not result["ok"] and result["problems"] == [
        f"{path.name}: sample {key}: labels {wrong} differ from its JSON's {labels}"]
    path.unlink()
    assert verify(copy)["problems"] == [f"{path.stem}: labels sidecar unusable: [Errno 2] No such file or directory: "
                                        f"'{path}'"]


def _dali_keys(root: Path, batches: int) -> list[list[str]]:
    """The keys of the first balanced training batches of DALI's external source (serial, in this process)."""
    from avmae.data.config import AugmentConfig
    from avmae.data.dali.source import CheckedSamples

    source = CheckedSamples(load_spec(root, "train"), _config(root), train=True, rank=0, world=1, start_batch=0,
                            augment=AugmentConfig())
    keys = []
    for _ in range(batches):
        source()
        keys.append([meta["key"] for meta in source.pending.pop(source.serial)[0]])
    return keys


@pytest.mark.dali
def test_dali_source_weighs_by_the_sidecar_as_the_torch_loader_does(skewed):
    """DALI's external source builds the same schedule, labels sidecars included: with sidecars whose labels were
    moved to other classes (keys unchanged), both backends draw the same batches, and not those of the JSON labels."""
    pytest.importorskip("nvidia.dali")
    with_sidecar, without = skewed
    moved = {"class_00": "class_01", "class_01": "class_02", "class_02": "class_03", "class_03": "class_00"}
    for path in with_sidecar.glob(f"*{LABELS_SUFFIX}"):
        rows = parse_labels(path.read_text(), path.name)
        path.write_text(labels_text([(key, [moved[label] for label in labels]) for key, labels in rows]))
    ours = _dali_keys(with_sidecar, 6)
    loader = build_loader(_config(with_sidecar), "train", train=True)
    assert ours == [batch["key"] for batch, _ in zip(loader, range(6))]
    assert ours != _dali_keys(without, 6)
