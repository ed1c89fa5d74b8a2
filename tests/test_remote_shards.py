"""Shards read from where a cluster keeps them: an S3-compatible server (moto), a GCS emulator, an HTTP server and a
pipe: command, all on loopback, over the same tiny shards as a local folder. Evaluation equals the local one;
training streams each shard whole, covers every sample once per epoch and resumes exactly; damage is a recorded skip
naming the URL; verify and inspect agree with the local folder; failures are one line naming the URL."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from avmae.data.config import DataConfig
from avmae.data.faults import SampleError
from avmae.data.loader import build_loader
from avmae.shard.checking.inspect import find_sample, summary
from avmae.shard.checking.verify import verify
from avmae.shard_files import join
from avmae.storage import StorageError
from tests.faults.damage import cut_in_half, flip_bits_in_place, keys_of
from tests.helpers import build_shards, metrics, run_config, torchrun
from tests.servers import apply_env, gcs_server, http_server, s3_server

BUCKET = "avmae-shards"


@pytest.fixture(scope="module")
def shards(synth_corpus, tmp_path_factory) -> Path:
    """12 samples in 6 shards of split train, and a copy with one flipped log-mel byte and one cut tar."""
    folder = build_shards(synth_corpus, tmp_path_factory.mktemp("remote") / "shards", val_fraction=0)
    damaged = folder.parent / "damaged"
    shutil.copytree(folder, damaged)
    return folder


@pytest.fixture(scope="module")
def damaged(shards) -> tuple[Path, str, list[str]]:
    """The copy: shard 2's first sample has a flipped log-mel byte, shard 4 is cut in half."""
    folder = shards.parent / "damaged"
    flipped = flip_bits_in_place(folder / "train-000002.tar", "logmel.npy")
    cut = cut_in_half(folder / "train-000004.tar")
    return folder, flipped, cut


def uploaded(protocol: str, shards: Path, damaged: tuple) -> str:
    """Both folders put into a new bucket of the server the environment points at; the bucket's URL."""
    import fsspec

    fs = fsspec.filesystem(protocol, skip_instance_cache=True)
    fs.mkdir(BUCKET)
    for folder in (shards, damaged[0]):
        fs.put(f"{folder}/", f"{BUCKET}/{folder.name}/", recursive=True)
    return f"{protocol}://{BUCKET}"


@pytest.fixture(scope="module")
def s3(shards, damaged):
    """moto's S3 with both folders uploaded; the environment stays applied for the module."""
    with s3_server() as env, pytest.MonkeyPatch.context() as patch:
        apply_env(env, patch)
        yield uploaded("s3", shards, damaged)


@pytest.fixture(scope="module")
def gs(shards, damaged):
    """The GCS emulator with both folders uploaded; the environment stays applied for the module."""
    with gcs_server() as env, pytest.MonkeyPatch.context() as patch:
        apply_env(env, patch)
        yield uploaded("gs", shards, damaged)


@pytest.fixture(scope="module")
def http(shards):
    with http_server(shards.parent) as url:
        yield url


@pytest.fixture(params=["http", "s3", "gs", "pipe"])
def remote(request, shards) -> str:
    """Each remote form of a shard root's parent folder: ``remote + "/" + name`` or ``remote.format(name)``."""
    if request.param == "pipe":
        return f"pipe:cat {shards.parent}/{{}}"
    return request.getfixturevalue(request.param) + "/{}"


def at(remote: str, name: str) -> str:
    return remote.replace("{}", name + "/{}") if remote.startswith("pipe:") else remote.replace("{}", name)


def config(shards: str | Path, **overrides) -> DataConfig:
    base = dict(shards=str(shards), eval_split="train", batch_size=2, workers=0, num_frames=4, crop_size=64,
                shuffle_buffer=3, backend="torch")
    return DataConfig(**{**base, **overrides})


def take(loader, count: int) -> list[dict]:
    stream = iter(loader)
    return [next(stream) for _ in range(count)]


def test_remote_evaluation_equals_the_local_one(shards, remote):
    local = list(build_loader(config(shards), "train", train=False))
    far = list(build_loader(config(at(remote, "shards"), workers=2), "train", train=False))
    assert len(far) == len(local) == 6
    for ours, theirs in zip(far, local):
        assert ours["key"] == theirs["key"]
        assert torch.equal(ours["video"], theirs["video"]) and torch.equal(ours["audio"], theirs["audio"])
        assert ours["valid"].all() and ours["skipped"] == []


@pytest.mark.parametrize("where", ["s3", "gs", "http"])
def test_remote_training_covers_each_sample_once_per_epoch_and_resumes_exactly(shards, where, request):
    root = request.getfixturevalue(where) + "/shards"
    everything = sorted(keys for tar in sorted(shards.glob("*.tar")) for keys in keys_of(tar))
    one = [key for b in take(build_loader(config(root), "train", train=True), 12) for key in b["key"]]
    assert sorted(one[:12]) == everything and sorted(one[12:]) == everything  # each epoch: every sample once
    assert one[:12] != one[12:]  # reshuffled per epoch
    ranks = []
    for rank in range(2):  # 2 ranks x 2 workers: each reader streams its own whole shards
        batches = take(build_loader(config(root, workers=2), "train", train=True, rank=rank, world=2), 6)
        assert all(torch.isfinite(b["audio"]).all() and b["skipped"] == [] for b in batches)
        ranks.append({key for b in batches for key in b["key"]})
    assert not ranks[0] & ranks[1] and sorted(ranks[0] | ranks[1]) == everything
    straight = take(build_loader(config(root), "train", train=True), 9)
    resumed = take(build_loader(config(root), "train", train=True, start_batch=5), 4)
    for ours, theirs in zip(resumed, straight[5:]):
        assert ours["key"] == theirs["key"] and torch.equal(ours["video"], theirs["video"])


def test_class_balanced_sampling_streams_remote_shards(http, shards):
    """Each epoch draws as many samples as the reader owns, with replacement; streamed, each drawn sample is read
    once per draw from its shard's stream, and resume replays the same draws."""
    root = f"{http}/shards"
    straight = take(build_loader(config(root, balanced_sampling=True), "train", train=True), 12)
    local = take(build_loader(config(shards, balanced_sampling=True), "train", train=True), 12)
    drawn = [[key for b in batches[epoch * 6:(epoch + 1) * 6] for key in b["key"]] for batches in (straight, local)
             for epoch in range(2)]
    assert all(len(keys) == 12 for keys in drawn)  # 12 owned samples: 12 draws (6 batches) per epoch
    assert sorted(drawn[0]) == sorted(drawn[2]) and sorted(drawn[1]) == sorted(drawn[3])  # the local epochs' draws
    assert len(set(drawn[0])) < 12 and sorted(drawn[0]) != sorted(drawn[1])  # with replacement, redrawn per epoch
    resumed = take(build_loader(config(root, balanced_sampling=True), "train", train=True, start_batch=3), 5)
    assert [b["key"] for b in resumed] == [b["key"] for b in straight[3:8]]
    assert all(torch.equal(r["video"], s["video"]) for r, s in zip(resumed, straight[3:]))


@pytest.mark.parametrize("workers", [0, 2])
def test_dali_reads_remote_shards_as_the_torch_backend_does(s3, workers):
    """Serial and with DALI's worker processes (data/dali/feed.py, one per training reader, streaming in the worker)."""
    pytest.importorskip("nvidia.dali")
    root = s3 + "/shards"
    for train in (False, True):
        count = 6 if not train else 4
        make = lambda backend: build_loader(config(root, backend=backend, workers=workers), "train",  # noqa: E731
                                            train=train)
        dali, on_torch = take(make("dali"), count), take(make("torch"), count)
        assert [b["key"] for b in dali] == [b["key"] for b in on_torch]
        assert all(torch.allclose(d["audio"], w["audio"], atol=1e-3) for d, w in zip(dali, on_torch))


def test_damage_in_remote_shards_is_a_recorded_skip(damaged, s3, gs, http):
    folder, flipped, cut = damaged
    for root in (f"{s3}/damaged", f"{gs}/damaged", f"{http}/damaged", f"pipe:cat {folder}/{{}}"):
        batches = take(build_loader(config(root, max_skip_fraction=0.5), "train", train=True), 10)
        records = {(r["key"], r["reason"]): r for b in batches for r in b["skipped"]}
        flip = records[(flipped, "checksum")]
        assert flip["shard"] == join(root, "train-000002.tar")
        assert flip["member"] == "logmel.npy" and "recorded at build time" in flip["detail"]
        assert {key for key, reason in records if reason == "truncated"} == set(cut)
        scored = list(build_loader(config(root), "train", train=False))
        invalid = [(key, ok) for b in scored for key, ok in zip(b["key"], b["valid"].tolist()) if not ok]
        assert len(invalid) == 1 + len(cut)
        assert sorted(r["key"] for b in scored for r in b["skipped"]) == sorted([flipped, *cut])


def test_verify_and_inspect_over_http_s3_and_gs_equal_the_local_folder(shards, damaged, s3, gs, http):
    for name, folder in (("shards", shards), ("damaged", damaged[0])):
        local = verify(folder)
        for root in (f"{s3}/{name}", f"{gs}/{name}", f"{http}/{name}"):
            assert verify(root) == local, root
            assert {k: v for k, v in summary(root).items() if k != "folder"} == \
                {k: v for k, v in summary(folder).items() if k != "folder"}
            assert find_sample(root, 3) == find_sample(folder, 3)
    assert verify(shards)["ok"] and not verify(damaged[0])["ok"]
    assert [d["key"] for d in verify(damaged[0])["damaged"]] == [damaged[1]]


def test_unusable_remote_roots_are_one_line_naming_the_url(s3, gs, http, shards):
    with pytest.raises(FileNotFoundError, match=rf"{http}/nowhere/manifest.json not found"):
        build_loader(config(f"{http}/nowhere"), "train", train=False)
    with pytest.raises(OSError, match=rf"{s3}/nowhere/manifest.json"):
        build_loader(config(f"{s3}/nowhere"), "train", train=False)
    with pytest.raises(StorageError, match="needs {} where a file's name goes"):
        build_loader(config(f"pipe:cat {shards}/manifest.json"), "train", train=False)
    with pytest.raises(OSError, match="s3://no-such-bucket-here/x/manifest.json"):
        build_loader(config("s3://no-such-bucket-here/x"), "train", train=False)
    with pytest.raises(OSError, match="gs://no-such-bucket-here/x/manifest.json"):
        build_loader(config("gs://no-such-bucket-here/x"), "train", train=False)
    with pytest.raises(OSError, match=r"http://127\.0\.0\.1:9/x/manifest.json"):
        build_loader(config("http://127.0.0.1:9/x"), "train", train=False)


def test_a_sample_error_names_the_remote_shard(http):
    loader = build_loader(config(f"{http}/shards"), "train", train=False)
    shard = loader._source.dataset.shards[0]
    with pytest.raises(SampleError, match=rf"{http}/shards/train-000000.tar: sample .* missing_member"):
        shard.read(0, ["99.jpg"])


@pytest.mark.slow
def test_two_rank_training_from_s3_stopped_and_resumed_equals_an_uninterrupted_run_from_a_pipe(s3, shards, tmp_path):
    """The stated guarantee for training from remote roots (docs/remote_data.md): the stream depends on the
    config, the rank and the batch number, not on where the bytes come from. 20 steps on 2 ranks over S3, stopped
    after step 10 with a checkpoint and resumed, give the losses of 20 uninterrupted steps over ``pipe:cat`` of the
    local folder, step for step; every step once, finite."""
    def run(folder: Path, root: str) -> dict[int, float]:
        folder.mkdir()
        return run_config(folder, root, optim={"steps": 20, "lr": 2e-3, "warmup_steps": 2},
                          checkpoint={"every": 10, "keep": 1}, data={"workers": 1})

    over_s3 = run(tmp_path / "s3", f"{s3}/shards")
    assert torchrun(over_s3, "stop_after=10")["step"] == 10
    assert torchrun(over_s3) == {"step": 20, "finished": True, "signal": 0, "best": None}
    over_pipe = run(tmp_path / "pipe", f"pipe:cat {shards}/{{}}")
    assert torchrun(over_pipe)["step"] == 20
    resumed = {m["step"]: m["loss"] for m in metrics(tmp_path / "s3" / "run") if "loss" in m}
    straight = {m["step"]: m["loss"] for m in metrics(tmp_path / "pipe" / "run") if "loss" in m}
    assert sorted(resumed) == sorted(straight) == list(range(1, 21))
    assert all(math.isfinite(loss) for loss in resumed.values())
    for step in range(1, 21):
        assert resumed[step] == pytest.approx(straight[step], rel=1e-4, abs=1e-5), step
