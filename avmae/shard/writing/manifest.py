"""``build.json`` (what a build is, written first) and ``manifest.json`` + ``failures.jsonl`` (what it made, written
last by finalize from the part records of every shard)."""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avmae.files import write_text_atomically as atomic_write
from avmae.shard.errors import ParameterError
from avmae.shard.format import FORMAT_VERSION, READABLE_VERSIONS, SHARD_FILE_FIELDS
from avmae.shard.writing.writer import read_part
from avmae.shard_files import join, read_bytes

BUILD_FILE = "build.json"
MANIFEST_FILE = "manifest.json"
FAILURES_FILE = "failures.jsonl"


class BuildMismatchError(ParameterError):
    """The output folder (parameter ``out``) holds a build of other inputs or parameters."""


def claim_output(out: Path, description: dict[str, Any], shown: str | None = None) -> bool:
    """Write ``build.json``, or check that the one there describes the same build (resume / other array tasks).
    Returns whether it wrote one. ``shown`` is the output as the user named it, when ``out`` stages a remote one."""
    path = out / BUILD_FILE
    if path.exists():
        existing = _read_json(path)
        if existing.get("fingerprint") != description["fingerprint"]:
            raise BuildMismatchError(
                "out", f"{shown or out} already holds a build of other inputs or parameters (fingerprint "
                f"{str(existing.get('fingerprint', '?'))[:12]} vs {description['fingerprint'][:12]}); "
                "use another folder, or `overwrite` to start over")
        _check_same_tools(existing.get("tools"), description["tools"], shown or out)
        return False
    atomic_write(path, json.dumps(description, indent=1, sort_keys=True, ensure_ascii=False))
    return True


# The tools whose versions decide a shard's bytes (JPEG encoding, resampling, the fbank): a build resumed, or an array
# task run, with others would mix two encodings in one dataset, which its fingerprint (parameters and inputs) cannot
# tell apart. avmae's own version is not among them: the format version is part of the fingerprint.
_BYTE_DEFINING_TOOLS = ("ffmpeg", "torchaudio")


def _check_same_tools(started: dict[str, str] | None, here: dict[str, str], shown: str | Path) -> None:
    if not started:  # a build.json written before the tools were recorded
        return
    differ = [f"{tool} {started.get(tool)!r} there, {here.get(tool)!r} here" for tool in _BYTE_DEFINING_TOOLS
              if started.get(tool) != here.get(tool)]
    if differ:
        raise BuildMismatchError(
            "out", f"{shown} was started with other tools ({'; '.join(differ)}): its shards would mix two encodings; "
            "run every task of a build with the same ffmpeg and torchaudio, or `overwrite` to start over")


def read_build(out: Path) -> dict[str, Any]:
    path = out / BUILD_FILE
    if not path.exists():
        raise FileNotFoundError(f"{out} has no {BUILD_FILE}: not a shard build folder")
    return _read_json(path)


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; a damaged or foreign file is one ValueError naming it (not a decoder trace)."""
    return _json_object(path.read_bytes(), path)


def _json_object(raw: bytes, path: str | Path) -> dict[str, Any]:
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid JSON ({err}); the file is damaged or not avmae's") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: holds a JSON {type(data).__name__}, not an object; the file is damaged or not avmae's")
    return data


def pending_shards(out: Path, build: dict[str, Any]) -> list[str]:
    return [name for name in build["shards"] if read_part(out, name, build["fingerprint"]) is None]


def _stats(total: float, total_sq: float, count: int) -> tuple[float | None, float | None]:
    if count == 0:
        return None, None
    mean = total / count
    return mean, math.sqrt(max(0.0, total_sq / count - mean * mean))


@dataclass
class _PartsMerged:
    """The part records of every shard, added up: per split, failures, and label coverage."""
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    reasons: Counter[str] = field(default_factory=Counter)
    label_rows: Counter[str] = field(default_factory=Counter)
    label_ok: Counter[str] = field(default_factory=Counter)
    failure_lines: list[str] = field(default_factory=list)
    most_labels: int = 0
    unlabelled: int = 0

    def add(self, part: dict[str, Any]) -> None:
        _add_to_split(self.splits.setdefault(part["split"], _empty_split()), part)
        for failure in part["failures"]:
            self.reasons[failure["reason"]] += 1
            self.failure_lines.append(json.dumps(failure, sort_keys=True, ensure_ascii=False))
        self.label_rows.update(part["label_rows"])
        self.label_ok.update(part["label_ok"])
        self.most_labels = max(self.most_labels, part["max_labels_per_input"])
        self.unlabelled += part.get("unlabelled_inputs", 0)  # absent from parts written before the count


def _empty_split() -> dict[str, Any]:
    """A split's manifest entry, with the running log-mel sums (``_sum``, ``_sumsq``, ``_count``) its statistics
    come from."""
    return {"shards": [], "samples": 0, "items": 0, "failures": 0, "label_counts": Counter(), "_sum": 0.0,
            "_sumsq": 0.0, "_count": 0}


def _add_to_split(split: dict[str, Any], part: dict[str, Any]) -> None:
    split["items"] += part["items"]
    split["samples"] += part["samples"]
    split["failures"] += len(part["failures"])
    split["_sum"] += part["logmel_sum"]
    split["_sumsq"] += part["logmel_sumsq"]
    split["_count"] += part["logmel_count"]
    if part["samples"]:
        # "labels": absent from the part records of shards built before the labels sidecar (a resumed build)
        fields = ("name", *SHARD_FILE_FIELDS, "samples", "bytes", "sha256")
        split["shards"].append({key: part[key] for key in fields if key in part})
    split["label_counts"].update(part["label_ok"])  # inputs with samples per label: class-balanced sampling


def _finish_split(split: dict[str, Any]) -> None:
    """The label counts sorted, the running sums turned into the log-mel mean and std."""
    split["label_counts"] = dict(sorted(split["label_counts"].items()))
    split["logmel_mean"], split["logmel_std"] = _stats(split.pop("_sum"), split.pop("_sumsq"), split.pop("_count"))


def _built_parts(out: Path, build: dict[str, Any]) -> list[dict[str, Any]]:
    """Every shard's part record; RuntimeError naming the shards still to be built."""
    parts = [read_part(out, name, build["fingerprint"]) for name in build["shards"]]
    missing = [name for name, part in zip(build["shards"], parts) if part is None]
    if missing:
        raise RuntimeError(f"{len(missing)} of {len(parts)} shards are not built yet ({', '.join(missing[:3])}...); "
                           "run the build again (or wait for the other array tasks) before finalizing")
    return parts


def _manifest(build: dict[str, Any], merged: _PartsMerged) -> dict[str, Any]:
    splits = merged.splits
    # The normalisation statistics come from the training split only (no peeking at held-out data); a build of
    # evaluation clips alone reports its own.
    reference = splits.get("train") or next(iter(splits.values()), {})
    inputs = sum(split["items"] for split in splits.values())
    failures = sum(merged.reasons.values())
    return {
        "format_version": FORMAT_VERSION,
        "fingerprint": build["fingerprint"],
        "features": build["features"],
        "build": build["build"],
        "source": build["source"],
        "labels": {**build["labels"], "max_per_input": merged.most_labels, "unlabelled_inputs": merged.unlabelled},
        "tools": build["tools"],
        "logmel_mean": reference.get("logmel_mean"),
        "logmel_std": reference.get("logmel_std"),
        "splits": splits,
        "totals": {"inputs": inputs, "inputs_ok": inputs - failures, "failures": failures,
                   "samples": sum(split["samples"] for split in splits.values()),
                   "failure_reasons": dict(sorted(merged.reasons.items()))},
        "label_coverage": {label: {"rows": rows, "ok": merged.label_ok.get(label, 0)}
                           for label, rows in sorted(merged.label_rows.items())},
    }


def finalize(out: Path) -> dict[str, Any]:
    """Merge all part records into ``manifest.json`` and ``failures.jsonl``; returns the manifest.

    Raises RuntimeError naming the shards still to be built when the build is incomplete."""
    build = read_build(out)
    merged = _PartsMerged()
    for part in _built_parts(out, build):
        merged.add(part)
    for split in merged.splits.values():
        _finish_split(split)
    manifest = _manifest(build, merged)
    atomic_write(out / FAILURES_FILE, "".join(line + "\n" for line in merged.failure_lines))
    atomic_write(out / MANIFEST_FILE, json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False))
    return manifest


def read_manifest(out: str | Path) -> dict[str, Any]:
    """The manifest of shard root ``out``: a folder, or a URL prefix or ``pipe:`` command (avmae/shard_files.py)."""
    path = join(out, MANIFEST_FILE)
    try:
        raw = read_bytes(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: the build is unfinished (run `avmae-shard finalize {out}`) "
                                "or this is not a shard folder") from None
    manifest = _json_object(raw, path)
    if manifest.get("format_version") not in READABLE_VERSIONS:
        raise ValueError(f"{path}: shard format version {manifest.get('format_version')} is not one of the "
                         f"versions {list(READABLE_VERSIONS)} this avmae reads; rebuild the shards")
    return manifest
