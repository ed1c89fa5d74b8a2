"""Stop requests from SLURM: ``--signal=USR1@120`` ahead of the time limit (checkpoint, then requeue) and SIGTERM
on preemption or scancel (checkpoint, then leave). Ranks agree on stopping at the same step."""

from __future__ import annotations

import os
import signal
import subprocess

import torch
import torch.distributed as dist


class StopRequest:
    def __init__(self):
        self.signal: int | None = None
        for signum in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.signal = signum

    def agreed(self) -> int:
        """The signal any rank received (0 if none), the same on every rank; a collective: call it on every rank."""
        flag = torch.tensor([self.signal or 0], dtype=torch.int64)
        if dist.is_initialized() and dist.get_backend() == "nccl":
            flag = flag.cuda()
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())


def requeue() -> bool:
    """Ask SLURM to requeue this job (it restarts and resumes from the checkpoint just written)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    return result.returncode == 0
