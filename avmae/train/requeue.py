"""What a SLURM job does once its run has ended short of the last step: after the time-limit warning (SIGUSR1) it
asks to be requeued and resumes from the checkpoint just written; after a lost rank (a collective failed) the surviving
ranks requeue it, at most ``guard.max_requeues`` times (avmae/train/signals.py counts them)."""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

from avmae.distributed import DistInfo
from avmae.recipe.config import GuardConfig
from avmae.train.logging import RunLogger
from avmae.train.signals import requeue, requeue_after_lost_rank
from avmae.train.stops import Stop


@dataclass(frozen=True)
class Requeue:
    workdir: Path
    rank: int
    is_main: bool
    after_lost_rank_limit: int  # guard.max_requeues under SLURM; 0 elsewhere: no requeue

    @classmethod
    def of(cls, guard: GuardConfig, dist: DistInfo, workdir: Path) -> Requeue:
        limit = guard.max_requeues if dist.launcher == "slurm" else 0
        return cls(workdir, dist.rank, dist.is_main, limit)

    def after_signal(self, signum: int, logger: RunLogger) -> None:
        """The time limit is near (SIGUSR1): come back and resume; rank 0 asks and logs the answer."""
        if signum == signal.SIGUSR1 and self.is_main:
            logger.message(f"requeued: {requeue()}")

    def after_stop(self, stop: Stop) -> str:
        """What this rank did about ``stop``, for a line after it ("" when it does nothing): a stop by a lost rank
        requeues the job."""
        if not (stop.group_broken and self.after_lost_rank_limit):
            return ""
        return f"rank {self.rank}: {requeue_after_lost_rank(self.after_lost_rank_limit, self.workdir)}"
