"""Byte ranges of one file read front to back over one open stream, wherever the file lives: a local path, an
fsspec URL (``s3://``, ``gs://``, ``https://``) or a webdataset ``pipe:`` command.

Object stores are good at long sequential reads and poor at many small ones, so ``ForwardReader`` skips forward
without a new request where the store serves ranges (s3, gs; a local file), by reading on over HTTP
(``http.server`` and many CDNs ignore ranges) and pipes, and opens the file again only to go back. A stream cut
mid-read (a reset connection), a read that timed out and an open that found the store unreachable are tried again
at the byte reached, within the storage limits (storage.Retries: ``data.storage_retries`` further tries with
backoff), so a store that restarts for a few seconds costs a wait, not the run."""

from __future__ import annotations

from pathlib import Path
from typing import IO, Any

from avmae.storage import (PIPE, Retries, StorageError, StorageLimits, filesystem_of, is_missing, is_pipe, is_url,
                           missing_or_storage_errors, storage_errors, with_retries)

READ_AHEAD = 16 << 20  # bytes per ranged request of s3/gs streams: long reads, a few requests per shard
_SKIP_CHUNK = 1 << 20
_RETRIES = StorageLimits().retries  # further tries of a cut stream by default (data.storage_retries sets them)


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
            with missing_or_storage_errors(self.location):
                self._stream = with_retries(self.location, lambda: filesystem.open(path, "rb", **options))
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
        retries = Retries(self.location)
        while True:
            try:
                chunk = self._stream.read(count)
                if not chunk and self.kind == "pipe":
                    self._stream.close()  # raises when the command failed
                break
            except Exception as err:  # noqa: BLE001 -- sorted below: a failed command, a missing file, the rest
                if self.kind == "pipe" and isinstance(err, OSError):
                    raise StorageError(f"{self.location[len(PIPE):]}: the command failed after {self._position} "
                                       f"bytes ({str(err).splitlines()[0]})") from None
                if self.kind == "local" or is_missing(err):
                    with storage_errors(self.location):
                        raise
                with storage_errors(self.location):
                    retries.failed(err)  # a timeout or a cut connection waits here; anything else is raised
                self._open(self._position)  # reopen at the byte reached and go on
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
