"""The DALI loader's graph is sized by operators, not frames (avmae/data/dali/loader.py): a batch's frames are the rows
of one DALI batch, so the graph holds one decoder, one resize and one flip per feed, whatever the frame count; its
evaluation batches equal the torch backend's bit for bit on a CPU; and the GPU form of the same graph (``mixed``
decoder with its nvJPEG settings) is accepted by DALI's operator schemas here, where only its build needs a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from avmae.data.config import AugmentConfig, DataConfig
from avmae.data.spec import load_spec
from tests.helpers import build_shards

pytestmark = pytest.mark.dali


@pytest.fixture(scope="module")
def shards(synth_corpus, tmp_path_factory) -> Path:
    """The tiny shards (8 frames of short side 72), every clip in split train."""
    return build_shards(synth_corpus, tmp_path_factory.mktemp("graph") / "shards", val_fraction=0)


def _config(shards: Path, **overrides) -> DataConfig:
    return DataConfig(**{**dict(shards=str(shards), eval_split="train", batch_size=2, workers=0, num_frames=4,
                                crop_size=64, shuffle_buffer=2), **overrides})


def _operators(shards: Path, frames: int, workers: int):
    from avmae.bench.dali_graph import graph_operators
    from avmae.data.dali.loader import DaliLoader

    loader = DaliLoader(load_spec(shards, "train"), _config(shards, num_frames=frames, workers=workers), train=True,
                        rank=0, world=1, device_id=None, augment=AugmentConfig())
    batch = next(iter(loader))
    assert batch["video"].shape == (2, frames, 3, 64, 64)
    return graph_operators(loader.pipe), max(1, len(loader.feeds))


@pytest.mark.parametrize("workers", [0, 2])
def test_one_decoder_per_feed_whatever_the_frame_count(shards, workers):
    pytest.importorskip("nvidia.dali")
    two, feeds = _operators(shards, 2, workers)
    eight, _ = _operators(shards, 8, workers)
    assert two == eight  # every operator, by schema: the frame count adds none
    assert feeds == max(1, workers)
    # Per feed (the serial source, or each worker's source): one decoder, one resize, one flip, one transpose.
    assert [eight[name] for name in ("decoders__Image", "Resize", "Flip", "Transpose")] == [feeds] * 4
    assert sum(eight.values()) == 12 * feeds  # 3 source outputs, cast and 4 subscripts of the header, and the above


def test_graph_operators_reads_a_serialized_graph():
    pytest.importorskip("nvidia.dali")
    import numpy as np
    from nvidia.dali import fn, pipeline_def, types

    from avmae.bench.dali_graph import graph_operators

    @pipeline_def(batch_size=2, num_threads=1, device_id=None)
    def pipeline():
        jpegs = fn.external_source(source=lambda: [np.zeros(4, np.uint8)] * 2, batch=True, dtype=types.UINT8)
        return fn.decoders.image(jpegs), fn.decoders.image(jpegs), fn.cast(jpegs, dtype=types.FLOAT)

    pipe = pipeline()
    pipe.build()
    assert graph_operators(pipe) == {"ExternalSource": 1, "decoders__Image": 2, "Cast": 1}


@pytest.mark.parametrize("frames", [2, 8])
def test_evaluation_batches_equal_the_torch_backends(shards, frames):
    """Both backends decode with libjpeg-turbo's fancy upsampling and centre-crop the stored frames: the same bytes."""
    pytest.importorskip("nvidia.dali")
    from avmae.data.loader import build_loader

    batches = {backend: list(build_loader(_config(shards, backend=backend, num_frames=frames), "train", train=False))
               for backend in ("torch", "dali")}
    assert len(batches["dali"]) == len(batches["torch"]) == 6  # 12 samples / batch 2
    for ours, theirs in zip(batches["torch"], batches["dali"]):
        assert ours["key"] == theirs["key"]
        assert theirs["video"].shape == (2, frames, 3, 64, 64)
        assert torch.equal(ours["video"], theirs["video"]) and torch.equal(ours["audio"], theirs["audio"])


def test_the_gpu_graph_is_the_same_graph_with_nvjpeg_settings(shards):
    """The loader's graph with ``device="mixed"``, defined on a CPU: DALI checks every argument against its operator's
    schema when the graph is defined (names, types), so the nvJPEG settings are ones DALI 2.4 takes; one decoder, its
    output on the GPU and every operator after it too. Building it needs CUDA, which this machine lacks: a clean
    error. What only a GPU run shows: nvJPEG's pixels against the CPU's, its memory, its rate."""
    pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    from avmae.data.dali.batch import DenseBatch, batch_types
    from avmae.data.dali.loader import _graph, decoder_settings

    spec, config = load_spec(shards, "train"), _config(shards)
    settings = decoder_settings("mixed", 256)
    assert settings["jpeg_fancy_upsampling"] is True
    assert settings["device_memory_padding"] == settings["host_memory_padding"] == 3 * 256 * 456  # a 16:9 frame
    assert set(decoder_settings("cpu", 256)) == {"output_type"}  # the CPU decoder upsamples as libjpeg-turbo always

    @pipeline_def(batch_size=2 * 4, num_threads=1, device_id=0)
    def pipeline():
        batch = DenseBatch(fn.external_source(source=lambda: None, num_outputs=3, batch=True, dtype=batch_types()))
        return _graph(spec, config, batch, train=True, device="mixed")

    pipe = pipeline()  # defines the graph: schema checks, no CUDA yet
    video = pipe._graph_out[0]
    chain, node = [], video
    while node.source.inputs:  # the operators from the video back to the source, along their data inputs
        chain.append((node.source.name.split("_")[2], node.device))
        node = node.source.inputs[0]
    assert chain == [("Transpose", "gpu"), ("Flip", "gpu"), ("Resize", "gpu"), ("Image", "gpu")]
    if torch.cuda.is_available():
        pipe.build()  # on a GPU machine it builds
    else:
        with pytest.raises(RuntimeError, match="CUDA"):
            pipe.build()
