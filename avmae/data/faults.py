"""Bad samples as data: the error a reader raises for one sample, the record it leaves, and the per-reader log that
counts draws and skips, warns without flooding, and stops a reader whose skips pass the budget.

Every batch of both backends carries ``batch["skipped"]``: the records of the samples its reader skipped since its
previous batch (training) or of the batch's invalid samples (evaluation). A record is
``{"shard", "key", "member", "reason", "detail"}``; the reasons are the ``REASONS`` below, the same on both backends.
A training batch also carries ``batch["drawn"]``, ``[reader, draws]``: the reader that made it and its draws so far
(``SkipLog.position``), which the trainer records in each checkpoint so that a resumed run starts every reader
exactly after the draws it made, bad ones included.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

log = logging.getLogger(__name__)

REASONS = ("checksum", "decode", "not_finite", "bad_shape", "truncated", "missing_member", "index_mismatch")
FULL_WARNINGS_PER_SHARD = 3  # after these, a shard's skips are logged as counts at 4, 8, 16, ... only


class SampleError(ValueError):
    """A sample that cannot be used. The message is one line naming its shard, key, member and what is wrong."""

    def __init__(self, shard: str, key: str, member: str | None, reason: str, detail: str):
        assert reason in REASONS, reason
        where = f"{shard}: sample {key}" + (f" member {member}" if member else "")
        super().__init__(f"{where}: {reason}: {detail}")
        self.shard, self.key, self.member, self.reason, self.detail = shard, key, member, reason, detail

    def record(self) -> dict[str, Any]:
        return {"shard": self.shard, "key": self.key, "member": self.member, "reason": self.reason,
                "detail": self.detail}


class SkipBudgetExceeded(RuntimeError):
    """A reader skipped more samples than ``data.max_skip_fraction`` / ``data.max_skip_run`` allow."""


class SkipLog:
    """One reader's draws and skips. ``skip`` records a bad sample (and raises past the budget), ``used`` a good
    one; ``take`` hands over the records gathered since the last call (they ride on the next batch).

    The share budget is judged once the reader has skipped more than ``max_skip_run`` samples in all: a few early
    faults are no evidence of a rate, and the run budget already stops a reader that finds nothing good."""

    def __init__(self, name: str, max_skip_fraction: float, max_skip_run: int, before: int = 0):
        self.name, self.max_fraction, self.max_run = name, max_skip_fraction, max_skip_run
        self.draws = self.skipped = self.run = 0  # this process's: the budgets judge what it has seen
        self.before = before  # the reader's draws before this process (a resumed run skipped them unread)
        self.per_shard: Counter[str] = Counter()
        self.per_reason: Counter[str] = Counter()
        self._pending: list[dict[str, Any]] = []

    def used(self) -> None:
        self.draws += 1
        self.run = 0

    def skip(self, error: SampleError) -> None:
        self.draws += 1
        self.skipped += 1
        self.run += 1
        self.per_shard[error.shard] += 1
        self.per_reason[error.reason] += 1
        self._pending.append(error.record())
        count = self.per_shard[error.shard]
        if count <= FULL_WARNINGS_PER_SHARD:
            log.warning("%s: skipping %s", self.name, error)
        elif count & (count - 1) == 0:  # powers of two: a bounded number of lines however many go bad
            log.warning("%s: %d samples of %s skipped so far (%d of %d draws of this reader)", self.name, count,
                        error.shard, self.skipped, self.draws)
        self._check()

    def _check(self) -> None:
        over_run = self.run > self.max_run
        over_share = self.skipped > self.max_run and self.skipped > self.max_fraction * self.draws
        if not (over_run or over_share):
            return
        worst = ", ".join(f"{shard} ({n})" for shard, n in self.per_shard.most_common(3))
        reasons = ", ".join(f"{reason} {n}" for reason, n in self.per_reason.most_common())
        limit = (f"{self.run} bad samples in a row (data.max_skip_run={self.max_run})" if over_run else
                 f"{self.skipped} of {self.draws} draws bad (data.max_skip_fraction={self.max_fraction})")
        raise SkipBudgetExceeded(f"{self.name}: {limit}; most skips in {worst}; reasons: {reasons}")

    @property
    def position(self) -> int:
        """The reader's draws since the run began, good and bad: where a run resumed after this batch starts it
        (TrainSchedule.reader_start), which batches times the batch size would miss once a draw was bad."""
        return self.before + self.draws

    def take(self) -> list[dict[str, Any]]:
        records, self._pending = self._pending, []
        return records


def good_rows(draws: Iterable[Any], read: Callable[[Any], Any], skips: SkipLog) -> Iterator[Any]:
    """``read(draw)`` for each draw, skipping (and recording in ``skips``) the draws whose sample is bad: the
    training loop of both backends, so both count draws and skips the same way."""
    for draw in draws:
        try:
            row = read(draw)
        except SampleError as err:
            skips.skip(err)
            continue
        skips.used()
        yield row
