"""Training from remote shards (a URL or pipe: root): each reader streams whole shards front to back.

The rank's schedule (schedule.py) stays a pure function of the config, the rank and the batch number. For remote
shards its epoch order differs from the local one in one way only: the samples of a shard enter the shuffle buffer
in tar order, not shuffled, so that a reader can take a shard as one sequential read (shards still come in a seeded
order, and the buffer of ``data.shuffle_buffer`` samples mixes them). Which sample leaves the buffer when is decided
by the seeded generator alone, before any byte is read; the EpochFetcher below then reads the samples in the order
they entered the buffer, one open stream per shard, and holds the bytes of those not yet drawn: at most a buffer's
worth of samples in memory.

Resume stays exact at the sample: the draws a resumed run already consumed are replayed as positions only, their
samples are marked dropped and never read (a stream skips their bytes), and the shards whose samples were all
consumed are never opened."""

from __future__ import annotations

from avmae.data.tar_reader import IndexedShard, SampleBlock
from avmae.forward_reader import ForwardReader


class EpochFetcher:
    """One reader's samples of one epoch. The epoch order appends (shard, index) to ``pushes`` as samples enter its
    buffer; ``take(push)`` returns the bytes of the ``push``-th of them, reading every earlier push still wanted on
    the way (sequentially: pushes go shard by shard, each in tar order)."""

    def __init__(self) -> None:
        self.pushes: list[tuple[IndexedShard, int]] = []
        self.dropped: set[int] = set()  # pushes a resumed stream consumed before it stopped: never read
        self._held: dict[int, SampleBlock] = {}
        self._next = 0  # the first push not read (or passed over) yet
        self._shard: IndexedShard | None = None
        self._reader: ForwardReader | None = None
        self._last: tuple[int, SampleBlock] | None = None  # (index, block): balanced sampling repeats a sample

    def take(self, push: int) -> SampleBlock:
        while push not in self._held:
            number = self._next
            self._next += 1
            if number in self.dropped:
                self.dropped.discard(number)
                continue
            shard, index = self.pushes[number]
            self._held[number] = self._read(shard, index)
        return self._held.pop(push)

    def _read(self, shard: IndexedShard, index: int) -> SampleBlock:
        if shard is not self._shard:
            self.close()
            self._shard, self._reader = shard, ForwardReader(shard.tar)
        if self._last is not None and self._last[0] == index:
            return self._last[1]
        start, end = shard.span(index)
        block = SampleBlock(start, self._reader.read(start, end))  # short where the tar ends: "truncated" later
        self._last = (index, block)
        return block

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        self._shard = self._reader = self._last = None
