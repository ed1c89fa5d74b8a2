"""The evaluation order both backends follow: rank r reads the contiguous range [N r / R, N (r + 1) / R) of the
global sample order (DALI's split), every rank yields the same number of batches, and every row that is not a good
sample of the range (the padding past its end, and bad samples, which keep their place) carries the data of the
rank's last good sample with ``valid`` False. So each sample counts exactly once and collectives never wait on a
rank that ran out.

A shard's reader (for a remote shard an open stream: a running ``pipe:`` command, a connection, a read-ahead
buffer) is closed as soon as the order moves on to another shard, so one is open at a time, not one per shard
passed."""

from __future__ import annotations

import bisect
import itertools
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from avmae.data.faults import SampleError, SkipBudgetExceeded, SkipLog
from avmae.data.tar_reader import IndexedShard

Row = TypeVar("Row")


def eval_range(total: int, rank: int, world: int) -> tuple[int, int]:
    """DALI's shard of a reader: [floor(N r / R), floor(N (r + 1) / R))."""
    return total * rank // world, total * (rank + 1) // world


def eval_batches(total: int, world: int, batch_size: int) -> int:
    """Batches every rank yields in evaluation: enough for the largest rank's range."""
    largest = max(eval_range(total, r, world)[1] - eval_range(total, r, world)[0] for r in range(world))
    return max(1, math.ceil(largest / batch_size))


class EvalOrder(Generic[Row]):
    """Batch ``number`` of one rank's evaluation: ``batch(number)`` -> (rows, valid, records of its bad samples).
    ``read(shard, index)`` makes a row or raises SampleError; ``reader`` names the rank's reader in the log.

    Its skip log has no budget: evaluation counts every sample of the split and reports those it could not score
    (eval/coverage.py), so the training run's data.max_skip_fraction / max_skip_run would only stop it before that
    count (a tar cut in half of a large split). A rank whose every sample is bad stops (``filler``)."""

    def __init__(self, shards: list[IndexedShard], rank: int, world: int, batch_size: int,
                 read: Callable[[IndexedShard, int], Row], reader: int = 0):
        self.shards, self.rank, self.batch_size, self.read = shards, rank, batch_size, read
        self.skips = SkipLog(f"rank {rank} reader {reader}", max_skip_fraction=1.0, max_skip_run=sys.maxsize)
        self.starts = list(itertools.accumulate((len(shard) for shard in shards), initial=0))
        total = self.starts[-1]
        self.first, self.end = eval_range(total, rank, world)
        if self.end == self.first:
            raise RuntimeError(f"rank {rank} has no evaluation sample: {total} samples for {world} ranks; "
                               "use fewer ranks")
        self.batches = eval_batches(total, world, batch_size)
        self._filler: Row | None = None
        self._current: IndexedShard | None = None  # the shard being read; closed when the order moves on

    def _read(self, index: int) -> Row:
        shard, at = self.locate(index)
        if shard is not self._current:
            self.close()
            self._current = shard
        return self.read(shard, at)

    def close(self) -> None:
        """Close the reader of the shard being read (reopened, lazily, if the order reads on)."""
        if self._current is not None:
            self._current.close()
            self._current = None

    def locate(self, index: int) -> tuple[IndexedShard, int]:
        number = bisect.bisect_right(self.starts, index) - 1
        return self.shards[number], index - self.starts[number]

    def filler(self) -> Row:
        """The rank's last good sample (read without recording: its own place records it)."""
        if self._filler is None:
            for index in range(self.end - 1, self.first - 1, -1):
                shard, at = self.locate(index)
                try:
                    self._filler = self.read(shard, at)
                    break
                except SampleError:
                    continue
                finally:
                    if shard is not self._current:  # read out of order: do not leave its stream open
                        shard.close()
            else:
                shards = sorted({Path(self.locate(i)[0].tar).name for i in range(self.first, self.end)})
                listed = ", ".join(shards[:3]) + (f" and {len(shards) - 3} more" if len(shards) > 3 else "")
                raise SkipBudgetExceeded(f"rank {self.rank}: every one of the {self.end - self.first} samples of its "
                                         f"evaluation range is bad (in {listed}; see the warnings above)")
        return self._filler

    def batch(self, number: int) -> tuple[list[Row], list[bool], list[dict[str, Any]]]:
        rows: list[Row | None] = []
        for index in range(self.first + number * self.batch_size, self.first + (number + 1) * self.batch_size):
            if index >= self.end:
                rows.append(None)
                continue
            try:
                rows.append(self._read(index))
                self.skips.used()
            except SampleError as err:
                rows.append(None)
                self.skips.skip(err)
        valid = [row is not None for row in rows]
        return [row if row is not None else self.filler() for row in rows], valid, self.skips.take()
