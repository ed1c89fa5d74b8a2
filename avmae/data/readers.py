"""What both backends' readers start from: the split's shards opened with their indexes and checksum sidecars, and
a training reader's good rows and skip log from the batch a run starts (or resumes) at."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from avmae.data.config import DataConfig
from avmae.data.faults import SkipLog, good_rows
from avmae.data.schedule import Draw, TrainSchedule
from avmae.data.spec import DataSpec
from avmae.data.tar_reader import IndexedShard
from avmae.shard.writing.manifest import MANIFEST_FILE
from avmae.shard_files import join, read_many


def open_shards(spec: DataSpec) -> list[IndexedShard]:
    """The split's shards with their indexes and checksum sidecars, fetched at once (concurrently when remote). Not
    their labels sidecars: only class-balanced training needs them, and each reader fetches those of its own shards
    (TrainSchedule.owned_labels)."""
    try:
        indexes = read_many([s.idx for s in spec.shards])
        sidecars = dict(zip((s.crc for s in spec.shards if s.crc), read_many([s.crc for s in spec.shards if s.crc])))
    except FileNotFoundError as err:  # a folder copied without them, or a file deleted: say which, in one line
        missing = err.filename or str(err)
        raise ValueError(f"{missing}: not found, but {join(spec.root, MANIFEST_FILE)} lists it; copy the shard "
                         "folder whole (each NAME.tar with its .idx and .crc) or rebuild it") from None
    shards = [IndexedShard(s.tar, s.idx, s.crc, idx_text=text, crc_text=sidecars[s.crc] if s.crc else None,
                           labels=s.labels)  # bytes: IndexedShard decodes them, naming a file that is not UTF-8
              for s, text in zip(spec.shards, indexes)]
    for shard, listed in zip(shards, spec.shards):
        if len(shard) != listed.samples:
            raise ValueError(f"{shard.tar}: its index lists {len(shard)} samples, the manifest {listed.samples}")
    return shards


def reader_skips(config: DataConfig, rank: int, reader: int, before: int = 0) -> SkipLog:
    return SkipLog(f"rank {rank} reader {reader}", config.max_skip_fraction, config.max_skip_run, before)


def reader_rows(schedule: TrainSchedule, reader: int, start_batch: int, drawn: int | None,
                read: Callable[[Draw], Any]) -> tuple[Iterator[Any], SkipLog]:
    """A training reader's good rows (``read`` of each good draw) from its first batch at or after the rank's batch
    ``start_batch``, and the log of its draws and skips, which counts from the draws it skipped unread (``drawn``,
    as a checkpoint recorded them: TrainSchedule.reader_start): both backends start a reader here."""
    start = schedule.reader_start(reader, start_batch, drawn)
    skips = reader_skips(schedule.config, schedule.rank, reader, before=start)
    return good_rows(schedule.draws(reader, skip=start), read, skips), skips
