"""Model numbers: parameters by part (closed form, checked against the built model), FLOPs per sample of a
pretraining step, and the measured CPU time of one step (forward + backward)."""

from __future__ import annotations

import time
from typing import Any

import torch

from avmae.models.avmae import AVMAE
from avmae.models.config import ModelConfig
from avmae.models.counts import parameter_counts, pretraining_flops


def bench_model(config: ModelConfig, batch_size: int = 2, steps: int = 2, seed: int = 0) -> dict[str, Any]:
    counts = parameter_counts(config)
    flops = pretraining_flops(config)
    torch.manual_seed(seed)
    model = AVMAE(config)
    built = sum(p.numel() for p in model.parameters())
    audio = torch.randn(batch_size, config.audio.frames, config.audio.mel_bins)
    video = torch.randn(batch_size, config.video.frames, 3, config.video.size, config.video.size)
    times = []
    for _ in range(steps + 1):  # the first step warms up allocators and kernels
        started = time.perf_counter()
        model(audio, video)["loss"].backward()
        model.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    step = min(times[1:]) if len(times) > 1 else times[0]
    return {
        "parameters": {**counts, "built_model": built, "closed_form_equals_model": built == counts["total"]},
        "parameters_millions": round(counts["total"] / 1e6, 3),
        "tokens": flops["tokens"], "visible_tokens": flops["visible_tokens"],
        "gflops_per_sample": {"forward": round(flops["forward"] / 1e9, 3),
                              "forward_backward": round(flops["forward_backward"] / 1e9, 3)},
        "cpu_step": {"batch_size": batch_size, "threads": torch.get_num_threads(), "seconds": round(step, 4),
                     "samples_per_second": round(batch_size / step, 3),
                     "achieved_gflops": round(batch_size * flops["forward_backward"] / step / 1e9, 2)},
    }
