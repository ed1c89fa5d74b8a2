"""DALI's training feed in worker processes (avmae/data/dali/feed.py) gives exactly the serial feed's batches: the
same samples in the same order, the same skip records, from the start and from a resumed batch; and the dense
batches both feeds hand DALI (avmae/data/dali/batch.py) carry every member unchanged: the same pixels out of the
decoder, the same log-mel bits, boxes, flips, serials and notes."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from avmae.data.config import AugmentConfig, DataConfig
from avmae.data.dali.batch import HEADER, DenseBatch, batch_types, dense_batch, pad_jpeg, unpack_payload
from avmae.data.dali.feed import reader_slots
from avmae.data.spec import load_spec
from avmae.shard.checking.jpeg_structure import jpeg_size
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


def _serial(spec, config: DataConfig, start_batch: int, batches: int) -> list[tuple[list[str], list[dict], list[int]]]:
    """The rank's batches as the serial feed makes them, in this process: (keys, skip records, drawn) each."""
    from avmae.data.dali.loader import CheckedSamples

    source = CheckedSamples(spec, config, train=True, rank=0, world=1, start_batch=start_batch,
                            augment=AugmentConfig())
    out = []
    for _ in range(batches):
        source()
        metadata, _, skipped, drawn = source.pending.pop(source.serial)
        out.append(([m["key"] for m in metadata], skipped, drawn))
    return out


def test_slots_read_in_the_serial_order():
    assert reader_slots(3, 0) == [0, 1, 2]
    assert reader_slots(3, 4) == [1, 2, 0]  # batches 4, 5, 6 come from readers 1, 2, 0


@pytest.mark.parametrize("start_batch,balanced", [(0, False), (3, False), (1, True)])
def test_worker_feed_gives_the_serial_batches(shards, start_batch, balanced):
    pytest.importorskip("nvidia.dali")
    from avmae.data.dali.loader import DaliLoader

    config = _config(shards, balanced_sampling=balanced)
    spec = load_spec(shards, "train")
    loader = DaliLoader(spec, config, train=True, rank=0, world=1, device_id=None, start_batch=start_batch,
                        augment=AugmentConfig())
    assert loader.feeds and loader.source is None  # the worker path, not the serial one
    stream = iter(loader)
    got = [next(stream) for _ in range(10)]
    expected = _serial(spec, config, start_batch, 10)
    assert [b["key"] for b in got] == [keys for keys, _, _ in expected]
    assert [b["skipped"] for b in got] == [skipped for _, skipped, _ in expected]
    assert [b["drawn"] for b in got] == [drawn for _, _, drawn in expected]  # each reader's draws, bad ones too
    assert all(b["valid"].all() for b in got)
    if not balanced and start_batch == 0:
        assert any(skipped for _, skipped, _ in expected)  # the damaged sample was met, and recorded on its batch


def test_feed_workers_outlive_slurms_usr1(shards):
    """SLURM's --signal=USR1 reaches every process of the job, DALI's feed workers too: they must keep feeding, and
    the training process keep its own reaction (its handler, installed after the loader, stops at a step)."""
    pytest.importorskip("nvidia.dali")
    import faulthandler
    import os
    import signal

    import psutil

    from avmae.data.dali.loader import DaliLoader

    config = _config(shards)
    spec = load_spec(shards, "train")
    before = {child.pid for child in psutil.Process().children()}
    loader = DaliLoader(spec, config, train=True, rank=0, world=1, device_id=None, augment=AugmentConfig())
    stream = iter(loader)
    first = [next(stream)["key"] for _ in range(2)]
    workers = [child for child in psutil.Process().children() if child.pid not in before]
    assert len(workers) >= len(loader.feeds) == 2
    for worker in workers:
        os.kill(worker.pid, signal.SIGUSR1)
    # Before the fix the workers died of it and the next batches never came: end the suite loudly, not hang it.
    faulthandler.dump_traceback_later(120, exit=True)
    try:
        later = [next(stream)["key"] for _ in range(8)]
    finally:
        faulthandler.cancel_dump_traceback_later()
    assert all(worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE for worker in workers)
    expected = _serial(spec, config, 0, 10)
    assert first + later == [keys for keys, _, _ in expected]
    assert signal.SIGUSR1 not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # this process hears it as before


def _decoded(jpegs: list[bytes | np.ndarray]) -> list[np.ndarray]:
    """The CPU decoder's RGB pixels of each JPEG (the graph's decoder, one batch)."""
    from nvidia.dali import fn, pipeline_def, types

    batch = [np.frombuffer(jpeg, dtype=np.uint8) for jpeg in jpegs]

    @pipeline_def(batch_size=len(batch), num_threads=1, device_id=None)
    def pipeline():
        return fn.decoders.image(fn.external_source(source=lambda: batch, batch=True, dtype=types.UINT8),
                                 device="cpu", output_type=types.RGB)

    pipe = pipeline()
    pipe.build()
    return [np.array(image) for image in pipe.run()[0]]


@pytest.mark.parametrize("pad", [4, 5, 65537, 65538, 65540, 70000, 140000])
def test_a_padded_jpeg_is_its_length_and_decodes_to_the_same_pixels(shards, pad):
    """COM segments of any total length (one segment holds at most 65537 bytes; a remainder under 4 cannot be one)."""
    pytest.importorskip("nvidia.dali")
    spec = load_spec(shards, "train")
    sample = _rows(spec, _config(shards, workers=0))[0][0]
    jpeg = sample.members[sample.frames[0]]
    out = np.zeros(len(jpeg) + pad, dtype=np.uint8)
    pad_jpeg(jpeg, out)
    assert jpeg_size(out.tobytes()) == sample.frame_size  # the checker's marker walk reads it as a whole JPEG
    assert out.tobytes().endswith(jpeg[2:])
    padded, plain = _decoded([out, jpeg])
    assert np.array_equal(padded, plain)


def _rows(spec, config: DataConfig):
    from avmae.data.dali.source import CheckedSamples

    source = CheckedSamples(spec, config, train=True, rank=0, world=1, start_batch=0, augment=AugmentConfig())
    return source.reader_rows(0)[0]


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_dense_batches_carry_every_member_unchanged(shards, dtype):
    """A real batch through a DALI pipeline built from DenseBatch, as the loader's graph takes it: one row per frame,
    the decoded frames equal those of the stored JPEGs, sample by sample and in order, each frame row's header its
    sample's crop box, flip, serial and log-mel shape, and the payload gives back the log-mel (float16 as stored, or
    float32) to the bit and the notes byte for byte."""
    pytest.importorskip("nvidia.dali")
    import torch
    from nvidia.dali import fn, pipeline_def

    spec = load_spec(shards, "train")
    config = _config(shards, workers=0, batch_size=3)
    rows = [(sample, box, i == 1) for i, (sample, box, _) in enumerate(_rows(spec, config))]  # one flipped row
    for sample, _, _ in rows:
        sample.logmel = sample.logmel.astype(dtype)
    features = {**spec.features, "logmel_dtype": dtype}
    notes = [b'["a"]', b"", b'["longest note"]']
    count = len(rows[0][0].frames)
    arrays = dense_batch(rows, 7, notes)
    assert [a.shape[0] for a in arrays] == [3 * count] * 3  # every output: one row per frame

    @pipeline_def(batch_size=3 * count, num_threads=1, device_id=None)
    def pipeline():
        batch = DenseBatch(fn.external_source(source=lambda: arrays, num_outputs=len(arrays), batch=True,
                                              dtype=batch_types()))
        return (fn.decoders.image(batch.jpegs, device="cpu"), *batch.box(), batch.flip, batch.payload, batch.header)

    pipe = pipeline()
    pipe.build()
    images, start, end, flip, payload, header = [[np.array(sample) for sample in output] for output in pipe.run()]
    stored = [sample.members[name] for sample, _, _ in rows for name in sample.frames]
    assert len(images) == len(stored) == 3 * count
    assert all(np.array_equal(a, b) for a, b in zip(images, _decoded(stored)))
    for k in range(3 * count):
        sample, (top, left, h, w), flipped = rows[k // count]
        assert start[k].tolist() == [top, left] and end[k].tolist() == [top + h, left + w]
        assert int(flip[k]) == flipped
        assert header[k].tolist()[HEADER.index("serial"):] == [7, *sample.logmel.shape]
    logmel, got_notes = unpack_payload(torch.from_numpy(np.stack(payload)), torch.from_numpy(np.stack(header)),
                                       count, features)
    assert logmel.shape == (3, *rows[0][0].logmel.shape) and logmel.dtype == getattr(torch, dtype)
    for i, (sample, _, _) in enumerate(rows):
        assert logmel[i].numpy().tobytes() == sample.logmel.tobytes()
    assert got_notes == notes
