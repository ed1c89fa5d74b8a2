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


def requeue_after_lost_rank(limit: int) -> str:
    """Requeue this SLURM job after a rank or node was lost, unless it restarted ``limit`` times already (a rank
    that dies at every start would otherwise loop); what happened, for the stop line. Every surviving rank asks:
    the first request requeues the job (SLURM then ends this one), the others find it requeued already."""
    restarts = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    if restarts >= limit:
        return (f"not requeued: the job restarted {restarts} times already (guard.max_requeues {limit}); "
                f"scontrol requeue {os.environ.get('SLURM_JOB_ID', 'JOBID')} resumes it")
    if requeue():
        return f"requeued to resume from the newest complete checkpoint (restart {restarts + 1} of at most {limit})"
    return "SLURM did not requeue the job (another rank may have already)"
