"""What a logging step says about speed: samples per second since the previous logging step and, on a GPU, the
model FLOPs utilisation of pretraining and the peak device memory. Host-side numbers only (the clock and the
allocator's counters): nothing here waits on the device."""

from __future__ import annotations

import time

import torch

from avmae.models.counts import pretraining_flops
from avmae.recipe.config import RunConfig


class Throughput:
    def __init__(self, config: RunConfig, world: int, device: torch.device, start_step: int):
        self.world, self.device, self.peak_tflops = world, device, config.peak_tflops
        self.samples_per_step = config.data.batch_size * config.grad_accum * world
        self.flops = (pretraining_flops(config.model, global_batch=config.data.batch_size * world)["forward_backward"]
                      if config.task == "pretrain" else None)
        self.last_time, self.last_step = time.perf_counter(), start_step

    def values(self, step: int) -> dict[str, float]:
        """Since the previous call (or the start). The rate of a GPU run is that of the host's launches, which run
        ahead of the device by at most the queue the next boundary's host read drains."""
        now = time.perf_counter()
        rate = self.samples_per_step * (step - self.last_step) / (now - self.last_time)
        self.last_time, self.last_step = now, step
        values = {"samples_per_s": rate}
        if self.device.type == "cuda":
            if self.flops is not None:
                values["mfu"] = rate * self.flops / self.world / (self.peak_tflops * 1e12)
            values["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 2**30
        return values
