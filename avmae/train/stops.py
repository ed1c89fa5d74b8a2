"""Why a run ended before its last step: one error type whose message is the one line a person reads
(``avmae-train`` prints it and exits 1). Raised for divergence past its budget, a checkpoint that could not be
written, a loader past its skip budget and a collective that failed because another rank died or hung."""

from __future__ import annotations


class JobStopped(RuntimeError):
    """The run cannot go on; ``str(error)`` names the step and the cause. Nothing that looks finished was written."""
