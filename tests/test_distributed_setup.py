"""setup_distributed twice in one process (the CLIs' main functions run in-process in tests and notebooks): the second
run must not reuse DeepSpeed's copy of the first run's world group, which died with it."""

from __future__ import annotations

import torch
import torch.distributed as dist

from avmae.distributed import setup_distributed


def test_a_second_run_in_one_process_gets_a_live_world_group(monkeypatch):
    from deepspeed.utils import groups

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AVMAE_DEVICE", "cpu")
    try:
        setup_distributed(timeout_s=60)
        first = groups._WORLD_GROUP
        dist.destroy_process_group()  # as avmae-eval ends
        setup_distributed(timeout_s=60)
        assert groups._WORLD_GROUP is not first
        total = torch.ones(1)
        dist.all_reduce(total, group=groups._WORLD_GROUP)  # refused with "Group ... is not registered" on a dead copy
        assert total.item() == 1.0
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        groups._WORLD_GROUP = None
