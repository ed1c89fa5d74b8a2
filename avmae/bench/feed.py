"""The DALI training feed on its own: samples/s of the external source with no decode, and the CPU it takes from the
process that runs the pipeline (on a GPU node, the training process).

A pipeline made of the external source and what the training graph does before its decoder (the crop box's cast,
the flip flag; data/dali/batch.py) runs the training stream of a shard folder: serially (``workers: 0``, the source in
this process) and in W worker processes (data/dali/feed.py). It ends in the frames' shapes and the payload and header
(log-mels, notes, serial numbers, which the loader takes too), so that the frames' bytes are fed to DALI but not
copied out again: in training the decoder reads them where they are. The process's CPU time (all its threads, DALI's
included) per sample is the cost to the trainer; the workers' CPU time is the price of the feed, paid on other
cores. Reads come from the page cache after the warm-up batches: this
is the rate of the source, not of the storage.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

import psutil

from avmae.data.config import AugmentConfig, DataConfig
from avmae.data.dali.batch import DenseBatch, batch_types
from avmae.data.dali.feed import parallel_outputs, reader_feeds, start_method
from avmae.data.dali.source import CheckedSamples
from avmae.data.host_memory import keep_large_allocations
from avmae.data.spec import load_spec


def _undecoded(batch: DenseBatch) -> list:
    """What the training graph and the loader take from a batch, the frames ended in their shapes (see above)."""
    return [batch.jpegs.shape(), *batch.box(), batch.flip, batch.payload, batch.header]


def _feed_pipeline(spec, config: DataConfig):
    """The external source(s) of the training DaliLoader for ``config``, with nothing after them but _undecoded."""
    from nvidia.dali import fn, pipeline_def

    augment = AugmentConfig()
    feeds = reader_feeds(spec, config, augment, rank=0, world=1, start_batch=0) if config.workers > 0 else []
    workers = {"py_num_workers": len(feeds), "py_start_method": start_method()} if feeds else {}

    @pipeline_def(batch_size=config.batch_size * config.num_frames, num_threads=1, device_id=None,
                  prefetch_queue_depth=2, **workers)
    def pipeline():
        if not feeds:
            source = CheckedSamples(spec, config, train=True, rank=0, world=1, start_batch=0, augment=augment)
            batch = DenseBatch(fn.external_source(source=source, num_outputs=len(batch_types()), batch=True,
                                                  parallel=False, dtype=batch_types()))
            return tuple(_undecoded(batch))
        batches = [DenseBatch(parallel_outputs(feed, batch_types())) for feed in feeds]
        return tuple(output for batch in batches for output in _undecoded(batch))

    pipe = pipeline()
    pipe.build()
    return pipe, max(1, len(feeds))


def _cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _window(pipe, iterations: int, batches_per_iteration: int, batch_size: int, frames: int) -> dict[str, float]:
    me = psutil.Process()
    workers = [child for child in me.children(recursive=True)]
    started, own = time.perf_counter(), _cpu_seconds(me)
    theirs = sum(_cpu_seconds(w) for w in workers)
    for _ in range(iterations):
        pipe.run()
    seconds = time.perf_counter() - started
    samples = iterations * batches_per_iteration * batch_size
    return {"samples_per_s": samples / seconds, "frames_per_s": samples * frames / seconds,
            "trainer_cpu_ms_per_sample": 1e3 * (_cpu_seconds(me) - own) / samples,
            "worker_cpu_ms_per_sample": 1e3 * (sum(_cpu_seconds(w) for w in workers) - theirs) / samples}


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3), "max": round(max(values), 3)}


def bench_feed(data: Path, split: str, workers: list[int], *, batch_size: int, num_frames: int, iterations: int,
               repeats: int, warmup: int = 3) -> dict[str, Any]:
    keep_large_allocations()  # as the training process's Loader does for DALI (the serial feed packs batches here)
    spec = load_spec(data, split)
    results: dict[str, Any] = {"data": str(data), "split": split, "samples": spec.samples, "batch_size": batch_size,
                               "frames_per_sample": num_frames, "stored_short_side": spec.features["short_side"],
                               "cpu_count": os.cpu_count(), "repeats": repeats, "runs": []}
    for count in workers:
        config = DataConfig(shards=str(data), batch_size=batch_size, workers=count, num_frames=num_frames,
                            crop_size=224, shuffle_buffer=16)
        pipe, per_iteration = _feed_pipeline(spec, config)
        for _ in range(warmup):  # pipeline build, worker start, first reads
            pipe.run()
        windows = [_window(pipe, iterations, per_iteration, batch_size, num_frames) for _ in range(repeats)]
        del pipe
        results["runs"].append({"feed": "serial" if count == 0 else "worker processes", "workers": count,
                                **{name: _spread([w[name] for w in windows]) for name in windows[0]}})
    return results
