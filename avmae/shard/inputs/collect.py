"""The inputs of a build, from a folder of clips (``src``) or a dataset list (``list_path``, matched to files under
``src``; CAV-MAE's data JSON names its prepared frames and wavs itself). Errors name these parameters; the command
line maps them to its flags (a field's ``help`` is its flag's, as in avmae/shard/params.py)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from avmae.shard.errors import ParameterError
from avmae.shard.inputs.cavmae_prepared import read_cavmae_datafile
from avmae.shard.inputs.items import ClipItem, scan_folder
from avmae.shard.inputs.lists import (EPIC_NOUN_CLASSES, EPIC_VERB_CLASSES, LabelSet, ListFormat, detect_format,
                               read_list)
from avmae.shard.inputs.video2dataset import join_list, tar_items
from avmae.storage import is_url


@dataclass(frozen=True)
class InputSpec:
    """What a build reads: clips, tars or a list, and how the list's labels are read."""

    src: Path | str | None = field(default=None, metadata={
        "help": "folder of clips (recursive); with `list_path`, where the list's files are. Or video2dataset tars, "
                "read in place: a .tar, a folder of them, a brace pattern (downloads/{00000..00099}.tar) or a URL "
                "(s3://, https://); each KEY.mp4 (or other video) is an input with ids from KEY.json; a JSON without "
                "video, a member that is no video and a corrupt video are failures naming the tar and member; with "
                "an AudioSet/VGGSound `list_path`, rows are joined to the tars' videos by YouTube id"})
    list_path: Path | None = field(default=None, metadata={
        "help": "dataset list: AudioSet segments CSV, VGGSound CSV, Epic-Kitchens-100 annotations, a generic CSV "
                "(path,labels[,start,end]), or CAV-MAE's data JSON (`list_format` cavmae)"})
    list_format: ListFormat = field(default="auto", metadata={
        "help": "cavmae: CAV-MAE's prepared data, {\"data\": [{video_id, wav, video_path, labels}]}; frames are read "
                "from video_path/frame_{i}/{video_id}.jpg, the log-mel from the 16 kHz wav as CAV-MAE computes it, no "
                "video is needed; a missing frame or wav is a failure naming the file"})
    class_labels: Path | None = field(default=None, metadata={
        "help": "AudioSet class_labels_indices.csv, or CAV-MAE's label csv (fixes the label order)"})
    labels_from_dirs: bool = field(default=False, metadata={
        "help": "with `src`: a clip's label is its folder name"})
    split: str | None = field(default=None, metadata={
        "help": "put every list row in this split (default: the list's own split or 'train')"})
    num_verbs: int = field(default=EPIC_VERB_CLASSES, metadata={"help": "Epic-Kitchens-100 verb classes"})
    num_nouns: int = field(default=EPIC_NOUN_CLASSES, metadata={"help": "Epic-Kitchens-100 noun classes"})


def is_tar_source(src: Path | str | None) -> bool:
    """Whether ``src`` names tar shards (video2dataset output) rather than a folder of clips: a URL, a ``.tar`` path,
    a brace or ``::`` pattern, or a folder that holds ``.tar`` files and no video."""
    if src is None:
        return False
    text = str(src)
    if is_url(text) or text.endswith(".tar") or "{" in text or "::" in text:
        return True
    folder = Path(text)
    return folder.is_dir() and any(folder.glob("*.tar")) and not scan_folder(folder)[0]


def list_format(spec: InputSpec) -> str | None:
    """The format of the dataset list: as named, or told from its first lines (ListFormatError when it cannot be);
    None without a list."""
    if spec.list_path is None:
        return None
    return detect_format(spec.list_path) if spec.list_format == "auto" else spec.list_format


def reads_cavmae_prepared(spec: InputSpec) -> bool:
    """Whether the build reads CAV-MAE's prepared data (frames and wavs its data JSON names; its frame count and size
    are then the defaults). A list that cannot be read or told apart is not: collect_inputs says what is wrong."""
    if spec.list_path is None or not spec.list_path.is_file():
        return spec.list_format == "cavmae"
    try:
        return list_format(spec) == "cavmae"
    except ValueError:
        return False


def collect_inputs(spec: InputSpec, *, segment_seconds: float) -> tuple[list[ClipItem], LabelSet, dict[str, Any]]:
    """(items, label set, description of the source for the manifest). A folder's description counts the files
    the scan ignored, by extension (``ignored_files``). ``segment_seconds`` is the build's segment length
    (BuildParams), which a VGGSound row's segment also has."""
    src, list_path = spec.src, spec.list_path
    if list_path is None and src is None:
        raise ParameterError("src", "is needed (a folder of clips or video2dataset tars), unless a dataset list is given")
    if list_path is not None and not list_path.is_file():
        raise ParameterError("list_path", f"{list_path} is not a file")
    if is_tar_source(src):
        items, labels, source = _tar_inputs(str(src), spec, segment_seconds)
    elif src is not None and not Path(src).is_dir():
        raise ParameterError("src", f"{src} is not a folder, a .tar file, a tar pattern or a URL")
    elif list_path is None:
        src = Path(src)
        items, ignored = scan_folder(src, labels_from_dirs=spec.labels_from_dirs)
        if not items:
            raise ParameterError("src", f"{src} holds no video files" + (
                f" (ignored: {', '.join(f'{ext}: {n}' for ext, n in ignored.items())})" if ignored else ""))
        labels = _used_labels(items)
        source = {"kind": "folder", "src": str(src.resolve()), "ignored_files": ignored}
    else:
        src = Path(src) if src is not None else None
        if reads_cavmae_prepared(spec):
            fmt = "cavmae"
            items, labels = read_cavmae_datafile(list_path, src, spec.class_labels)
        else:
            fmt, items, labels = read_list(list_path, list_format(spec), src, class_labels=spec.class_labels,
                                           segment_seconds=segment_seconds, num_verbs=spec.num_verbs,
                                           num_nouns=spec.num_nouns)
        source = {"kind": fmt, "list": str(list_path.resolve()), "src": str(src.resolve()) if src else None,
                  "class_labels": str(spec.class_labels.resolve()) if spec.class_labels else None}
    if spec.split is not None:
        items = [replace(item, split=spec.split) for item in items]
    return items, labels, source


def _used_labels(items: list[ClipItem]) -> LabelSet:
    names = tuple(sorted({label for item in items for label in item.labels}))
    return LabelSet(names, names)


def _tar_inputs(src: str, spec: InputSpec, segment_seconds: float) -> tuple[list[ClipItem], LabelSet, dict[str, Any]]:
    """video2dataset tars: every member group an input, or with a list, the list's rows joined by YouTube id."""
    videos, source = tar_items(src)
    # A tar cut part way still gives the members before the break (and its failure): only a source of which no
    # member could be listed is refused.
    if not source["members"] and source["unreadable_tars"]:
        raise ParameterError("src", f"{src}: no tar could be read, e.g. "
                                    f"{next(item.fault[1] for item in videos if item.fault)}")
    if not source["members"]:
        raise ParameterError("src", f"{src} names no tar with members ({source['tars']} tars)")
    if spec.list_path is None:
        return videos, _used_labels(videos), {**source, "ignored_files": {}}
    fmt = list_format(spec)
    if fmt not in ("audioset", "vggsound"):
        raise ParameterError("list_format", f"{fmt!r}: a list is joined to video2dataset tars by YouTube id and "
                                            "segment, which AudioSet and VGGSound lists give")
    fmt, rows, labels = read_list(spec.list_path, fmt, None, class_labels=spec.class_labels,
                                  segment_seconds=segment_seconds)
    items, unused = join_list(rows, videos)
    return items, labels, {**source, "kind": f"video2dataset+{fmt}", "list": str(spec.list_path.resolve()),
                           "ignored_files": {"(tar member groups no list row names)": unused} if unused else {}}
