"""Videos inside tar files (local paths or fsspec URLs: s3://, https://, gs://...), read without unpacking the tar.

Collecting the inputs reads each tar once, in order: the headers, and the bytes of the small members (JSON, text).
A local tar, or one in an object store (s3://, gs://...), is opened seekable, so the video bytes are skipped: on an
object store each read past the cache fetches one block of ``_LIST_BLOCK_BYTES`` with a ranged GET, so a member
group (headers, JSON, caption) costs about one request and a video's bytes none. (Streaming an object instead
costs one request per 10 KB tar record: 3,911 GETs for a 40 MB tar.) An HTTP URL is streamed: a server may ignore
Range headers. Each video member is then known by its offset and size in the tar.

Decoding a member reads just those bytes: a seek on a local file, one ranged read of exactly the member on an object
store. An HTTP server that ignores Range headers (``python -m http.server`` does) is read as a stream up to the
member's end instead: it works, at the price of transferring the tar's bytes before the member for every clip.

What stops a listing decides what it becomes. A damaged tar (tarfile's errors, a stream cut short) is a fact of the
data: the members before the break stay and the tar is a failure (``unreadable_tar``), described by words that depend
on its bytes only, since the build's fingerprint holds them. A tar that does not exist is a failure too. Any other
error of the storage (a refused connection, a 503, a reset) says nothing about the tar: it stops the collection with
one line naming the URL, and the same build run again lists the tar and resumes.

ffmpeg then reads the bytes from memory. Not through a pipe: an mp4 whose index (moov atom) is written at the end,
which is the default of ffmpeg's muxer and of most downloads, cannot be demuxed from a non-seekable pipe. The bytes go
into an anonymous memory file (``memfd_create``), which ffmpeg opens as ``/proc/<pid>/fd/<n>``: seekable like any
file, never on a disk, and freed when closed, also when the process is killed (a /dev/shm file would outlive a killed
worker). Where memfd is missing (not Linux) a temporary file is used instead.
"""

from __future__ import annotations

import os
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from avmae.forward_reader import ForwardReader
from avmae.shard.inputs.media import MediaError
from avmae.storage import StorageError, filesystem_of, is_missing, is_url, storage_errors

_SMALL_MEMBER_BYTES = 1 << 20  # members read at collection time (JSON, text); a video is never read then
# One ranged GET per read past the cache while listing a tar in an object store: enough for a member group's
# headers and JSON (video2dataset's yt_meta_dict can be ~100 KB), small beside a video, which is skipped by a seek.
_LIST_BLOCK_BYTES = 1 << 18


@dataclass(frozen=True)
class TarEntry:
    name: str
    offset: int  # of the member's data in the tar
    size: int
    data: bytes | None  # the bytes of a small member that was asked for; None for the others


@dataclass
class TarListing:
    url: str
    entries: list[TarEntry]
    error: str | None = None  # why the listing stopped early (a cut or corrupt tar), or why it could not start
    # Members that are no regular file and no folder, never read, each (name, what it is): a symbolic or hard link
    # (its bytes are another member's, or a path outside the tar), a device or a FIFO.
    unread: list[tuple[str, str]] = field(default_factory=list)


def unread_kind(info: tarfile.TarInfo) -> str | None:
    """What a member that is not read is (a link names its target), or None for a regular file or a folder."""
    if info.isfile() or info.isdir():
        return None
    if info.issym():
        return f"symbolic link to {info.linkname}"
    if info.islnk():
        return f"hard link to {info.linkname}"
    return "device or FIFO" if info.isdev() else f"special member (tar type {info.type!r})"


def expand_sources(src: str) -> list[str]:
    """The tars a ``src`` names: webdataset's shard syntax (braces ``{00000..00099}``, several patterns joined by
    ``::``), or a local folder's ``*.tar`` files, sorted."""
    if not is_url(src) and Path(src).is_dir():
        return [str(path) for path in sorted(Path(src).glob("*.tar"))]
    from webdataset.shardlists import expand_urls

    return list(expand_urls(src))


def _is_http(url: str) -> bool:
    return url.lower().startswith(("http://", "https://"))


@contextmanager
def _opened(url: str, streaming: bool, **options) -> Iterator:
    """A binary file of the tar; a storage failure inside the block becomes a StorageError naming ``url``."""
    with storage_errors(url):
        if not is_url(url):
            with open(url, "rb") as handle:
                yield handle
            return
        filesystem, path = filesystem_of(url)
        # block_size=0: fsspec's sequential stream (HTTP), no ranged requests
        with filesystem.open(path, "rb", **({"block_size": 0} if streaming else options)) as handle:
            yield handle


def list_tar(url: str, read_small: Callable[[str], bool]) -> TarListing:
    """Every regular member of the tar with its offset and size; ``read_small(name)`` says which members' bytes to
    keep; the members that are not read (links, devices) by name, for the caller to count. A tar that breaks part way
    keeps the members listed before the break, with the error; a storage failure raises StorageError (see above)."""
    entries: list[TarEntry] = []
    unread: list[tuple[str, str]] = []
    streaming = _is_http(url)
    options = {"block_size": _LIST_BLOCK_BYTES, "cache_type": "readahead"}
    try:
        with _opened(url, streaming, **options) as handle:
            with tarfile.open(fileobj=handle, mode="r|" if streaming else "r:") as tar:
                for info in tar:
                    if not info.isfile():
                        kind = unread_kind(info)
                        if kind is not None:
                            unread.append((info.name, kind))
                        continue
                    data = None
                    if read_small(info.name) and info.size <= _SMALL_MEMBER_BYTES:
                        data = tar.extractfile(info).read()
                        if len(data) != info.size:  # a stream that ends inside the member
                            raise EOFError(f"member {info.name} ends after {len(data)} of its {info.size} bytes")
                    entries.append(TarEntry(info.name, info.offset_data, info.size, data))
    except (tarfile.TarError, EOFError) as err:
        return TarListing(url, entries, f"{type(err).__name__}: {err}", unread)
    except StorageError as err:
        if err.__cause__ is None or not is_missing(err.__cause__):  # an unreachable store is not a missing tar
            raise
        return TarListing(url, entries, "the tar does not exist", unread)
    return TarListing(url, entries, unread=unread)


def read_member(url: str, offset: int, size: int) -> bytes:
    """The ``size`` bytes at ``offset`` of the tar at ``url``; MediaError('unreadable_member') naming the tar when
    the tar is shorter than when it was listed; an OSError naming it when the read itself fails."""
    try:
        if not is_url(url):
            with open(url, "rb") as handle:
                handle.seek(offset)
                data = handle.read(size)
        elif not _is_http(url):  # an object store: one ranged GET of exactly the member
            filesystem, path = filesystem_of(url)
            with storage_errors(url):
                data = filesystem.cat_file(path, start=offset, end=offset + size)
        else:
            try:
                # cache_type="none": one ranged request of the member, no read-ahead of the next block
                with _opened(url, streaming=False, cache_type="none") as handle:
                    handle.seek(offset)
                    data = handle.read(size)
            except ValueError:  # fsspec: "The HTTP server doesn't appear to support range requests"
                with ForwardReader(url) as reader:  # one streaming GET, read on up to the member
                    data = reader.read(offset, offset + size)
    except StorageError:
        raise  # a store or network failure says nothing about the clip: the build stops, and the same build resumes
    except OSError as err:  # the same for a local read error (a failure recorded now would be final for the build)
        raise OSError(err.errno, f"{url}: cannot read the member at byte {offset}: {err.strerror or err}") from None
    if len(data) != size:
        raise MediaError("unreadable_member", f"{url}: {len(data)} of the member's {size} bytes at offset {offset} "
                                              "could be read (the tar is shorter than when it was listed)")
    return data


@contextmanager
def member_file(data: bytes, name: str) -> Iterator[str]:
    """A path ffmpeg and ffprobe can open and seek that holds ``data``, kept in memory (see above)."""
    if hasattr(os, "memfd_create"):
        descriptor = os.memfd_create(f"avmae-{Path(name).name}"[:200])
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(descriptor, view):]
            yield f"/proc/{os.getpid()}/fd/{descriptor}"
        finally:
            os.close(descriptor)
        return
    with tempfile.NamedTemporaryFile(suffix=Path(name).suffix) as handle:  # pragma: no cover - not Linux
        handle.write(data)
        handle.flush()
        yield handle.name
