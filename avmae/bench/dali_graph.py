"""The size of the DALI loader's graph: its operators (decoders among them), the threads of the process and of its
feed workers, their resident memory, and the pipeline's build time, for a shard folder, a frame count and a number of
feed slots (``data.workers``).

Every DALI operator instance holds its own resources: the image decoder one thread pool of the pipeline's
``num_threads`` and, with ``device="mixed"``, nvJPEG's pinned host and device scratch per thread (DALI's
``fn.decoders.image`` documentation, ``device_memory_padding`` / ``host_memory_padding``). So the graph's size is
counted in operators; on a CPU the threads and memory show the same growth, while a GPU's pinned and device memory
can only be read on a GPU.

Run: ``python -m avmae.bench.dali_graph --data SHARDS --frames 4 --frames 16 --workers 0 --workers 2``; it prints
one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psutil


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[at]
        value |= (byte & 0x7F) << shift
        at += 1
        shift += 7
        if byte < 0x80:
            return value, at


def _fields(data: bytes):
    """(field number, wire type, value) of one protobuf message, its length-delimited values as bytes."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
        elif wire == 2:
            length, at = _varint(data, at)
            value, at = data[at:at + length], at + length
        elif wire == 1:
            value, at = data[at:at + 8], at + 8
        elif wire == 5:
            value, at = data[at:at + 4], at + 4
        else:
            raise ValueError(f"a serialized DALI pipeline with protobuf wire type {wire}: not a PipelineDef")
        yield number, wire, value


# Field numbers of DALI's dali/pipeline/dali.proto (NVIDIA/DALI): PipelineDef.op = 5, OpDef.name = 1 (the schema).
_PIPELINE_OPS, _OP_SCHEMA = 5, 1


def graph_operators(pipe) -> Counter:
    """How many operator instances of each schema (``decoders__Image``, ``Resize``, ...) the built pipeline holds,
    read from its serialized graph (``Pipeline.serialize``), the public form of the graph DALI runs."""
    counts: Counter = Counter()
    for number, wire, op in _fields(pipe.serialize()):
        if number == _PIPELINE_OPS and wire == 2:
            counts.update(value.decode() for field, kind, value in _fields(op) if field == _OP_SCHEMA and kind == 2)
    return counts


def _tree(process: psutil.Process) -> list[psutil.Process]:
    return [process, *process.children(recursive=True)]


def measure_graph(data: Path, split: str, *, frames: int, workers: int, batch_size: int, train: bool) -> dict[str, Any]:
    """Build one DaliLoader (CPU) and report its graph's size and cost, then take one batch."""
    from avmae.data.config import AugmentConfig, DataConfig
    from avmae.data.dali.loader import DaliLoader
    from avmae.data.spec import load_spec

    spec = load_spec(data, split)
    config = DataConfig(shards=str(data), backend="dali", batch_size=batch_size, workers=workers, num_frames=frames,
                        crop_size=224, shuffle_buffer=16)
    me = psutil.Process()
    threads, rss = me.num_threads(), me.memory_info().rss
    started = time.perf_counter()
    loader = DaliLoader(spec, config, train=train, rank=0, world=1, device_id=None,
                        augment=AugmentConfig() if train else None)
    built = time.perf_counter() - started
    batch = next(iter(loader))
    first = time.perf_counter() - started - built
    tree = _tree(me)
    operators = graph_operators(loader.pipe)
    result = {"frames": frames, "workers": workers, "train": train, "batch_size": batch_size,
              "operators": sum(operators.values()), "decoders": operators["decoders__Image"],
              "by_schema": dict(sorted(operators.items())), "loader_s": round(built, 3),
              **{f"{name}_s": round(seconds, 3) for name, seconds in getattr(loader, "seconds", {}).items()},
              "first_batch_s": round(first, 3),
              "threads_added": me.num_threads() - threads,
              "threads_of_workers": sum(p.num_threads() for p in tree[1:]),
              "rss_added_mb": round((me.memory_info().rss - rss) / 2**20, 1),
              "video": list(batch["video"].shape)}
    del loader
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m avmae.bench.dali_graph", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="a shard folder (avmae-shard build)")
    parser.add_argument("--split", default="train")
    parser.add_argument("--frames", type=int, action="append", help="frames per sample (repeatable; default 4, 16)")
    parser.add_argument("--workers", type=int, action="append", help="feed slots, data.workers (default 0, 2)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval", action="store_true", help="the evaluation graph (serial feed) instead of training")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # one run, in this process
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(measure_graph(args.data, args.split, frames=args.frames[0], workers=args.workers[0],
                                       batch_size=args.batch_size, train=not args.eval)))
        return 0
    runs = []
    for frames in args.frames or [4, 16]:
        for workers in args.workers or [0, 2]:
            # Each run in a process of its own: a process's thread and memory counts include what earlier
            # pipelines left behind (DALI keeps some thread pools for the process's life).
            command = [sys.executable, "-m", "avmae.bench.dali_graph", "--one", "--data", str(args.data), "--split",
                       args.split, "--frames", str(frames), "--workers", str(workers), "--batch-size",
                       str(args.batch_size), *(["--eval"] if args.eval else [])]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode:
                raise SystemExit(f"{' '.join(command)} failed: {done.stderr.strip().splitlines()[-1:]}")
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(json.dumps({"data": str(args.data), "cpu_count": os.cpu_count(), "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
