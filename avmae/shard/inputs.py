"""The inputs of a build, from ``--src`` (a folder) or ``--list`` (a dataset list matched to files under ``--src``)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from avmae.shard.items import ClipItem, scan_folder
from avmae.shard.lists import LabelSet, read_list


def collect_inputs(*, src: Path | None, list_path: Path | None, list_format: str = "auto",
                   class_labels: Path | None = None, labels_from_dirs: bool = False, split: str | None = None,
                   segment_seconds: float = 10.0, num_verbs: int = 97,
                   num_nouns: int = 300) -> tuple[list[ClipItem], LabelSet, dict[str, Any]]:
    """(items, label set, description of the source for the manifest)."""
    if list_path is None and src is None:
        raise ValueError("give --src DIR (a folder of clips) or --list FILE (a dataset list)")
    if src is not None and not src.is_dir():
        raise FileNotFoundError(f"--src {src} is not a folder")
    if list_path is None:
        items = scan_folder(src, labels_from_dirs=labels_from_dirs)
        if not items:
            raise ValueError(f"--src {src} holds no video files")
        names = tuple(sorted({label for item in items for label in item.labels}))
        labels, source = LabelSet(names, names), {"kind": "folder", "src": str(src.resolve())}
    else:
        if not list_path.is_file():
            raise FileNotFoundError(f"--list {list_path} does not exist")
        fmt, items, labels = read_list(list_path, list_format, src, class_labels=class_labels,
                                       segment_seconds=segment_seconds, num_verbs=num_verbs, num_nouns=num_nouns)
        source = {"kind": fmt, "list": str(list_path.resolve()), "src": str(src.resolve()) if src else None,
                  "class_labels": str(class_labels.resolve()) if class_labels else None}
    if split is not None:
        items = [replace(item, split=split) for item in items]
    return items, labels, source
