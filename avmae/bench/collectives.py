"""All-reduce and all-gather bandwidth between the processes of one torchrun, over the backend training uses
(NCCL on GPUs, gloo on CPUs: avmae/distributed.py). Run as
``torchrun --nproc_per_node=N -m avmae.bench.collectives OUT.json [MEBIBYTES] [ITERATIONS]``; rank 0 writes OUT.json.

Bandwidths as nccl-tests reports them (nccl-tests doc/PERFORMANCE.md): algorithm bandwidth = bytes / time, and bus
bandwidth = algorithm bandwidth x 2(n-1)/n for all-reduce, x (n-1)/n for all-gather (the bytes each link carries
in a ring), which is what compares with the hardware's link speed. ZeRO-2 all-reduces (reduce-scatters) gradients
and all-gathers updated parameters, hence these two.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from avmae import collectives
from avmae.distributed import setup_distributed


def _timed(op, iterations: int, device: torch.device) -> float:
    """Seconds per call, after two warm-up calls (NCCL builds its rings and channels on the first)."""
    for _ in range(2):
        op()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    collectives.barrier()
    started = time.perf_counter()
    for _ in range(iterations):
        op()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / iterations


def measure(mebibytes: float, iterations: int) -> dict:
    info = setup_distributed()
    world, device = info.world, info.device
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # gloo has no bf16 sum
    elements = int(mebibytes * 2**20) // torch.tensor([], dtype=dtype).element_size() // world * world
    size = elements * torch.tensor([], dtype=dtype).element_size()
    full = torch.ones(elements, dtype=dtype, device=device)
    part = torch.ones(elements // world, dtype=dtype, device=device)
    # The in-place forms: the buffers already live on the group's device, so nothing but the collective is timed.
    reduce_s = _timed(lambda: collectives.all_reduce_(full), iterations, device)
    gather_s = _timed(lambda: collectives.all_gather_into_(full, part), iterations, device)
    result = {"backend": info.backend, "processes": world, "device": str(device), "dtype": str(dtype).split(".")[-1],
              "bytes": size, "iterations": iterations}
    for name, seconds, factor in (("all_reduce", reduce_s, 2 * (world - 1) / world),
                                  ("all_gather", gather_s, (world - 1) / world)):
        result[name] = {"seconds": seconds, "algbw_gb_s": size / seconds / 1e9,
                        "busbw_gb_s": size / seconds / 1e9 * factor}
    collectives.barrier()
    dist.destroy_process_group()
    return result if info.is_main else {}


def main(argv: list[str]) -> int:
    out = Path(argv[0])
    result = measure(float(argv[1]) if len(argv) > 1 else 64.0, int(argv[2]) if len(argv) > 2 else 10)
    if result:
        out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
