"""Stop requests from SLURM: ``--signal=USR1@120`` ahead of the time limit (checkpoint, then requeue) and SIGTERM
on preemption or scancel (checkpoint, then leave). Ranks agree on stopping at the same step: the handler only
notes the signal, and the ranks compare notes every ``guard.signal_check_every`` steps and at log and checkpoint
steps (one small all_reduce, a host sync under NCCL, so not at every step). SLURM's warning comes minutes ahead
(``--signal=USR1@120``), far more than a few steps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

from avmae.collectives import all_reduce_values
from avmae.files import write_text_atomically


class StopRequest:
    def __init__(self):
        self.signal: int | None = None
        for signum in (signal.SIGUSR1, signal.SIGTERM):
            signal.signal(signum, self._handle)

    def _handle(self, signum, _frame) -> None:
        self.signal = signum

    def agreed(self) -> int:
        """The signal any rank received (0 if none), the same on every rank; a collective: call it on every rank."""
        return int(all_reduce_values([float(self.signal or 0)], op="max")[0])


def requeue() -> bool:
    """Ask SLURM to requeue this job (it restarts and resumes from the checkpoint just written)."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    try:
        result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    except OSError:  # no scontrol on this machine
        return False
    return result.returncode == 0


# The run folder's record of the requeues that followed a lost rank: {job id: [SLURM_RESTART_COUNT at each]}.
LOST_RANK_REQUEUES = "lost_rank_requeues.json"


def requeue_after_lost_rank(limit: int, workdir: Path) -> str:
    """Requeue this SLURM job after a rank or node was lost, unless a lost rank requeued it ``limit`` times already
    (a rank that dies at every start would otherwise loop); what happened, for the stop line. Every surviving rank
    asks: the first request requeues the job (SLURM then ends this one), the others find it requeued already.

    Only these requeues count, not SLURM_RESTART_COUNT: that counts the job's own requeues at each time limit too
    (SIGUSR1), so a long run that had used three time limits would end at its first lost node. The run folder keeps,
    per job, the restart numbers at which a lost rank requeued it; the surviving ranks all add the same number, so
    a loss counts once however many ranks report it."""
    job = os.environ.get("SLURM_JOB_ID", "")
    restart = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    path = workdir / LOST_RANK_REQUEUES
    try:
        recorded = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet, or damaged: counting starts again rather than refusing
        recorded = {}
    if not isinstance(recorded, dict):
        recorded = {}
    earlier = {r for r in recorded.get(job, []) if isinstance(r, int)} - {restart}
    if len(earlier) >= limit:
        return (f"not requeued: a lost rank requeued the job {len(earlier)} times already (guard.max_requeues "
                f"{limit}); scontrol requeue {job or 'JOBID'} resumes it")
    recorded[job] = sorted(earlier | {restart})
    try:  # before asking: SLURM may end this process as soon as the job is requeued
        write_text_atomically(path, json.dumps(recorded))
    except OSError:
        pass  # a full disk must not keep the job from coming back; the count is then one short
    if requeue():
        return (f"requeued to resume from the newest complete checkpoint (lost-rank restart {len(earlier) + 1} of "
                f"at most {limit})")
    return "SLURM did not requeue the job (another rank may have already)"
