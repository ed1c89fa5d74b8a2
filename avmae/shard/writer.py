"""Write one planned shard: its tar, its DALI index, its sidecars and, last, its part record (the "done" marker).

Files appear by rename only, tar then index then checksum sidecar then labels sidecar (format.py) then part record,
so a build killed at any moment leaves either a finished shard (part record present) or one that the next run redoes
from scratch (video2dataset's stats-file-last rule, docs/reference/engineering.md#a-done-marker-written-last).
"""

from __future__ import annotations

import json
import traceback
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from avmae.files import publish, write_text_atomically as atomic_write
from avmae.shard.format import (CHECKSUM_SUFFIX, INDEX_SUFFIX, LABELS_SUFFIX, METADATA_MEMBER, TAR_SUFFIX,
                                checksum_text, labels_text, metadata_labels)
from avmae.shard.media import MediaError
from avmae.shard.params import BuildParams, FeatureParams
from avmae.shard.plan import ShardPlan
from avmae.shard.sample import make_samples
from avmae.shard.tarfiles import ShardTarWriter, index_text, sha256_file

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


def write_shard(out: Path, plan: ShardPlan, features: FeatureParams, build: BuildParams, fingerprint: str,
                on_item: Callable[[bool], None] = lambda ok: None) -> dict[str, Any]:
    """Turn every item of ``plan`` into samples or a failure; returns the part record it wrote."""
    tar_path = out / f"{plan.name}{TAR_SUFFIX}"
    idx_path = out / f"{plan.name}{INDEX_SUFFIX}"
    crc_path = out / f"{plan.name}{CHECKSUM_SUFFIX}"
    labels_path = out / f"{plan.name}{LABELS_SUFFIX}"
    partial_tar = out / f".{plan.name}.tar.partial"  # one task owns a shard, so these names need no pid
    for leftover in (out / PARTS_DIR).glob(f".{plan.name}.json.*.partial"):  # from a killed earlier run
        leftover.unlink()
    writer = ShardTarWriter(partial_tar)
    failures: list[dict[str, Any]] = []
    label_rows: Counter[str] = Counter()
    label_ok: Counter[str] = Counter()
    sample_labels: list[tuple[str, list[str]]] = []  # (key, labels) per sample in tar order: the labels sidecar
    sums = [0.0, 0.0, 0]
    most_labels = 0
    unlabelled = 0  # inputs with samples but no label: single-label loaders skip their samples (sample_check.py)
    try:
        for item in plan.items:
            label_rows.update(item.labels)
            try:
                samples = make_samples(item, features, build)
            except MediaError as err:
                failures.append(_failure(plan, item, err.reason, err.detail))
                on_item(False)
                continue
            except (OSError, MemoryError):
                # The machine or the storage failed, not the clip: a reset connection, a full disk, no file handles
                # or memory left to start ffmpeg. Recorded, it would be a failure for good (a rerun skips a shard
                # with a part record); raised, it stops the build, which the same command resumes.
                raise
            except Exception as err:  # a bug must not cost the rest of the shard; it is recorded, not hidden
                detail = f"{type(err).__name__}: {err} | {traceback.format_exc(limit=3)}"
                failures.append(_failure(plan, item, "internal_error", detail))
                on_item(False)
                continue
            for sample in samples:
                writer.write(sample.key, sample.members)
                sample_labels.append((sample.key, metadata_labels(sample.members[METADATA_MEMBER])))
                sums[0] += sample.logmel_sum
                sums[1] += sample.logmel_sumsq
                sums[2] += sample.logmel_count
            label_ok.update(item.labels)
            most_labels = max(most_labels, len(item.labels))
            unlabelled += not item.labels
            on_item(True)
    finally:
        writer.close()
    record: dict[str, Any] = {
        "name": plan.name, "split": plan.split, "fingerprint": fingerprint, "items": len(plan.items),
        "items_ok": len(plan.items) - len(failures), "samples": writer.samples,
        "logmel_sum": sums[0], "logmel_sumsq": sums[1], "logmel_count": sums[2],
        "label_rows": dict(sorted(label_rows.items())), "label_ok": dict(sorted(label_ok.items())),
        "max_labels_per_input": most_labels, "unlabelled_inputs": unlabelled,
        "failures": failures,
    }
    if writer.samples:
        publish(partial_tar, tar_path)
        atomic_write(idx_path, index_text(writer.members))
        atomic_write(crc_path, checksum_text(writer.checksums))
        atomic_write(labels_path, labels_text(sample_labels))
        record.update(tar=tar_path.name, idx=idx_path.name, crc=crc_path.name, labels=labels_path.name,
                      bytes=tar_path.stat().st_size, sha256=sha256_file(tar_path))
    else:
        partial_tar.unlink()
        # left by an older run of this shard with other results
        for stale in (tar_path, idx_path, crc_path, labels_path):
            stale.unlink(missing_ok=True)
    (out / PARTS_DIR).mkdir(exist_ok=True)
    atomic_write(part_path(out, plan.name), json.dumps(record, sort_keys=True, ensure_ascii=False))
    return record
