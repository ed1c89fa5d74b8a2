"""Bytes per sample of a shard folder: what storage and the loaders' reads cost per clip."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from avmae.shard.format import SHARD_FILE_FIELDS
from avmae.shard.writing.manifest import MANIFEST_FILE


def shard_bytes_per_sample(folder: Path) -> dict[str, Any]:
    """Bytes on disk of every shard's files listed in ``manifest.json`` (tar, DALI index, CRC and labels
    sidecars), over the samples they hold (all splits). The index and sidecars are read too (once per shard), so
    they count."""
    manifest = json.loads((Path(folder) / MANIFEST_FILE).read_text())
    total, samples, shards = 0, 0, 0
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            total += sum((Path(folder) / shard[member]).stat().st_size for member in SHARD_FILE_FIELDS
                         if shard.get(member))
            samples += shard["samples"]
            shards += 1
    if samples == 0:
        raise ValueError(f"{folder}: the manifest lists no samples")
    return {"bytes_per_sample": total / samples, "bytes": total, "samples": samples, "shards": shards,
            "features": {k: manifest["features"].get(k) for k in ("num_frames", "short_side", "jpeg_qscale")},
            "segment_seconds": manifest.get("build", {}).get("segment_seconds")}
