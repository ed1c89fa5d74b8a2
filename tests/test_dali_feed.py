"""DALI's training feed in worker processes (avmae/data/dali_feed.py) gives exactly the serial feed's batches: the
same samples in the same order, the same skip records, from the start and from a resumed batch."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from avmae.data.config import AugmentConfig, DataConfig
from avmae.data.dali_feed import reader_slots
from avmae.data.spec import load_spec
from tests.faults.damage import flip_bits_in_place
from tests.helpers import build_shards

pytestmark = pytest.mark.dali


@pytest.fixture(scope="module")
def shards(synth_corpus, tmp_path_factory) -> Path:
    """The tiny shards, one sample's frame damaged (its skip record must ride on the right batch)."""
    clean = build_shards(synth_corpus, tmp_path_factory.mktemp("feed") / "clean", val_fraction=0)
    damaged = tmp_path_factory.mktemp("feed") / "shards"
    shutil.copytree(clean, damaged)
    flip_bits_in_place(sorted(damaged.glob("train-*.tar"))[1], "01.jpg")
    return damaged


def _config(shards: Path, **overrides) -> DataConfig:
    return DataConfig(**{**dict(shards=str(shards), batch_size=2, workers=2, num_frames=4, crop_size=64,
                                shuffle_buffer=2), **overrides})


def _serial(spec, config: DataConfig, start_batch: int, batches: int) -> list[tuple[list[str], list[dict]]]:
    """The rank's batches as the serial feed makes them, in this process: (keys, skip records) each."""
    from avmae.data.dali_loader import CheckedSamples

    source = CheckedSamples(spec, config, train=True, rank=0, world=1, start_batch=start_batch,
                            augment=AugmentConfig())
    out = []
    for _ in range(batches):
        source()
        metadata, _, skipped = source.pending.pop(source.serial)
        out.append(([m["key"] for m in metadata], skipped))
    return out


def test_slots_read_in_the_serial_order():
    assert reader_slots(3, 0) == [0, 1, 2]
    assert reader_slots(3, 4) == [1, 2, 0]  # batches 4, 5, 6 come from readers 1, 2, 0


@pytest.mark.parametrize("start_batch,balanced", [(0, False), (3, False), (1, True)])
def test_worker_feed_gives_the_serial_batches(shards, start_batch, balanced):
    pytest.importorskip("nvidia.dali")
    from avmae.data.dali_loader import DaliLoader

    config = _config(shards, balanced_sampling=balanced)
    spec = load_spec(shards, "train")
    loader = DaliLoader(spec, config, train=True, rank=0, world=1, device_id=None, start_batch=start_batch,
                        augment=AugmentConfig())
    assert loader.feeds and loader.source is None  # the worker path, not the serial one
    stream = iter(loader)
    got = [next(stream) for _ in range(10)]
    expected = _serial(spec, config, start_batch, 10)
    assert [b["key"] for b in got] == [keys for keys, _ in expected]
    assert [b["skipped"] for b in got] == [skipped for _, skipped in expected]
    assert all(b["valid"].all() for b in got)
    if not balanced and start_batch == 0:
        assert any(skipped for _, skipped in expected)  # the damaged sample was met, and recorded on its batch
