"""Reading the files of a shard root wherever it lives: a local folder, a URL prefix that fsspec opens
(``s3://bucket/shards``, ``gs://bucket/shards``, ``https://host/shards``), or a webdataset ``pipe:``
command (``webdataset.gopen``) holding ``{}`` where a file's name goes (``pipe:aws s3 cp s3://b/shards/{} -``).
Every file of the folder (manifest.json, NAME.tar, .idx, .crc, .labels) is read the same way. No HTTP or S3 client of
its own: fsspec (s3fs, gcsfs, aiohttp) and webdataset do the talking; storage.py bounds each request, tries again
after a timeout or an unreachable store (storage.Retries), and turns the failures into one line.

Whole files are read in one request (several of one store at once, read_many); long files front to back through
forward_reader.ForwardReader."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from avmae.forward_reader import READ_AHEAD, ForwardReader
from avmae.storage import (PIPE, Retries, StorageError, filesystem_of, is_missing, is_pipe, is_url,
                           missing_or_storage_errors, storage_errors, transient_kind, with_retries)


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


def read_bytes(location: str | Path) -> bytes:
    """The whole file; FileNotFoundError naming it when it is not there (a 404, a missing key), StorageError for the
    rest."""
    if not is_url(location):
        try:
            return Path(location).read_bytes()
        except FileNotFoundError:
            raise _not_found(location) from None
    if is_pipe(location):
        with ForwardReader(location) as reader:
            return reader.read_all()
    filesystem, path = filesystem_of(location)
    with missing_or_storage_errors(location):
        return with_retries(location, lambda: filesystem.cat_file(path))


def _not_found(location: str | Path) -> FileNotFoundError:
    err = FileNotFoundError(f"{location}: not found")
    err.filename = str(location)  # for a caller that says which of its files it was
    return err


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
        _fetch_many(urls, found)
    return [found[location] for location in locations]


def _fetch_many(urls: list[str], found: dict[str, bytes]) -> None:
    """The files of ``urls`` (one store) into ``found``; those that timed out or found the store unreachable are
    asked again, within one Retries of the first of them still missing."""
    filesystem, _ = filesystem_of(urls[0])
    paths = {location: filesystem_of(location)[1] for location in urls}
    retries: Retries | None = None
    while True:
        wanted = {location: path for location, path in paths.items() if location not in found}
        try:
            fetched = filesystem.cat(list(wanted.values()), on_error="return")
        except Exception as err:  # noqa: BLE001 -- all but a timeout or an unreachable store: one line, at once
            if transient_kind(err) is None:
                with storage_errors(urls[0]):
                    raise
            retries = retries or Retries(urls[0])
            retries.failed(err)
            continue
        again = None
        for location, path in wanted.items():
            data = fetched.get(path)
            if isinstance(data, BaseException) and transient_kind(data):
                again = again or (location, data)
                continue
            if data is None or is_missing(data):
                raise _not_found(location)
            if isinstance(data, BaseException):
                with storage_errors(location):
                    raise data
            found[location] = data
        if again is None:
            return
        retries = retries or Retries(again[0])
        retries.failed(again[1])


def exists(location: str | Path) -> bool:
    if not is_url(location):
        return Path(location).exists()
    if is_pipe(location):
        return _pipe_exists(location)
    filesystem, path = filesystem_of(location)
    # info(), not exists(): fsspec's HTTP exists() answers False for any failure, a refused connection included.
    try:
        with storage_errors(location):
            with_retries(location, lambda: filesystem.info(path))
    except StorageError as err:
        if err.__cause__ is not None and is_missing(err.__cause__):
            return False
        raise
    return True


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
