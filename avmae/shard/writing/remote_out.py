"""A build whose output is a URL (``s3://bucket/prefix``, any fsspec URL): every shard is written by write_shard
into a local staging folder, exactly as a local build writes it, then uploaded and deleted locally, so the remote
bytes are the local bytes and the local disk holds only the shards in flight.

Object stores have atomic single-object PUTs (a multipart upload appears only when completed) and no rename, so
the order of the uploads is the protocol: a shard's tar, index, checksum and labels sidecars first, its part record
last. The part record is the "done" marker: a resumed build, another array task and finalize trust a shard only when
its record is there and carries the build's fingerprint; a tar without one is a leftover that the shard's next build
replaces. ``build.json`` is claimed before any shard, ``failures.jsonl`` and ``manifest.json`` are uploaded last.
Nothing the build decides is read from the staging folder of an earlier run: every run stages in a fresh
temporary folder and reads build.json and the part records from the URL.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from avmae.shard.format import SHARD_FILE_FIELDS, shard_file_names
from avmae.shard.writing.manifest import (BUILD_FILE, FAILURES_FILE, MANIFEST_FILE, claim_output, finalize,
                                         pending_shards)
from avmae.shard.writing.writer import PARTS_DIR, part_path
from avmae.storage import StorageError, filesystem_for, storage_errors


class RemoteOutput:
    """The output ``url``, staged under ``stage`` (default: the system temp folder) in a folder of this run."""

    def __init__(self, url: str, stage: Path | None = None):
        self.url = url.rstrip("/")
        self.location = self.url
        if stage is not None:
            Path(stage).mkdir(parents=True, exist_ok=True)
        # A fresh folder per run: a staging folder shared by array tasks on one node, or left by a killed run,
        # never holds a record that the URL does not.
        self.folder = Path(tempfile.mkdtemp(prefix="avmae-stage-", dir=stage))
        (self.folder / PARTS_DIR).mkdir()
        self._fs = None
        self._fs_pid = None
        self._path = None

    # The file system is opened per process: a forked build worker must not use its parent's connections.
    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fs": None, "_fs_pid": None}

    @property
    def fs(self):
        if self._fs is None or self._fs_pid != os.getpid():
            self._fs, self._path = filesystem_for(self.url)
            self._fs_pid = os.getpid()
        return self._fs

    def _remote(self, name: str) -> str:
        self.fs  # sets _path
        return f"{self._path}/{name}" if self._path else name

    def prepare(self, overwrite: bool) -> None:
        """Check that the bucket exists and the credentials reach it (one clear line, before any decoding), and
        with ``overwrite`` delete every object under the prefix (never the bucket itself)."""
        with storage_errors(self.url):
            bucket = self._remote("").split("/")[0]
            if bucket:
                try:
                    self.fs.info(bucket)
                except FileNotFoundError:
                    raise StorageError(f"{self.url}: bucket {bucket!r} does not exist (or these credentials cannot "
                                       "see it); create it first") from None
            if overwrite:
                objects = self.fs.find(self._remote(""))
                if objects:
                    self.fs.rm(objects)
                self.fs.invalidate_cache()

    def _download(self, name: str) -> bool:
        """Copy the object ``name`` into the staging folder; False when there is none."""
        try:
            data = self.fs.cat_file(self._remote(name))
        except FileNotFoundError:
            return False
        target = self.folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return True

    def _upload(self, name: str) -> None:
        self.fs.put_file(str(self.folder / name), self._remote(name))

    def claim(self, description: dict[str, Any]) -> None:
        with storage_errors(self.url):
            self.fs.invalidate_cache()
            self._download(BUILD_FILE)
            try:
                wrote = claim_output(self.folder, description, shown=self.url)
            except ValueError as err:
                if type(err) is not ValueError:  # a refused build already names the URL
                    raise
                # a damaged build.json: name the object, not its staged copy
                raise ValueError(str(err).replace(str(self.folder), self.url)) from None
            if wrote:
                self._upload(BUILD_FILE)

    def _pull_parts(self, names: list[str]) -> None:
        """The URL's part records of the planned shards, into the staging folder (replacing what was there)."""
        shutil.rmtree(self.folder / PARTS_DIR)
        (self.folder / PARTS_DIR).mkdir()
        self.fs.invalidate_cache()
        try:
            listed = set(self.fs.ls(self._remote(PARTS_DIR), detail=False, refresh=True))
        except FileNotFoundError:
            return
        wanted = [self._remote(f"{PARTS_DIR}/{name}.json") for name in names]
        found = [path for path in wanted if path in listed]
        for path, data in self.fs.cat(found).items() if found else ():
            (self.folder / PARTS_DIR / path.rsplit("/", 1)[-1]).write_bytes(data)

    def pending(self, description: dict[str, Any]) -> list[str]:
        with storage_errors(self.url):
            self._pull_parts(description["shards"])
        return pending_shards(self.folder, description)

    def publish_shard(self, name: str, record: dict[str, Any]) -> None:
        """Upload the shard write_shard just staged: tar, index, sidecars, then the part record; then free the
        local disk. A shard without samples has no tar: a tar of an earlier attempt of it is deleted first, so no
        object contradicts the record."""
        files = [record[key] for key in SHARD_FILE_FIELDS if key in record]  # the tar first, then its sidecars
        with storage_errors(self.url):
            if not files:
                stale = [self._remote(file) for file in shard_file_names(name).values()]
                self.fs.invalidate_cache()
                present = [path for path in stale if self.fs.exists(path)]
                if present:
                    self.fs.rm(present)
            for file in files:
                self._upload(file)
            self._upload(part_path(Path(), name).as_posix())
        for file in files:
            (self.folder / file).unlink()
        part_path(self.folder, name).unlink()

    def finalize(self) -> dict[str, Any]:
        """manifest.json and failures.jsonl from the URL's build.json and part records, uploaded failures first and
        manifest last (the manifest is what says the build is finished)."""
        with storage_errors(self.url):
            self.fs.invalidate_cache()
            if not self._download(BUILD_FILE):
                raise StorageError(f"{self.url}: no {BUILD_FILE} there, so no shard build to finalize")
            build = json.loads((self.folder / BUILD_FILE).read_bytes())
            self._pull_parts(build["shards"])
        manifest = finalize(self.folder)
        with storage_errors(self.url):
            self._upload(FAILURES_FILE)
            self._upload(MANIFEST_FILE)
        return manifest

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
