"""The clip set of a split, in a form two labs can compare: one row per sample, ``<id>\\t<start>\\t<end>``, sorted,
and the sha256 of that text (``avmae-shard ids``; every ``report.json`` of avmae-eval carries the same hash over the
samples it scored).

A row names the YouTube segment, not the file: a list build's row keeps the list's id and segment (``ytid``,
``list_start``, ``list_end`` in the metadata), because a downloader's cut file (``YTID_30000_40000.mp4``) is
decoded from 0 s and its file offsets say nothing about the video. Without a list the id is the file's video id
and the segment is the one decoded. Seconds are written with 3 decimals, as AudioSet's CSVs give them, so that
``30`` and ``30.000`` are the same clip.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from avmae.forward_reader import ForwardReader
from avmae.shard.format import METADATA_MEMBER, check_shard_file_names
from avmae.shard.shard_tar import parse_index
from avmae.shard.writing.manifest import FAILURES_FILE, MANIFEST_FILE, read_manifest
from avmae.shard_files import exists, join, read_text
from avmae.storage import root_of


def row(video: str, start: float, end: float) -> str:
    return f"{video}\t{start:.3f}\t{end:.3f}"


def clip_row(metadata: dict[str, Any]) -> str:
    """The row of one sample, from its metadata (the module docstring says which fields)."""
    start = metadata.get("list_start", metadata["start"])
    end = metadata.get("list_end")
    if end is None:  # VGGSound's list gives only a start: the segment is as long as the one decoded
        end = start + metadata["end"] - metadata["start"]
    return row(metadata.get("ytid") or metadata["video_id"], start, end)


def split_rows(root: str | Path, split: str) -> tuple[dict[str, str], dict[str, str]]:
    """Sample key -> row of every sample of ``split``, read from each sample's metadata through the shard index; and
    key -> why for the samples whose metadata cannot be read (a damaged shard is data, not a stop: the loaders
    count and name those samples where they are scored, avmae-shard verify names the bytes). ``root``: a folder,
    or a URL prefix or pipe: command (avmae/shard_files.py); each tar is read front to back over one stream."""
    root = root_of(root)
    manifest = read_manifest(root)
    check_shard_file_names(manifest, join(root, MANIFEST_FILE))
    if split not in manifest["splits"]:
        raise ValueError(f"{root}: no split {split!r}; the manifest has {sorted(manifest['splits'])}")
    rows, unreadable = {}, {}
    for shard in manifest["splits"][split]["shards"]:
        tar = join(root, shard["tar"])
        with ForwardReader(tar) as reader:
            index = join(root, shard["idx"])
            for sample in parse_index(read_text(index), index):
                meta = next((m for m in sample if m.ext == METADATA_MEMBER), None)
                if meta is None:
                    unreadable[sample[0].key] = f"{tar}: no {METADATA_MEMBER} member"
                    continue
                try:
                    rows[meta.key] = clip_row(json.loads(reader.read(meta.offset, meta.offset + meta.size)))
                except (ValueError, KeyError, TypeError) as err:
                    unreadable[meta.key] = f"{tar}: metadata gives no clip row ({err!r})"
    return rows, unreadable


def ids_text(rows: Iterable[str]) -> str:
    """The list file: the rows sorted, one a line."""
    return "".join(line + "\n" for line in sorted(rows))


def ids_sha256(rows: Iterable[str]) -> str:
    return hashlib.sha256(ids_text(rows).encode("utf-8")).hexdigest()


def read_ids(path: str | Path) -> set[str]:
    """The rows of another lab's list (``avmae-shard ids`` output), normalised; ValueError naming the line of a
    malformed one."""
    rows = set()
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            if len(fields) != 3:
                raise ValueError
            rows.add(row(fields[0], float(fields[1]), float(fields[2])))
        except ValueError:
            raise ValueError(f"{path}:{number}: {line[:80]!r} is not '<id>\\t<start seconds>\\t<end seconds>'") from None
    return rows


def build_losses(root: str | Path, split: str) -> dict[str, int]:
    """How many of the build's inputs for ``split`` gave no sample: ``missing`` (no downloaded file) and ``failed``
    (any other reason), from failures.jsonl."""
    path = join(root, FAILURES_FILE)
    reasons: Counter[str] = Counter()
    if exists(path):
        for line in read_text(path).splitlines():
            if line.strip():
                failure = json.loads(line)
                if failure.get("split") == split:
                    reasons["missing" if failure.get("reason") == "missing" else "failed"] += 1
    return {"missing": reasons["missing"], "failed": reasons["failed"]}
