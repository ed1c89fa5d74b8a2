"""Why a run ended before its last step: a ``Stop``, the typed value whose message is the one line a person reads
(``avmae-train`` prints it and exits with its code). Met where its cause is: divergence past its budget
(avmae/train/divergence.py), a checkpoint that could not be written (avmae/train/checkpoint.py), a loader past its skip
budget (avmae/train/data_feed.py), an export that could not be written (avmae/train/exports.py), and a collective
that failed because another rank died or hung (``collective_failures_stop`` here, around the loop). Each travels up to
``avmae-train`` inside a ``JobStopped``, which carries nothing but the ``Stop``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

StopKind = Literal["diverged", "checkpoint", "loader", "export", "collective"]


@dataclass(frozen=True)
class Stop:
    """The run cannot go on; nothing that looks finished was written."""

    kind: StopKind
    step: int  # the step the run was at when it stopped
    message: str  # one line naming the step (or the checkpoint or export) and the cause
    exit_code: int = 1

    @property
    def group_broken(self) -> bool:
        """A collective failed, so the process group cannot be torn down (its teardown would wait on the dead or
        hung rank): the process must leave at once."""
        return self.kind == "collective"


class JobStopped(RuntimeError):
    """A ``Stop`` on its way up to ``avmae-train``; ``str(error)`` is its message."""

    def __init__(self, stop: Stop):
        super().__init__(stop.message)
        self.stop = stop


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


@contextmanager
def collective_failures_stop(rank: int, timeout_s: float, running_step: Callable[[], int],
                             newest_checkpoint: Callable[[], str]) -> Iterator[None]:
    """A failed collective inside the block (a rank died or hung) ends the job as one ``Stop`` naming the step
    running then (``running_step()``) and the newest complete checkpoint; every other error passes as it is."""
    try:
        yield
    except JobStopped:
        raise
    except RuntimeError as err:
        if not is_collective_failure(err):
            raise
        step = running_step()
        raise JobStopped(Stop("collective", step, (
            f"rank {rank}: a collective failed at step {step} ({str(err).splitlines()[0]}); another rank died or "
            f"hung (guard.collective_timeout_s {timeout_s:g}); newest complete checkpoint: "
            f"{newest_checkpoint() or 'none'}"))) from err
