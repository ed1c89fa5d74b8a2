"""Reading the files of a shard root wherever it lives: a local folder, a URL prefix that fsspec opens
(``s3://bucket/shards``, ``gs://…`` with gcsfs installed, ``https://host/shards``), or a webdataset ``pipe:``
command (``webdataset.gopen``) holding ``{}`` where a file's name goes (``pipe:aws s3 cp s3://b/shards/{} -``).
Every file of the folder (manifest.json, NAME.tar, NAME.idx, NAME.crc) is read the same way. No HTTP or S3 client of
its own: fsspec (s3fs, gcsfs, aiohttp) and webdataset do the talking; storage.py turns their failures into one line.

Object stores are good at long sequential reads and poor at many small ones, so ``ForwardReader`` reads a file front
to back over one open stream: it skips forward without a new request where the store serves ranges (s3, gs; a
local file), by reading on over HTTP (``http.server`` and many CDNs ignore ranges) and pipes, and opens the file
again only to go back."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from avmae.storage import PIPE, StorageError, filesystem_for, is_pipe, is_url, storage_errors

READ_AHEAD = 16 << 20  # bytes per ranged request of s3/gs streams: long reads, a few requests per shard
_SKIP_CHUNK = 1 << 20
_RETRIES = 2  # a stream cut mid-read (a reset connection) is reopened at the byte it reached, this many times


_FILESYSTEMS: dict[tuple[Any, ...], Any] = {}


def filesystem_of(location: str) -> tuple[Any, str]:
    """The fsspec file system of ``location`` and the path in it: one instance per protocol and process (a client
    costs ~0.3 s to set up; a forked worker makes its own, as storage.filesystem_for intends)."""
    settings = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(("AWS_", "FSSPEC_", "GOOGLE_"))))
    key = (os.getpid(), location.split("://", 1)[0], settings)  # new credentials or endpoint: a new client
    if key not in _FILESYSTEMS:
        _FILESYSTEMS[key] = filesystem_for(location)[0]
    filesystem = _FILESYSTEMS[key]
    return filesystem, filesystem._strip_protocol(location).rstrip("/")


def _is_fsspec(location: str | Path) -> bool:
    return is_url(location) and not is_pipe(location)


def join(root: str | Path, name: str) -> str:
    """The location of file ``name`` of shard root ``root`` (a folder, a URL prefix or a ``pipe:`` template). In a
    ``pipe:`` command the name is shell-quoted: names come from a manifest, which must not add commands (the readers
    also refuse names that are not plain file names, shard/format.py SHARD_FILE_NAME)."""
    if not is_url(root):
        return str(Path(root) / name)
    if is_pipe(root):
        if "{}" not in root:
            raise StorageError(f"{root}: a pipe: shard root needs {{}} where a file's name goes, e.g. "
                               "pipe:cat /data/shards/{} (manifest.json and each NAME.tar, .idx, .crc are read "
                               "through it)")
        return root.replace("{}", shlex.quote(name))
    return root.rstrip("/") + "/" + name


@contextmanager
def _missing_or_storage_errors(location: str) -> Iterator[None]:
    """storage_errors, except that a file that is not there (a 404, a missing key) stays a FileNotFoundError."""
    try:
        with storage_errors(location):
            yield
    except StorageError as err:
        if isinstance(err.__cause__, FileNotFoundError):
            raise FileNotFoundError(f"{location}: not found") from None
        raise


def read_bytes(location: str | Path) -> bytes:
    """The whole file; FileNotFoundError when it is not there (a 404, a missing key), StorageError for the rest."""
    if not is_url(location):
        return Path(location).read_bytes()
    if is_pipe(location):
        with ForwardReader(location) as reader:
            return reader.read_all()
    filesystem, path = filesystem_of(location)
    with _missing_or_storage_errors(location):
        return filesystem.cat_file(path)


def read_text(location: str | Path) -> str:
    return read_bytes(location).decode("utf-8")


def read_many(locations: list[str]) -> list[bytes]:
    """Several whole files (a split's indexes and checksum sidecars): fsspec fetches those of one store
    concurrently, so a thousand small objects cost a few round trips, not a thousand."""
    found: dict[str, bytes] = {}
    urls = [location for location in locations if _is_fsspec(location)]
    for location in locations:
        if not _is_fsspec(location):
            found[location] = read_bytes(location)
    if urls:
        filesystem, _ = filesystem_of(urls[0])
        paths = {location: filesystem_of(location)[1] for location in urls}
        with storage_errors(urls[0]):
            fetched = filesystem.cat(list(paths.values()), on_error="return")
        for location, path in paths.items():
            data = fetched.get(path)
            if data is None or isinstance(data, BaseException):
                if data is None or isinstance(data, FileNotFoundError):
                    raise FileNotFoundError(f"{location}: not found")
                with storage_errors(location):
                    raise data
            found[location] = data
    return [found[location] for location in locations]


def exists(location: str | Path) -> bool:
    if not is_url(location):
        return Path(location).exists()
    if is_pipe(location):
        return _pipe_exists(location)
    filesystem, path = filesystem_of(location)
    with storage_errors(location):
        return filesystem.exists(path)


# What a command's error output says when the file it was asked for is not there: cat and other POSIX tools, the aws,
# gsutil/gcloud and curl tools (curl -f: "The requested URL returned error: 404"), an HTTP or S3 404.
_MISSING_WORDS = ("no such file", "not found", "does not exist", "nosuchkey", "error: 404", "(404)", "404 not found",
                  "matched no objects")


def _pipe_exists(location: str) -> bool:
    """A command cannot be asked whether its file exists: it does if the command gives a first byte or succeeds.
    A command that fails is "missing" only where its error output says so; any other failure (a typo, a refused
    credential, an unreachable host) is a StorageError naming the command, its exit status and its last error line,
    not a missing file."""
    command = location[len(PIPE):]
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=errors)
        try:
            if process.stdout.read(1):
                return True
        finally:
            process.stdout.close()
            if process.poll() is None:
                process.terminate()
            status = process.wait()
        if status == 0:
            return True  # an empty file
        errors.seek(0)
        said = errors.read().decode("utf-8", "replace").strip()
    if any(words in said.lower() for words in _MISSING_WORDS):
        return False
    last = said.splitlines()[-1] if said else "no error output"
    raise StorageError(f"{command}: the command failed with exit status {status} ({last})")


def copy_to(location: str | Path, path: Path) -> Path:
    """``location`` copied to the local file ``path`` in one sequential read."""
    if not is_url(location):
        shutil.copyfile(location, path)
        return path
    with ForwardReader(location) as reader, open(path, "wb") as out:
        at = 0
        while chunk := reader.read(at, at + READ_AHEAD):
            out.write(chunk)
            at += len(chunk)
    return path


class ForwardReader:
    """Byte ranges of one file over one open stream: ``read(start, end)`` returns fewer bytes than asked only where
    the file ends. Reads that go forward reuse the stream; going back opens the file again (a ``pipe:`` command runs
    again). Opened lazily, so a copy pickled to a worker process opens its own."""

    def __init__(self, location: str | Path):
        self.location = str(location)
        self.kind = ("local" if not is_url(location) else "pipe" if is_pipe(self.location)
                     else "stream" if self.location.startswith(("http://", "https://")) else "ranged")
        self._stream: IO[bytes] | None = None
        self._position = 0
        self._ended = False  # the stream reached the file's end

    def __enter__(self) -> ForwardReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_stream": None, "_position": 0, "_ended": False}

    def _open(self, start: int) -> None:
        self.close()
        if self.kind == "local":
            self._stream = open(self.location, "rb")
        elif self.kind == "pipe":
            from webdataset.gopen import gopen

            self._stream = gopen(self.location, "rb")
        else:
            filesystem, path = filesystem_of(self.location)
            # HTTP: a plain streaming GET (block_size 0); s3/gs: ranged GETs of READ_AHEAD bytes, read ahead.
            options = {"block_size": 0} if self.kind == "stream" else {"block_size": READ_AHEAD,
                                                                          "cache_type": "readahead"}
            with _missing_or_storage_errors(self.location):
                self._stream = filesystem.open(path, "rb", **options)
        self._position, self._ended = 0, False
        if start:
            self._skip(start)

    def _skip(self, count: int) -> None:
        if self.kind in ("local", "ranged"):
            self._stream.seek(self._position + count)
            self._position += count
            return
        while count and not self._ended:
            count -= len(self._read_some(min(count, _SKIP_CHUNK)))

    def _read_some(self, count: int) -> bytes:
        """Up to ``count`` bytes; b"" only at the end of the file (where a pipe's exit status is checked)."""
        for attempt in range(_RETRIES + 1):
            try:
                chunk = self._stream.read(count)
                if not chunk and self.kind == "pipe":
                    self._stream.close()  # raises when the command failed
                break
            except Exception as err:
                if self.kind == "pipe" and isinstance(err, OSError):
                    raise StorageError(f"{self.location[len(PIPE):]}: the command failed after {self._position} "
                                       f"bytes ({str(err).splitlines()[0]})") from None
                if self.kind == "local" or attempt == _RETRIES or isinstance(err, FileNotFoundError):
                    with storage_errors(self.location):
                        raise
                self._open(self._position)  # a cut connection: reopen at the byte reached and go on
        self._position += len(chunk)
        self._ended = not chunk
        return chunk

    def read(self, start: int, end: int) -> bytes:
        if self._stream is None or start < self._position:
            self._open(start)
        elif start > self._position:
            self._skip(start - self._position)
        parts, wanted = [], end - start
        while wanted > 0 and not self._ended:
            chunk = self._read_some(wanted)
            parts.append(chunk)
            wanted -= len(chunk)
        return b"".join(parts)

    def read_all(self) -> bytes:
        parts, at = [], 0
        while chunk := self.read(at, at + READ_AHEAD):
            parts.append(chunk)
            at += len(chunk)
        return b"".join(parts)

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is None:
            return
        if self.kind == "pipe" and not self._ended:
            stream.proc.terminate()  # stopped early on purpose: its exit status says nothing
        try:
            stream.close()
        except OSError:
            if self.kind != "pipe":
                raise
