"""A logging step's record in ``metrics.jsonl`` (``log.every`` steps, the last, and every skipped step): the loss parts
as the mean over ranks, the sample counts (and the skipped samples' records), the learning rate, the speed, and the
largest host memory of any rank. Device values are read here, at the boundary, and nowhere in between."""

from __future__ import annotations

import resource
from typing import Any

import torch

from avmae import collectives
from avmae.train.divergence import NonFiniteGuard
from avmae.train.logging import RunLogger
from avmae.train.samples import SampleLedger
from avmae.train.step import StepResult
from avmae.train.throughput import Throughput


def host_peak_rss_gb() -> float:
    """The largest resident-memory high-water mark of any rank's process (getrusage's ru_maxrss, KiB on Linux),
    for logging: on CPU what a rank's model, optimizer and activations need; on GPU their host side (the model is
    built there first). The rank's DataLoader workers are processes of their own and are not counted."""
    return collectives.all_reduce_values([resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20], "max")[0]


def mean_over_ranks(values: dict[str, torch.Tensor]) -> dict[str, float]:
    """Losses (0-d device tensors) as the mean over ranks (what the global batch saw), read on the host: for
    logging steps only (one collective, one host read)."""
    if not values:
        return {}
    names = sorted(values)
    total = collectives.all_reduce(torch.stack([values[n].float().reshape(()) for n in names]), "sum")
    return {n: v / collectives.world_size() for n, v in zip(names, total.tolist())}


def loss_values(result: StepResult, guard: NonFiniteGuard, skipped: bool) -> dict[str, Any]:
    """The step's loss parts as the mean over ranks, and for a skipped step its cause and counts: every skipped step
    has its record, whatever log.every says."""
    values: dict[str, Any] = mean_over_ranks(result.parts)
    if skipped:
        values.update({"skipped_step": guard.last_cause, "nonfinite_in_row": guard.in_row,
                       "nonfinite_total": guard.total})
    return values


class StepLog:
    """Writes a logging step's record; its collectives run on every rank, in the same order."""

    def __init__(self, logger: RunLogger, ledger: SampleLedger, throughput: Throughput):
        self.logger, self.ledger, self.throughput = logger, ledger, throughput

    def __call__(self, step: int, result: StepResult, guard: NonFiniteGuard, skipped: bool, lr: float) -> None:
        values = {**loss_values(result, guard, skipped), **self.ledger.log_values(), "lr": lr,
                  **self.throughput.values(step), "host_peak_rss_gb": host_peak_rss_gb()}
        self.logger.step(step, values)
