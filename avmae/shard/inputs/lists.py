"""Dataset lists as users have them, turned into ClipItems matched to downloaded files.

Formats (the datasets' own CSVs, docs/reference/datasets.md):
- AudioSet segments CSV: ``# YTID, start_seconds, end_seconds, positive_labels`` (comment header, quoted label list),
  with ``class_labels_indices.csv`` (``index,mid,display_name``) for the label order.
- VGGSound CSV: ``YTID,start,label,split`` with no header; segments are 10 s from ``start``.
- Epic-Kitchens-100 annotations: ``narration_id,participant_id,video_id,...,start_timestamp,stop_timestamp,...,
  verb_class,...,noun_class,...`` with ``HH:MM:SS.ff`` timestamps.
- Generic CSV with a header: ``path,labels[,start,end]`` (labels separated by ``;`` or ``|``).
- CAV-MAE's data JSON ``{"data": [{"video_id", "wav", "video_path", "labels"}, ...]}`` (cavmae_prepared.py): its
  prepared frames and wavs, no videos.
"""

from __future__ import annotations

import bisect
import csv
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

from avmae.shard.inputs.items import VIDEO_EXTENSIONS, ClipItem

ListFormat = Literal["auto", "audioset", "vggsound", "epic", "generic", "cavmae"]
LIST_FORMATS: tuple[str, ...] = get_args(ListFormat)
# AudioSet and VGGSound clips are 10 s segments of YouTube videos; Epic-Kitchens-100 has 97 verb and 300 noun
# classes (docs/reference/datasets.md).
DATASET_SEGMENT_SECONDS = 10.0
EPIC_VERB_CLASSES = 97
EPIC_NOUN_CLASSES = 300


class ListFormatError(ValueError):
    """A list file that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class LabelSet:
    """The label vocabulary of a build, in index order (names are what metadata stores; display names are for
    humans). For Epic-Kitchens, ``heads`` gives the class count of the verb and noun heads instead."""

    names: tuple[str, ...] = ()
    display_names: tuple[str, ...] = ()
    heads: tuple[tuple[str, int], ...] = ()

    def to_json(self) -> dict:
        data: dict = {"names": list(self.names), "display_names": list(self.display_names)}
        if self.heads:
            data["heads"] = dict(self.heads)
        return data


# --- matching list rows to downloaded files ------------------------------------------------------------------------

_CUT_SUFFIX = re.compile(r"^(?P<a>\d+(?:\.\d+)?)(?:_(?P<b>\d+(?:\.\d+)?))?$")


class FileIndex:
    """Downloaded files under a folder, found by the names common downloaders give them.

    ``YTID.mp4`` is a whole video (the list's start/end are seeked). ``YTID_START_END.mp4`` (seconds or
    milliseconds, integer or decimal, as written by the usual AudioSet downloaders) and ``YTID_START.mp4`` or
    ``YTID_000030.mp4`` (VGGSound downloaders) are already cut to the segment, so they are read from 0.
    """

    def __init__(self, root: Path):
        self.by_stem: dict[str, Path] = {}
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix.lower() in VIDEO_EXTENSIONS:
                self.by_stem.setdefault(path.stem, path)
        self._sorted_stems = sorted(self.by_stem)

    def find(self, video_id: str, start: float | None) -> tuple[Path, bool] | None:
        """(file, already_cut) for a row, or None. A whole video named by its id wins over a cut one; a cut file
        must name the row's start (in seconds or milliseconds)."""
        if video_id in self.by_stem:
            return self.by_stem[video_id], False
        if start is None:
            return None
        prefix = video_id + "_"
        position = bisect.bisect_left(self._sorted_stems, prefix)
        for stem in self._sorted_stems[position:]:
            if not stem.startswith(prefix):
                break
            match = _CUT_SUFFIX.match(stem[len(prefix):])
            if match is None:
                continue
            first = float(match.group("a"))
            if abs(first - start) < 1e-3 or abs(first - start * 1000) < 1e-3:
                return self.by_stem[stem], True
        return None


def _resolve(index: FileIndex | None, video_id: str, start: float, end: float):
    """(path or None, start, end) for a row; cut files are read from 0 for the segment's length."""
    found = index.find(video_id, start) if index is not None else None
    if found is None:
        return None, start, end
    path, already_cut = found
    if already_cut:
        return str(path.resolve()), 0.0, end - start
    return str(path.resolve()), start, end


def _split_labels(text: str) -> tuple[str, ...]:
    return tuple(label.strip() for label in re.split(r"[;|,]", text) if label.strip())


@contextmanager
def _utf8(path: Path) -> Iterator[None]:
    """Reading ``path`` as UTF-8 text: bytes that are not are a ListFormatError naming the file and line, not a
    UnicodeDecodeError that names neither (the line is looked for only then, in a second read)."""
    try:
        yield
    except UnicodeDecodeError as err:
        raise ListFormatError(f"{path}:{_undecodable_line(path)}: not UTF-8 text ({err.reason}); save the list "
                              "as UTF-8") from None


def _undecodable_line(path: Path) -> int | str:
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):  # a newline byte is never inside a UTF-8 character
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return "?"  # a character cut by the end of the file


def _seconds(text: str, what: str, where: str) -> float:
    """A time in seconds from a list cell; a cell that is no finite number is a ListFormatError naming ``where``."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise ListFormatError(f"{where}: {what} {text[:40]!r} is not a number of seconds")
    return value


def _rows(path: Path, skip_comments: bool = True):
    with _utf8(path), open(path, newline="", encoding="utf-8") as handle:
        for line_number, row in enumerate(csv.reader(handle, skipinitialspace=True), start=1):
            if not row or (skip_comments and row[0].lstrip().startswith("#")):
                continue
            yield line_number, [cell.strip() for cell in row]


# --- formats ---------------------------------------------------------------------------------------------------------


def read_audioset(path: Path, src: Path | None, class_labels: Path | None) -> tuple[list[ClipItem], LabelSet]:
    index = FileIndex(src) if src else None
    items = []
    for line, row in _rows(path):
        if len(row) < 4:
            raise ListFormatError(f"{path}:{line}: expected YTID, start_seconds, end_seconds, positive_labels")
        ytid, start_text, end_text, labels_text = row[0], row[1], row[2], ",".join(row[3:])
        try:
            start, end = float(start_text), float(end_text)
        except ValueError:
            start = end = math.nan
        if not (math.isfinite(start) and math.isfinite(end)):  # nan and inf would fail the item id, naming nothing
            raise ListFormatError(f"{path}:{line}: start/end are not numbers: {start_text!r}, {end_text!r}")
        file_path, seg_start, seg_end = _resolve(index, ytid, start, end)
        items.append(ClipItem(
            item_id=f"{ytid}_{int(round(start * 1000))}", video_id=ytid, source=f"{path.name}:{line}",
            path=file_path, start=seg_start, end=seg_end, labels=_split_labels(labels_text),
            extra={"ytid": ytid, "list_start": start, "list_end": end},
        ))
    return items, label_set(items, path, class_labels)


def label_set(items: list[ClipItem], path: Path, class_labels: Path | None) -> LabelSet:
    """The labels of a list's items: in the order of an AudioSet-style ``class_labels_indices.csv``
    (``index,mid,display_name``, also CAV-MAE's label csv) when one is given, every item label required to be in
    it; otherwise the sorted labels the items use."""
    if class_labels is not None:
        names, display = [], []
        for line, row in _rows(class_labels):
            if row[0] == "index":
                continue
            if len(row) < 3:
                raise ListFormatError(f"{class_labels}:{line}: expected index,mid,display_name")
            names.append(row[1])
            display.append(row[2])
        unknown = sorted({label for item in items for label in item.labels} - set(names))
        if unknown:
            raise ListFormatError(f"{path}: labels not in {class_labels}: {', '.join(unknown[:5])}")
        return LabelSet(tuple(names), tuple(display))
    names = tuple(sorted({label for item in items for label in item.labels}))
    return LabelSet(names, names)


def read_vggsound(path: Path, src: Path | None, segment_seconds: float) -> tuple[list[ClipItem], LabelSet]:
    index = FileIndex(src) if src else None
    items = []
    for line, row in _rows(path):
        if len(row) < 3:
            raise ListFormatError(f"{path}:{line}: expected YTID,start,label[,split]")
        ytid, start_text, label = row[0], row[1], row[2]
        split = row[3] if len(row) > 3 and row[3] else "train"
        start = _seconds(start_text, "start", f"{path}:{line}")
        end = start + segment_seconds
        file_path, seg_start, seg_end = _resolve(index, ytid, start, end)
        items.append(ClipItem(
            item_id=f"{ytid}_{int(round(start * 1000))}", video_id=ytid, source=f"{path.name}:{line}",
            path=file_path, start=seg_start, end=seg_end, labels=(label,), split=split,
            extra={"ytid": ytid, "list_start": start},
        ))
    # VGGSound's class index is the sorted class names (309 classes in the released lists,
    # docs/reference/datasets.md#vggsound).
    names = tuple(sorted({item.labels[0] for item in items}))
    return items, LabelSet(names, names)


def _timestamp(text: str, where: str) -> float:
    parts = text.split(":")
    try:
        seconds = 0.0
        for part in parts:
            seconds = seconds * 60 + float(part)
    except ValueError:
        raise ListFormatError(f"{where}: bad timestamp {text!r} (expected HH:MM:SS.ff)") from None
    return seconds


def _class_index(text: str | None, column: str, where: str) -> int:
    try:
        return int(text or "")
    except ValueError:
        raise ListFormatError(f"{where}: {column} {(text or '')[:40]!r} is not a class index") from None


def read_epic(path: Path, src: Path | None, num_verbs: int, num_nouns: int) -> tuple[list[ClipItem], LabelSet]:
    index = FileIndex(src) if src else None
    items = []
    with _utf8(path), open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        needed = {"narration_id", "video_id", "start_timestamp", "stop_timestamp", "verb_class", "noun_class"}
        missing = needed - set(reader.fieldnames or ())
        if missing:
            raise ListFormatError(f"{path}: not an Epic-Kitchens annotation CSV, missing columns {sorted(missing)}")
        for row in reader:
            line = reader.line_num  # the file's line (a row may span several), not the row's number
            where = f"{path}:{line}"
            start = _timestamp(row["start_timestamp"] or "", where)  # None: a short row
            end = _timestamp(row["stop_timestamp"] or "", where)
            verb = _class_index(row["verb_class"], "verb_class", where)
            noun = _class_index(row["noun_class"], "noun_class", where)
            if not (0 <= verb < num_verbs and 0 <= noun < num_nouns):
                raise ListFormatError(f"{where}: verb {verb} / noun {noun} outside {num_verbs} verbs / {num_nouns} nouns")
            found = index.find(row["video_id"], None) if index else None
            items.append(ClipItem(
                item_id=row["narration_id"], video_id=row["video_id"], source=f"{path.name}:{line}",
                path=str(found[0].resolve()) if found else None, start=start, end=end,
                labels=(), extra={"narration_id": row["narration_id"], "verb_class": verb, "noun_class": noun,
                                  "narration": row.get("narration", ""), "verb": row.get("verb", ""),
                                  "noun": row.get("noun", "")},
            ))
    return items, LabelSet(heads=(("verb", num_verbs), ("noun", num_nouns)))


def read_generic(path: Path, src: Path | None) -> tuple[list[ClipItem], LabelSet]:
    root = src if src is not None else path.parent
    items = []
    with _utf8(path), open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, skipinitialspace=True)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise ListFormatError(f"{path}: a generic list needs a header with a 'path' column (path,labels[,start,end])")
        for row in reader:
            line = reader.line_num  # the file's line (blank lines are skipped, a row may span several)
            rel = row["path"].strip()
            file_path = Path(rel) if Path(rel).is_absolute() else root / rel
            start = _seconds(row["start"], "start", f"{path}:{line}") if row.get("start") else None
            end = _seconds(row["end"], "end", f"{path}:{line}") if row.get("end") else None
            if (start is None) != (end is None):
                raise ListFormatError(f"{path}:{line}: give both start and end, or neither")
            item_id = rel if start is None else f"{rel}_{int(round(start * 1000))}"
            split = (row.get("split") or "train").strip()
            items.append(ClipItem(
                item_id=item_id, video_id=rel, source=f"{path.name}:{line}",
                path=str(file_path.resolve()) if file_path.is_file() else None,
                start=start, end=end, labels=_split_labels(row.get("labels") or ""), split=split,
            ))
    names = tuple(sorted({label for item in items for label in item.labels}))
    return items, LabelSet(names, names)


def detect_format(path: Path) -> str:
    """Guess a list's format from its first lines."""
    with _utf8(path), open(path, encoding="utf-8") as handle:
        head = [handle.readline() for _ in range(5)]
    text = "".join(head)
    if text.lstrip().startswith("{"):
        return "cavmae"  # the only JSON list
    if "YTID" in text and "positive_labels" in text:
        return "audioset"
    first = head[0].lower()
    if "narration_id" in first and "verb_class" in first:
        return "epic"
    if first.split(",")[0].strip() == "path":
        return "generic"
    row = next(csv.reader([head[0]]), [])
    if len(row) in (3, 4) and re.fullmatch(r"\d+(\.\d+)?", row[1].strip() if len(row) > 1 else ""):
        return "vggsound"
    raise ListFormatError(f"{path}: cannot tell the list format from its first line; name the format (list_format)")


def read_list(path: Path, fmt: str, src: Path | None, *, class_labels: Path | None = None,
              segment_seconds: float = DATASET_SEGMENT_SECONDS, num_verbs: int = EPIC_VERB_CLASSES,
              num_nouns: int = EPIC_NOUN_CLASSES):
    """Items and label set of a list file in any of the CSV formats (``cavmae``: cavmae_prepared.py)."""
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt == "audioset":
        return fmt, *read_audioset(path, src, class_labels)
    if fmt == "vggsound":
        return fmt, *read_vggsound(path, src, segment_seconds)
    if fmt == "epic":
        return fmt, *read_epic(path, src, num_verbs, num_nouns)
    if fmt == "generic":
        return fmt, *read_generic(path, src)
    raise ListFormatError(f"unknown list format {fmt!r}; choose one of {', '.join(LIST_FORMATS)}")
