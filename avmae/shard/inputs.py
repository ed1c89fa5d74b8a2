"""The inputs of a build, from a folder of clips (``src``) or a dataset list (``list_path``, matched to files under
``src``; CAV-MAE's data JSON names its prepared frames and wavs itself). Errors name these parameters; the command
line maps them to its flags."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from avmae.shard.cavmae_prepared import read_cavmae_datafile
from avmae.shard.errors import ParameterError
from avmae.shard.items import ClipItem, scan_folder
from avmae.shard.lists import LabelSet, detect_format, read_list


@dataclass(frozen=True)
class InputSpec:
    src: Path | None = None  # folder of clips; with list_path, where the list's files are
    list_path: Path | None = None
    list_format: str = "auto"
    class_labels: Path | None = None
    labels_from_dirs: bool = False
    split: str | None = None  # every input in this split (default: the list's own or "train")
    segment_seconds: float = 10.0
    num_verbs: int = 97
    num_nouns: int = 300


def collect_inputs(spec: InputSpec) -> tuple[list[ClipItem], LabelSet, dict[str, Any]]:
    """(items, label set, description of the source for the manifest). A folder's description counts the files
    the scan ignored, by extension (``ignored_files``)."""
    src, list_path = spec.src, spec.list_path
    if list_path is None and src is None:
        raise ParameterError("src", "is needed (a folder of clips), unless a dataset list is given")
    if src is not None and not src.is_dir():
        raise ParameterError("src", f"{src} is not a folder")
    if list_path is None:
        items, ignored = scan_folder(src, labels_from_dirs=spec.labels_from_dirs)
        if not items:
            raise ParameterError("src", f"{src} holds no video files" + (
                f" (ignored: {', '.join(f'{ext}: {n}' for ext, n in ignored.items())})" if ignored else ""))
        names = tuple(sorted({label for item in items for label in item.labels}))
        labels = LabelSet(names, names)
        source = {"kind": "folder", "src": str(src.resolve()), "ignored_files": ignored}
    else:
        if not list_path.is_file():
            raise ParameterError("list_path", f"{list_path} is not a file")
        fmt = detect_format(list_path) if spec.list_format == "auto" else spec.list_format
        if fmt == "cavmae":
            items, labels = read_cavmae_datafile(list_path, src, spec.class_labels)
        else:
            fmt, items, labels = read_list(list_path, fmt, src, class_labels=spec.class_labels,
                                           segment_seconds=spec.segment_seconds, num_verbs=spec.num_verbs,
                                           num_nouns=spec.num_nouns)
        source = {"kind": fmt, "list": str(list_path.resolve()), "src": str(src.resolve()) if src else None,
                  "class_labels": str(spec.class_labels.resolve()) if spec.class_labels else None}
    if spec.split is not None:
        items = [replace(item, split=spec.split) for item in items]
    return items, labels, source
