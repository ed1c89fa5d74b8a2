"""video2dataset output as build inputs: its tar shards, read in place (source_tars.py).

video2dataset writes, per sample ``KEY`` (``workers/download_worker.py`` and ``data_writer.py``, iejMac/video2dataset):
``KEY.mp4`` (or the other encode formats, e.g. ``KEY.webm``, ``KEY.m4a`` for audio), ``KEY.txt`` (the caption, if
any) and ``KEY.json``: the input row's columns (``url``, ``caption``, any saved column), ``key``, ``status``
(``success``, ``failed_to_download``, ``failed_to_subsample``), ``error_message``, ``yt_meta_dict`` and, for clips cut
by its clipping subsampler, ``clips = [[start, end]]`` (seconds, or ``HH:MM:SS.fff`` text) in the original video,
the clip's key then being ``KEY_00000``. A failed download is written too: its JSON (and text), without a video.

Members are grouped by key as webdataset groups them (the name up to the first dot of its base name). Every group is
one input, so every member is accounted for:
- a video (with its JSON, if any): an input decoded like a file; ids and labels from the JSON;
- a JSON without a video: a failure, ``download_failed`` with video2dataset's own error when its status says so,
  else ``no_video_member``;
- anything else (a member that is no video, a stray file): a failure ``not_a_video`` naming the members;
- a member that is a symbolic or hard link (or a device, a FIFO): never read (a link's bytes are another member's or
  a path outside the tar), a failure ``link_member`` of its own naming it and its target;
- a tar that cannot be read whole: a failure ``unreadable_tar`` naming it (the members before the break stay).
Labels without a list come from a ``labels`` (or ``label``) column saved in the JSON. With a list (AudioSet or
VGGSound), rows are joined to the videos by YouTube id: a whole video is cut at the row's segment, a clip whose
``clips`` start is the row's start is read from its beginning; the list's rows are then the inputs, and the videos no
row names are counted as ignored. A failure that no YouTube id ties to a row (a cut tar, a stray file, bad JSON) stays
an input of its own: it may be what a row marked ``missing`` is missing, and its reason must reach failures.jsonl.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import replace
from typing import Any
from urllib.parse import parse_qs, urlparse

from avmae.shard.inputs.items import VIDEO_EXTENSIONS, ClipItem
from avmae.shard.inputs.source_tars import TarEntry, TarListing, expand_sources, list_tar

_TEXT_EXTENSIONS = ("json", "txt")
_YOUTUBE_HOSTS = ("youtube.com", "www.youtube.com", "m.youtube.com", "youtube-nocookie.com", "www.youtube-nocookie.com")


def _split_name(name: str) -> tuple[str, str]:
    """(key, extension) as webdataset splits a member name: at the first dot of the base name."""
    folder, _, base = name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


def youtube_id(url: str | None) -> str | None:
    """The video id of a YouTube URL (watch?v=, youtu.be/, /shorts/, /embed/), None for anything else."""
    if not url:
        return None
    parsed = urlparse(url)
    host = parsed.netloc.lower()
    if host == "youtu.be":
        return parsed.path.strip("/").split("/")[0] or None
    if host in _YOUTUBE_HOSTS:
        if parsed.path == "/watch":
            return (parse_qs(parsed.query).get("v") or [None])[0]
        match = re.match(r"^/(?:shorts|embed|v|live)/([^/?#]+)", parsed.path)
        return match.group(1) if match else None
    return None


def _seconds(value: Any) -> float | None:
    """A clip bound as video2dataset writes it: a number, or ``HH:MM:SS.fff`` text."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            total = 0.0
            for part in value.split(":"):
                total = total * 60 + float(part)
            return total
        except ValueError:
            return None
    return None


def _clip_span(meta: dict[str, Any]) -> tuple[float, float] | None:
    clips = meta.get("clips")
    if isinstance(clips, list) and len(clips) == 1 and isinstance(clips[0], (list, tuple)) and len(clips[0]) == 2:
        start, end = _seconds(clips[0][0]), _seconds(clips[0][1])
        if start is not None and end is not None:
            return start, end
    return None


def _labels(meta: dict[str, Any]) -> tuple[str, ...]:
    value = meta.get("labels", meta.get("label"))
    if isinstance(value, list):
        return tuple(str(label) for label in value)
    if isinstance(value, (str, int)):
        return tuple(label.strip() for label in re.split(r"[;|,]", str(value)) if label.strip())
    return ()


def _ytid(meta: dict[str, Any]) -> str | None:
    found = youtube_id(meta.get("url"))
    yt_meta = meta.get("yt_meta_dict")
    if found is None and isinstance(yt_meta, dict):
        info = yt_meta.get("info") if isinstance(yt_meta.get("info"), dict) else yt_meta
        found = info.get("id") if isinstance(info.get("id"), str) else None
    for column in ("ytid", "YTID", "youtube_id"):
        if found is None and isinstance(meta.get(column), str):
            found = meta[column]
    return found


def _group_item(url: str, key: str, members: dict[str, TarEntry]) -> ClipItem:
    """The input of one key's members (see the module's rules)."""
    names = sorted(entry.name for entry in members.values())
    source = f"{url}#{names[0] if len(names) == 1 else key + '.{' + ','.join(sorted(members)) + '}'}"
    meta: dict[str, Any] = {}
    json_entry = members.get("json")
    fault = None
    if json_entry is not None:
        try:
            meta = json.loads(json_entry.data or b"")
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as err:
            fault = ("bad_json", f"{url}: member {json_entry.name} is not video2dataset metadata ({err})")
            meta = {}
    videos = sorted(ext for ext in members if f".{ext.rpartition('.')[2]}" in VIDEO_EXTENSIONS)
    ytid = _ytid(meta)
    caption = members["txt"].data.decode("utf-8", "replace") if "txt" in members and members["txt"].data else None
    extra: dict[str, Any] = {"v2d_tar": url, "v2d_key": meta.get("key", key.rpartition("/")[2]),
                             "v2d_members": names}
    for name, value in (("url", meta.get("url")), ("ytid", ytid), ("caption", caption),
                        ("v2d_clip", list(_clip_span(meta) or ()) or None)):
        if value is not None:
            extra[name] = value
    item = ClipItem(item_id=str(extra["v2d_key"]), video_id=ytid or meta.get("url") or f"{url}#{key}", source=source,
                    path=url, labels=_labels(meta), extra=extra)
    if fault is None and videos:
        video = members[videos[0]]
        return replace(item, member=video.name,
                       extra={**extra, "v2d_member_offset": video.offset, "v2d_member_bytes": video.size})
    if fault is None and json_entry is not None:
        status = str(meta.get("status"))
        if status.startswith("failed"):
            fault = ("download_failed", f"{url}: {json_entry.name}: status {status}: {meta.get('error_message')}")
        else:
            fault = ("no_video_member", f"{url}: {key} has no video member (status {status}; members {', '.join(names)})")
    elif fault is None:
        fault = ("not_a_video", f"{url}: {', '.join(names)}: no video member and no video2dataset JSON")
    return replace(item, member=names[0], fault=fault)


def tar_items(src: str) -> tuple[list[ClipItem], dict[str, Any]]:
    """Inputs of every tar ``src`` names, and the source description for the manifest."""
    urls = expand_sources(src)
    items: list[ClipItem] = []
    listings: list[TarListing] = []
    for url in urls:
        listing = list_tar(url, lambda name: _split_name(name)[1] in _TEXT_EXTENSIONS)
        listings.append(listing)
        groups: dict[str, dict[str, TarEntry]] = defaultdict(dict)
        for entry in listing.entries:
            key, ext = _split_name(entry.name)
            groups[key][ext] = entry
        items += [_group_item(url, key, members) for key, members in groups.items()]
        items += [ClipItem(item_id=name, video_id=f"{url}#{name}", source=f"{url}#{name}", path=url, member=name,
                           fault=("link_member", f"{url}: member {name} is a {kind}: not read"))
                  for name, kind in listing.unread]
        if listing.error is not None:
            items.append(ClipItem(item_id=f"{url}#unreadable", video_id=url, source=url, path=url,
                                  fault=("unreadable_tar", f"{url}: read stopped after {len(listing.entries)} "
                                                           f"members: {listing.error}")))
    description = {"kind": "video2dataset", "src": src, "tars": len(urls),
                   "members": sum(len(listing.entries) for listing in listings),
                   "unreadable_tars": [listing.url for listing in listings if listing.error is not None]}
    unread = sum(len(listing.unread) for listing in listings)
    if unread:  # only then: the description of a build without any stays what it was (a resume compares it)
        description["unread_members"] = unread
    return items, description


def join_list(rows: list[ClipItem], videos: list[ClipItem]) -> tuple[list[ClipItem], int]:
    """List rows (no file yet) matched to video2dataset inputs by YouTube id, followed by the failures no YouTube id
    ties to a row; (those inputs, number of video2dataset inputs no row took). A row whose video failed to download
    carries video2dataset's error instead of plain "missing"."""
    by_ytid: dict[str, list[ClipItem]] = defaultdict(list)
    for video in videos:
        if video.extra.get("ytid"):
            by_ytid[video.extra["ytid"]].append(video)
    used: set[int] = set()
    joined = []
    for row in rows:
        candidates = by_ytid.get(row.video_id, [])
        match = _match(row, [video for video in candidates if video.fault is None])
        if match is not None:
            video, already_cut = match
            used.add(id(video))
            start, end = (0.0, row.end - row.start) if already_cut else (row.start, row.end)
            shared = {name: value for name, value in video.extra.items() if name != "ytid"}
            joined.append(replace(row, path=video.path, member=video.member, start=start, end=end,
                                  source=f"{row.source} = {video.source}", extra={**row.extra, **shared}))
            continue
        failed = [video for video in candidates if video.fault is not None]
        joined.append(replace(row, fault=failed[0].fault, extra={**row.extra, "v2d_tar": failed[0].path})
                      if failed else row)
        used.update(id(video) for video in failed)
    unmatchable = [video for video in videos if video.fault is not None and not video.extra.get("ytid")
                   and id(video) not in used]
    used.update(id(video) for video in unmatchable)
    unused = sum(1 for video in videos if id(video) not in used)
    return joined + unmatchable, unused


def _match(row: ClipItem, videos: list[ClipItem]) -> tuple[ClipItem, bool] | None:
    """(video, already cut) for a row: a whole video wins; a clip must start at the row's start."""
    for video in videos:
        if "v2d_clip" not in video.extra:
            return video, False
    for video in videos:
        if abs(video.extra["v2d_clip"][0] - row.start) < 1e-3:
            return video, True
    return None
