"""Which samples a rank trains on, in which order: the one training schedule both backends follow.

A rank's stream is made of ``readers`` (its DataLoader workers; DALI plays the same readers in one process). Its
n-th batch comes from reader n mod R, as a DataLoader takes batches from its workers in turn. Each reader owns a
disjoint share of the shards (of the samples, when shards are fewer than readers), draws from it endlessly —
an epoch at a time, reshuffled from (seed, rank, reader, epoch), or class-balanced with replacement — and gives
each draw its own augmentation seed. So the stream depends only on the config, the rank and the batch number:
a resumed run skips the batches it already consumed without reading them, and the two backends draw the same
samples with the same crops.

Remote shards (a URL or pipe: root) are streamed: a shard's samples enter the buffer in tar order and the draws
carry the bytes an EpochFetcher read ahead (stream_fetch.py says how that keeps resume exact).

Class-balanced sampling weighs the owned samples by their labels before its first draw. It takes them from each
shard's labels sidecar (format.py): one small file per shard, fetched by the reader for its own shards only (at once,
as a split's indexes are), so a reader starts without reading any sample of a remote shard. Shards built before the
sidecar existed have none: their samples' JSON members are read, as they always were; the labels, hence the
weights and the draws, are the same either way.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from avmae.data.config import DataConfig
from avmae.data.faults import SampleError
from avmae.data.samples import parse_metadata
from avmae.data.stream_fetch import EpochFetcher
from avmae.data.tar_reader import IndexedShard, SampleBlock
from avmae.shard.format import META_LABELS, METADATA_MEMBER, sidecar_labels
from avmae.shard_files import read_many

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Draw:
    shard: IndexedShard
    index: int
    seed: str  # seeds this draw's augmentation, so skipping earlier draws leaves it unchanged
    block: SampleBlock | None = None  # the sample's bytes, read ahead by a streaming reader (remote shards)


def balanced_weights(labels: list[list[str]], counts: dict[str, int]) -> list[float]:
    """Sampling weight of each sample: the sum over its labels of 1 / (that label's count in the training split).
    Samples without labels keep the smallest weight."""
    weights = [sum(1.0 / max(1, counts.get(label, 1)) for label in sample) for sample in labels]
    floor = min((w for w in weights if w > 0), default=1.0)
    return [w if w > 0 else floor for w in weights]


def _json_labels(shard: IndexedShard, indices: list[int]) -> list[list[str]]:
    """The labels of samples ``indices`` from their JSON members (a shard without a labels sidecar); the shard's
    reader is closed once they are read, so one is open at a time. A sample whose JSON member cannot be read gets
    no labels (the smallest weight) and a warning: it is a bad sample, skipped and recorded when it is drawn, not a
    reason to stop before the first step."""
    try:
        return [_sample_labels(shard, index) for index in indices]
    finally:
        shard.close()


def _sample_labels(shard: IndexedShard, index: int) -> list[str]:
    try:
        labels = parse_metadata(shard.read(index, [METADATA_MEMBER])[METADATA_MEMBER])[META_LABELS]
    except SampleError as err:
        log.warning("balanced sampling: no labels for %s", err)
        return []
    except (ValueError, KeyError, TypeError, RecursionError) as err:  # not JSON (or nested too deep), no labels
        log.warning("balanced sampling: no labels for %s: sample %s: its JSON member: %s", shard.tar,
                    shard.keys[index], err)
        return []
    return labels if isinstance(labels, list) else []


class TrainSchedule:
    def __init__(self, shards: list[IndexedShard], config: DataConfig, label_counts: dict[str, int], *,
                 rank: int, world: int, readers: int):
        self.shards, self.config, self.label_counts = shards, config, label_counts
        self.rank, self.world, self.readers = rank, world, max(1, readers)

    def owned(self, reader: int) -> list[tuple[IndexedShard, list[int]]]:
        """(shard, sample indices) a reader owns: whole shards when there are enough, else every slots-th sample."""
        slots, slot = self.world * self.readers, self.rank * self.readers + reader
        if len(self.shards) >= slots:
            return [(shard, list(range(len(shard)))) for shard in self.shards[slot::slots]]
        owned, position = [], 0
        for shard in self.shards:
            indices = [i for i in range(len(shard)) if (position + i) % slots == slot]
            position += len(shard)
            if indices:
                owned.append((shard, indices))
        if not owned:
            total = sum(len(shard) for shard in self.shards)
            raise RuntimeError(f"rank {self.rank} reader {reader} owns no sample: {total} samples for {slots} "
                               "readers; use fewer workers or ranks")
        return owned

    def _epoch_order(self, owned, rng: random.Random, fetcher: EpochFetcher | None = None
                     ) -> Iterator[tuple[int, IndexedShard, int]]:
        """One pass over the owned samples as (push number, shard, index): shards in random order, samples shuffled
        within each shard (streamed, with a ``fetcher``: in tar order), and a small buffer that mixes consecutive
        shards (only (shard, index) pairs wait in it; a streaming fetcher holds their bytes)."""
        buffer: list[tuple[int, IndexedShard, int]] = []
        order = owned[:]
        rng.shuffle(order)
        pushed = 0
        for shard, indices in order:
            indices = indices[:]
            if fetcher is None:
                rng.shuffle(indices)
            for index in indices:
                buffer.append((pushed, shard, index))
                if fetcher is not None:
                    fetcher.pushes.append((shard, index))
                pushed += 1
                if len(buffer) >= self.config.shuffle_buffer:
                    yield buffer.pop(rng.randrange(len(buffer)))
        while buffer:
            yield buffer.pop(rng.randrange(len(buffer)))

    def _balanced_order(self, owned) -> Callable[[random.Random, EpochFetcher | None],
                                                 Iterator[tuple[int, IndexedShard, int]]]:
        """As many draws per epoch as owned samples, with replacement, each sample weighted by the rarity of its
        labels (AudioMAE / CAV-MAE's AudioSet-2M sampler: weight = sum over its labels of 1 / label count).
        Streamed, the epoch draws the same way, then streams each chosen sample as often as it was chosen through the
        shuffle buffer (the same draws per epoch; their order is the buffer's)."""
        population = [(shard, i) for shard, indices in owned for i in indices]
        weights = balanced_weights(self.owned_labels(owned), self.label_counts)

        def order(rng: random.Random, fetcher: EpochFetcher | None) -> Iterator[tuple[int, IndexedShard, int]]:
            if fetcher is None:
                return ((n, shard, i) for n, (shard, i) in
                        enumerate(rng.choices(population, weights=weights, k=len(population))))
            chosen = Counter(rng.choices(range(len(population)), weights=weights, k=len(population)))
            repeated, at = [], 0
            for shard, indices in owned:
                repeated.append((shard, [i for n, i in enumerate(indices, at) for _ in range(chosen[n])]))
                at += len(indices)
            return self._epoch_order(repeated, rng, fetcher)
        return order

    def owned_labels(self, owned) -> list[list[str]]:
        """The labels of the owned samples, in owned order: from the shards' labels sidecars, all fetched at once,
        else (shards built before the sidecar) from the samples' JSON members. A sidecar that does not parse or whose
        rows are not the index's keys in order is a ValueError naming it."""
        sidecars = [shard.labels for shard, _ in owned]
        texts = iter(read_many([sidecar for sidecar in sidecars if sidecar]))
        labels: list[list[str]] = []
        for (shard, indices), sidecar in zip(owned, sidecars):
            if sidecar is None:
                labels += _json_labels(shard, indices)
                continue
            rows = sidecar_labels(next(texts), shard.keys, sidecar)
            labels += [rows[i] for i in indices]
        return labels

    def draws(self, reader: int, skip: int = 0) -> Iterator[Draw]:
        """A reader's endless draws, the first ``skip`` left out without reading anything."""
        owned = self.owned(reader)
        streamed = any(shard.remote for shard, _ in owned)
        if self.config.balanced_sampling:
            order = self._balanced_order(owned)
        else:
            order = lambda rng, fetcher: self._epoch_order(owned, rng, fetcher)  # noqa: E731
        epoch = 0
        while True:
            stream = f"{self.config.seed}:{self.rank}:{reader}:{epoch}"
            fetcher = EpochFetcher() if streamed else None
            try:
                for number, (push, shard, index) in enumerate(order(random.Random(stream), fetcher)):
                    if skip:
                        skip -= 1
                        if fetcher is not None:
                            fetcher.dropped.add(push)
                        continue
                    yield Draw(shard, index, f"{stream}:{number}", fetcher.take(push) if fetcher else None)
            finally:
                if fetcher is not None:
                    fetcher.close()
            epoch += 1

    def reader_start(self, reader: int, start_batch: int, drawn: int | None = None) -> int:
        """How many of a reader's draws precede its first batch at or after the rank's batch ``start_batch``:
        ``drawn``, the count a resumed run's checkpoint recorded for it (each batch took batch_size good draws plus
        the bad ones skipped on the way), else its batches among 0 .. start_batch - 1 times the batch size, which
        is exact only when none of its draws was bad (a checkpoint written before the counts were recorded)."""
        if drawn is not None:
            return drawn
        return len(range(reader, start_batch, self.readers)) * self.config.batch_size
