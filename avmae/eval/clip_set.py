"""Which clips a number was computed on (each lab holds a different subset of AudioSet's and VGGSound's YouTube
clips, so two numbers compare only on the same clips): the report's ``clip_set`` section, and ``--ids``, which
keeps only the samples whose clip row (avmae/shard/checking/ids.py) is in another lab's list.

The whole split is scored and the scores outside the list are dropped before the metrics: the loaders' order and
padding stay as tested, at the cost of scoring the rows the list leaves out. Coverage then expects exactly the
intersection (coverage.py ``only``), so a sample of the intersection that could not be read is still named."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from avmae.shard.checking.ids import build_losses, ids_sha256, read_ids, split_rows


@dataclass
class ClipSet:
    root: str
    split: str
    rows: dict[str, str]  # sample key -> clip row, every sample of the split whose metadata could be read
    unreadable: dict[str, str]  # key -> why, the others (damaged shards; coverage names them as not scored)
    ids_file: str | None = None
    listed: set[str] | None = None  # the other lab's rows

    @property
    def only(self) -> set[str] | None:
        """The keys to score: those whose row the list holds, and those whose row cannot be read (they may be in the
        list: expected, so coverage names them instead of dropping them unseen); None without a list (every key)."""
        if self.listed is None:
            return None
        return {key for key, row in self.rows.items() if row in self.listed} | set(self.unreadable)

    def report(self, scored_keys: list[str]) -> dict[str, Any]:
        """The report's section: the hash and count of the rows scored (equal to ``avmae-shard ids`` of the split
        when every sample was scored), the split's own, the build's losses, and with a list the overlap counts."""
        scored = [self.rows[key] for key in scored_keys]  # a scored sample's metadata was read: it has a row
        section: dict[str, Any] = {
            "sha256": ids_sha256(scored), "count": len(scored), "row": "id<TAB>start<TAB>end, sorted (avmae-shard ids)",
            "split_sha256": ids_sha256(self.rows.values()), "split_count": len(self.rows),
            "build_losses": build_losses(self.root, self.split), "unreadable_rows": len(self.unreadable),
        }
        if self.listed is not None:
            ours = set(self.rows.values())
            section["ids"] = {"file": self.ids_file, "sha256": ids_sha256(self.listed), "in_list": len(self.listed),
                              "in_shards": len(ours), "both": len(ours & self.listed),
                              "list_not_in_shards": len(self.listed - ours),
                              "shards_not_in_list": len(ours - self.listed), "scored": len(scored)}
        return section


def load_clip_set(data: str, split: str, ids_file: str | Path | None) -> ClipSet:
    rows, unreadable = split_rows(data, split)
    listed = read_ids(ids_file) if ids_file is not None else None
    return ClipSet(data, split, rows, unreadable, None if ids_file is None else str(ids_file), listed)


def keep_listed(features: dict[str, Any], only: set[str] | None) -> dict[str, Any]:
    """Embeddings (runner.embeddings) restricted to the keys in ``only``; the loader's skip records too."""
    if only is None:
        return features
    mask = torch.tensor([key in only for key in features["keys"]], dtype=torch.bool)
    out = {**features, "keys": [key for key in features["keys"] if key in only],
           "skipped": [record for record in features["skipped"] if record.get("key") in only]}
    for name in ("audio", "video", "label"):
        if name in features:
            out[name] = features[name][mask]
    return out
