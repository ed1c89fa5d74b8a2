"""One unit of work of a shard build: an input clip (or a list row) that becomes samples or one failure."""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".flv", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts", ".3gp",
     ".ogv", ".wmv", ".asf", ".vob", ".mxf", ".dv", ".gif"}
)

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
_SAFE_STEM = re.compile(r"[A-Za-z0-9_-]{1,128}")  # no dot, no slash: never "..", never absolute, never a sub-folder


@dataclass(frozen=True)
class ClipItem:
    """An input: a file (or a list row pointing at one) plus the segment and labels wanted from it.

    ``start``/``end`` are seconds into the file; ``None`` means "decided by the segment policy" (plain folders).
    ``path`` is ``None`` when a list row matched no downloaded file.

    Two inputs are not a video file of their own:
    - ``member``: the video is this member of the tar at ``path`` (a local path or URL; video2dataset output);
    - ``frames_root``: CAV-MAE's prepared data: frames are ``{frames_root}/frame_{i}/{video_id}.jpg`` and ``path`` is
      the 16 kHz wav.
    ``fault`` is ``(reason, detail)`` for an input known to be unusable when it was collected (a tar member that is
    not a video, a download that failed): it becomes its failure, so inputs = samples + failures still holds.
    """

    item_id: str  # unique within a build; the sample key is derived from it
    video_id: str  # the val hold-out is drawn per video id, so all segments of a video land in one split
    source: str  # what the user gave: a relative path or a list row reference
    path: str | None
    start: float | None = None
    end: float | None = None
    labels: tuple[str, ...] = ()
    split: str = "train"
    extra: dict[str, Any] = field(default_factory=dict)  # per-dataset fields kept in the sample metadata
    member: str | None = None
    frames_root: str | None = None
    fault: tuple[str, str] | None = None

    def to_json(self) -> dict[str, Any]:
        data = {
            "item_id": self.item_id, "video_id": self.video_id, "source": self.source, "path": self.path,
            "start": self.start, "end": self.end, "labels": list(self.labels), "split": self.split,
            "extra": self.extra,
        }
        # Only when set: the fingerprint of a build of plain files stays what it was before these fields existed,
        # so such builds still resume.
        for name in ("member", "frames_root", "fault"):
            value = getattr(self, name)
            if value is not None:
                data[name] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ClipItem":
        fault = data.get("fault")
        return cls(**{**data, "labels": tuple(data["labels"]), "fault": tuple(fault) if fault else None})


def safe_key(item_id: str, segment_index: int = 0) -> str:
    """A WebDataset key for a sample: unique, filesystem-safe, without dots (WebDataset splits member names at the
    first dot). The readable part is cut to 48 characters; the hash of the full id keeps keys unique even when two
    ids sanitise to the same text (``a b`` and ``a_b``)."""
    return f"{_readable_with_digest(item_id)}_{segment_index:03d}"


def _readable_with_digest(text: str) -> str:
    readable = _UNSAFE.sub("_", text).strip("_")[:48] or "clip"
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:10]
    return f"{readable}_{digest}"


def file_stem_for_key(key: str) -> str:
    """The file name stem for a sample key read out of a tar (``avmae-shard inspect``'s PNGs, the loader bench's
    files). A key is data: one that is an absolute path or holds ``..`` or ``/`` must not choose where a file goes.
    A key as avmae writes them (``safe_key``) is its own stem; any other is sanitised like an item id, plus a hash
    of the whole key so that two keys never share a stem. Callers report keys whose stem differs."""
    return key if _SAFE_STEM.fullmatch(key) else _readable_with_digest(key)


def scan_folder(src: Path, labels_from_dirs: bool = False) -> tuple[list[ClipItem], dict[str, int]]:
    """Every video file under ``src`` (recursive, sorted), one item each, and the count of files it ignored by
    extension (an ``.m4a`` audio-only download, a downloader's ``.part``; hidden files as ``(hidden)``), so that a
    build can say what it left out: "inputs = samples + failures" only holds for what was taken as input.

    With ``labels_from_dirs`` the name of a file's parent folder is its label (the UCF101 / class-folder layout).
    """
    items, ignored = [], Counter()
    for path in sorted(src.rglob("*")):
        if path.is_dir():  # anything else is an input or counted as ignored: a FIFO or a broken link named
            continue       # .mp4 becomes a recorded failure, not a silent omission
        rel = path.relative_to(src)
        if any(part.startswith(".") for part in rel.parts):
            ignored["(hidden)"] += 1
            continue
        if path.suffix.lower() not in VIDEO_EXTENSIONS:
            ignored[path.suffix.lower() or "(no extension)"] += 1
            continue
        labels = (rel.parent.name,) if labels_from_dirs and rel.parent.name else ()
        rel_text = rel.as_posix()
        items.append(ClipItem(item_id=rel_text, video_id=rel_text, source=rel_text, path=str(path.resolve()),
                              labels=labels))
    return items, dict(sorted(ignored.items()))
