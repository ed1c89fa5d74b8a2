"""Why a run ended before its last step: one error type whose message is the one line a person reads
(``avmae-train`` prints it and exits 1). Raised for divergence past its budget, a checkpoint that could not be
written, a loader past its skip budget and a collective that failed because another rank died or hung."""

from __future__ import annotations


class JobStopped(RuntimeError):
    """The run cannot go on; ``str(error)`` names the step and the cause. Nothing that looks finished was written.
    ``group_broken``: a collective failed, so the process group cannot be torn down (its teardown would wait on the
    dead or hung rank): the process must leave at once. ``requeues``: how many times the job may requeue itself
    after such a failure (guard.max_requeues under SLURM; 0 elsewhere)."""

    group_broken = False
    requeues = 0


# How a failed collective reads when the backend does not raise torch's DistError: gloo raises a plain RuntimeError
# ("Timed out waiting 5000ms for recv operation", "Connection closed by peer"), as measured with torch 2.11.
COLLECTIVE_FAILURES = ("gloo/transport", "Connection closed by peer", "Connection reset by peer", "NCCL error",
                       "Timed out waiting")


def is_collective_failure(error: BaseException) -> bool:
    import torch.distributed as dist

    return isinstance(error, dist.DistError) or (
        isinstance(error, RuntimeError) and any(mark in str(error) for mark in COLLECTIVE_FAILURES))
