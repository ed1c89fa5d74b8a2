"""What a loader needs from a shard folder's manifest, checked against what the run expects."""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from avmae.shard.format import UNCHECKED_VERSIONS, LabelMode, check_shard_file_names, label_mode
from avmae.shard.params import ABSENT_FEATURES
from avmae.shard.writing.manifest import MANIFEST_FILE, read_manifest
from avmae.shard_files import join
from avmae.storage import root_of

log = logging.getLogger(__name__)


class DataMismatchError(ValueError):
    """Shards made with other feature parameters than the run expects."""


@dataclass(frozen=True)
class ShardFile:
    tar: str
    idx: str
    samples: int
    crc: str | None = None  # checksum sidecar; None: a format-version-1 shard, read unchecked
    labels: str | None = None  # labels sidecar (format.py); None: built before it, balanced sampling reads the JSONs


@dataclass(frozen=True)
class DataSpec:
    root: str | Path  # a folder, or a URL prefix / pipe: command (avmae/shard_files.py)
    shards: tuple[ShardFile, ...]
    features: dict[str, Any]
    label_mode: LabelMode
    label_names: tuple[str, ...]
    heads: dict[str, int]  # classes per head: {"label": C} or {"verb": 97, "noun": 300}
    logmel_mean: float
    logmel_std: float
    label_counts: dict[str, int]

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)


@functools.cache  # once per folder and process: every reader and evaluation opens the spec again
def _notice_unchecked(root: str, version: int) -> None:
    log.warning("%s: shard format version %s has no member checksums; its samples are read unchecked "
                "(rebuild with this avmae to check them)", root, version)


def load_spec(root: str | Path, split: str, expect: dict[str, Any] | None = None) -> DataSpec:
    """The shards of ``split`` under ``root``. ``expect`` maps feature names to required values (e.g. the number of
    log-mel frames the model was configured for); any difference is an error naming both values. ``root`` is a
    folder, or a URL prefix or ``pipe:`` command (avmae/shard_files.py)."""
    root = root_of(root)
    manifest = read_manifest(root)
    check_shard_file_names(manifest, join(root, MANIFEST_FILE))
    if split not in manifest["splits"]:
        raise ValueError(f"{root}: no split {split!r}; the manifest has {sorted(manifest['splits'])}")
    features = manifest["features"]
    for name, wanted in (expect or {}).items():
        found = features.get(name, ABSENT_FEATURES.get(name))
        if found is None:
            raise DataMismatchError(f"{root}: the manifest has no feature parameter {name!r}")
        if found != wanted:
            raise DataMismatchError(f"{root}: shards were built with {name}={found!r} but the run expects "
                                    f"{wanted!r}; rebuild the shards or change the config")
    split_info = manifest["splits"][split]
    unchecked = manifest["format_version"] in UNCHECKED_VERSIONS
    if unchecked:
        _notice_unchecked(str(root), manifest["format_version"])
    shards = tuple(ShardFile(join(root, s["tar"]), join(root, s["idx"]), s["samples"],
                             None if unchecked else join(root, s["crc"]),
                             join(root, s["labels"]) if s.get("labels") else None) for s in split_info["shards"])
    if not shards:
        raise ValueError(f"{root}: split {split!r} has no samples")
    labels = manifest["labels"]
    mode = label_mode(manifest)
    heads = (dict(labels["heads"]) if mode == LabelMode.VERB_NOUN
             else {"label": len(labels["names"])} if mode != LabelMode.NONE else {})
    reference = manifest["splits"].get("train", split_info)
    return DataSpec(root=root, shards=shards, features=features, label_mode=mode,
                    label_names=tuple(labels.get("names", ())), heads=heads,
                    logmel_mean=manifest["logmel_mean"] if manifest["logmel_mean"] is not None else 0.0,
                    logmel_std=manifest["logmel_std"] or 1.0,
                    label_counts=dict(reference.get("label_counts", {})))
