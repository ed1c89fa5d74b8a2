"""Evaluation counts every sample of the split or says why not: a sample that was not scored is named, with the
reason the loader gave.

The loaders mark a sample they could not read as ``valid=False`` and describe it in ``batch["skipped"]``
(``{"shard", "key", "member", "reason", "detail"}``). Each rank collects those records; they are gathered to every
rank, and the scored keys are compared with the keys the split's indexes list, so that a sample that is neither
scored nor described (a loader that gives no reason) is still named. ``report.json`` carries the result."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from avmae import collectives
from avmae.data.spec import DataSpec
from avmae.data.tar_reader import IndexedShard

NO_REASON = "not scored"  # a sample of the split that no record explains


class IncompleteEvaluation(ValueError):
    """Samples of the split could not be scored and the request did not allow it."""


def batch_skips(batch: dict[str, Any]) -> list[dict[str, Any]]:
    """The loader's records of the batch's unreadable samples (empty for a loader that gives none)."""
    return [dict(record) for record in batch.get("skipped", [])]


def gather_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every rank's records, on every rank, in rank order."""
    return [record for part in collectives.all_gather_object(records) for record in part]


def split_keys(spec: DataSpec) -> list[tuple[str, str]]:
    """(shard, key) of every sample the split's indexes list, in the global order."""
    return [(shard.tar, key) for shard in spec.shards for key in IndexedShard(shard.tar, shard.idx).keys]


@dataclass
class Coverage:
    split: str
    expected: int  # the manifest's count for the split
    scored: int
    missing: list[dict[str, Any]] = field(default_factory=list)  # one record per sample not scored
    allow_missing: bool = False

    @property
    def complete(self) -> bool:
        return self.scored == self.expected and not self.missing

    def as_dict(self) -> dict[str, Any]:
        return {"split": self.split, "expected": self.expected, "scored": self.scored, "missing": len(self.missing),
                "complete": self.complete, "allow_missing": self.allow_missing, "missing_samples": self.missing}

    def check(self, where: str) -> None:
        """Refuse an incomplete evaluation unless it is allowed; ``where`` names the list of missing samples."""
        if not self.complete and not self.allow_missing:
            raise IncompleteEvaluation(
                f"{self.expected - self.scored} of {self.expected} samples of split {self.split!r} could not be "
                f"scored (listed in {where}); allow_missing accepts that")


def coverage(spec: DataSpec, split: str, scored_keys: list[str], skipped: list[dict[str, Any]],
             allow_missing: bool = False, only: set[str] | None = None) -> Coverage:
    """Compare what was scored with what the split holds (or, given ``only``, with those of its keys: the samples
    ``avmae-eval --ids`` asks for); each missing sample with the loader's reason."""
    scored = set(scored_keys)
    if len(scored) != len(scored_keys):
        raise ValueError(f"split {split!r}: a key was scored twice (the loader's padding leaked into the scores)")
    reasons = {record.get("key"): record for record in skipped}
    missing = []
    for shard, key in split_keys(spec):
        if key in scored or (only is not None and key not in only):
            continue
        record = reasons.pop(key, None) or {"shard": shard, "key": key, "member": None, "reason": NO_REASON,
                                            "detail": "the loader read no such sample and gave no reason"}
        missing.append(record)
    # Records whose key the indexes do not list (an index lists fewer samples than the manifest): kept, not dropped.
    missing += [record for key, record in reasons.items() if key not in scored and (only is None or key in only)]
    expected = spec.samples if only is None else len(only)
    if len(scored) + len(missing) < expected:
        missing.append({"shard": None, "key": None, "member": None, "reason": "not in the index",
                        "detail": f"the manifest counts {expected} samples, the indexes and the loader account for "
                                  f"{len(scored) + len(missing)}"})
    return Coverage(split, expected, len(scored), missing, allow_missing)
