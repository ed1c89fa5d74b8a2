"""Write one planned shard: its tar, its DALI index, its sidecars and, last, its part record (the "done" marker).

Files appear by rename only, tar then index then checksum sidecar then labels sidecar (format.py) then part record,
so a build killed at any moment leaves either a finished shard (part record present) or one that the next run redoes
from scratch (video2dataset's stats-file-last rule, docs/reference/libraries.md#a-done-marker-written-last).
"""

from __future__ import annotations

import json
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from avmae.files import publish, write_text_atomically as atomic_write
from avmae.shard.format import METADATA_MEMBER, checksum_text, labels_text, metadata_labels, shard_file_names
from avmae.shard.inputs.media import MediaError
from avmae.shard.params import BuildParams, FeatureParams
from avmae.shard.samples.from_item import make_samples
from avmae.shard.shard_tar import ShardTarWriter, index_text, sha256_file
from avmae.shard.writing.plan import ShardPlan

PARTS_DIR = "_parts"
_DETAIL_LIMIT = 400  # characters of ffmpeg's message kept per failure


def part_path(out: Path, name: str) -> Path:
    return out / PARTS_DIR / f"{name}.json"


def read_part(out: Path, name: str, fingerprint: str) -> dict[str, Any] | None:
    """The finished shard's record, or None if the shard is not done (or was made by another build)."""
    path = part_path(out, name)
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return record if record.get("fingerprint") == fingerprint else None


def _failure(plan: ShardPlan, item, reason: str, detail: str) -> dict[str, Any]:
    return {"id": item.item_id, "source": item.source, "path": item.path, "split": plan.split, "shard": plan.name,
            "labels": list(item.labels), "reason": reason, "detail": detail[:_DETAIL_LIMIT]}


@dataclass
class _ShardTally:
    """What the items of one shard came to, gathered while its tar is written: the part record's counts."""
    failures: list[dict[str, Any]] = field(default_factory=list)
    label_rows: Counter[str] = field(default_factory=Counter)
    label_ok: Counter[str] = field(default_factory=Counter)
    sample_labels: list[tuple[str, list[str]]] = field(default_factory=list)  # (key, labels) in tar order
    logmel_sum: float = 0.0
    logmel_sumsq: float = 0.0
    logmel_count: int = 0
    most_labels: int = 0
    # inputs with samples but no label: single-label loaders skip their samples (checking/sample_rules.py)
    unlabelled: int = 0

    def add_samples(self, item, samples, writer: ShardTarWriter) -> None:
        for sample in samples:
            writer.write(sample.key, sample.members)
            self.sample_labels.append((sample.key, metadata_labels(sample.members[METADATA_MEMBER])))
            self.logmel_sum += sample.logmel_sum
            self.logmel_sumsq += sample.logmel_sumsq
            self.logmel_count += sample.logmel_count
        self.label_ok.update(item.labels)
        self.most_labels = max(self.most_labels, len(item.labels))
        self.unlabelled += not item.labels


def _samples_or_failure(plan: ShardPlan, item, features: FeatureParams, build: BuildParams):
    """The item's samples, or its failure record when the clip (or a bug) is at fault."""
    try:
        return make_samples(item, features, build), None
    except MediaError as err:
        return None, _failure(plan, item, err.reason, err.detail)
    except (OSError, MemoryError):
        # The machine or the storage failed, not the clip: a reset connection, a full disk, no file handles
        # or memory left to start ffmpeg. Recorded, it would be a failure for good (a rerun skips a shard
        # with a part record); raised, it stops the build, which the same command resumes.
        raise
    except Exception as err:  # a bug must not cost the rest of the shard; it is recorded, not hidden
        detail = f"{type(err).__name__}: {err} | {traceback.format_exc(limit=3)}"
        return None, _failure(plan, item, "internal_error", detail)


def _write_items(plan: ShardPlan, features: FeatureParams, build: BuildParams, writer: ShardTarWriter,
                 on_item: Callable[[bool], None]) -> _ShardTally:
    tally = _ShardTally()
    for item in plan.items:
        tally.label_rows.update(item.labels)
        samples, failure = _samples_or_failure(plan, item, features, build)
        if failure is not None:
            tally.failures.append(failure)
            on_item(False)
            continue
        tally.add_samples(item, samples, writer)
        on_item(True)
    return tally


def _part_record(plan: ShardPlan, fingerprint: str, samples: int, tally: _ShardTally) -> dict[str, Any]:
    return {
        "name": plan.name, "split": plan.split, "fingerprint": fingerprint, "items": len(plan.items),
        "items_ok": len(plan.items) - len(tally.failures), "samples": samples,
        "logmel_sum": tally.logmel_sum, "logmel_sumsq": tally.logmel_sumsq, "logmel_count": tally.logmel_count,
        "label_rows": dict(sorted(tally.label_rows.items())), "label_ok": dict(sorted(tally.label_ok.items())),
        "max_labels_per_input": tally.most_labels, "unlabelled_inputs": tally.unlabelled,
        "failures": tally.failures,
    }


def _shard_files(out: Path, name: str) -> dict[str, Path]:
    """The shard's files by their part-record field, in the order they are published."""
    return {field_name: out / file for field_name, file in shard_file_names(name).items()}


def _publish_files(files: dict[str, Path], partial_tar: Path, writer: ShardTarWriter, tally: _ShardTally,
                   record: dict[str, Any]) -> None:
    """The tar, then its index and sidecars, each by rename; their names, size and hash into ``record``."""
    publish(partial_tar, files["tar"])
    atomic_write(files["idx"], index_text(writer.members))
    atomic_write(files["crc"], checksum_text(writer.checksums))
    atomic_write(files["labels"], labels_text(tally.sample_labels))
    record.update({field_name: path.name for field_name, path in files.items()},
                  bytes=files["tar"].stat().st_size, sha256=sha256_file(files["tar"]))


def write_shard(out: Path, plan: ShardPlan, features: FeatureParams, build: BuildParams, fingerprint: str,
                on_item: Callable[[bool], None] = lambda ok: None) -> dict[str, Any]:
    """Turn every item of ``plan`` into samples or a failure; returns the part record it wrote."""
    files = _shard_files(out, plan.name)
    partial_tar = out / f".{plan.name}.tar.partial"  # one task owns a shard, so these names need no pid
    for leftover in (out / PARTS_DIR).glob(f".{plan.name}.json.*.partial"):  # from a killed earlier run
        leftover.unlink()
    writer = ShardTarWriter(partial_tar)
    try:
        tally = _write_items(plan, features, build, writer, on_item)
    finally:
        writer.close()
    record = _part_record(plan, fingerprint, writer.samples, tally)
    if writer.samples:
        _publish_files(files, partial_tar, writer, tally, record)
    else:
        partial_tar.unlink()
        for stale in files.values():  # left by an older run of this shard with other results
            stale.unlink(missing_ok=True)
    (out / PARTS_DIR).mkdir(exist_ok=True)
    atomic_write(part_path(out, plan.name), json.dumps(record, sort_keys=True, ensure_ascii=False))
    return record
