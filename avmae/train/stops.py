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


# A failed collective, told by its type: torch raises DistError or a subclass of it (DistBackendError from NCCL's
# watchdog on a timeout or a remote error, DistNetworkError for a lost connection, DistStoreError when the rendezvous
# store, held by rank 0, is gone); torch/distributed/__init__.py exports them.
# gloo raises a plain RuntimeError instead, so its wording is kept as the fallback: "[.../gloo/transport/tcp/pair.cc]
# Connection closed by peer" when a rank died, "Timed out waiting 3000ms for recv operation to complete" when one
# hung (both measured with torch 2.11 on two CPU processes).
COLLECTIVE_FAILURES = ("gloo/transport", "Connection closed by peer", "Connection reset by peer", "NCCL error",
                       "Timed out waiting")


def _chain(error: BaseException) -> list[BaseException]:
    """The error and the errors it was raised from or during (DeepSpeed and the loaders re-raise), each once."""
    seen: list[BaseException] = []
    while error is not None and all(error is not other for other in seen) and len(seen) < 16:
        seen.append(error)
        error = error.__cause__ or error.__context__
    return seen


def is_collective_failure(error: BaseException) -> bool:
    """Whether ``error`` (or one it came from) says a collective failed: another rank died or hung."""
    import torch.distributed as dist

    for link in _chain(error):
        if isinstance(link, dist.DistError):
            return True
        if isinstance(link, RuntimeError) and any(mark in str(link) for mark in COLLECTIVE_FAILURES):
            return True
    return False
