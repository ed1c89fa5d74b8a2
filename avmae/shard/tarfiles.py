"""Reproducible WebDataset tars and their DALI index files.

Tars are USTAR (DALI fails on PAX headers, webdataset#144) with fixed owner, mode and mtime, so the same samples
always give the same bytes. The DALI index (``wds2idx`` format v1.2) lists, per sample, each member's extension,
data offset, size and name; DALI needs it to shard by sample without scanning every tar at start-up.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from avmae.shard.format import crc32

INDEX_VERSION = "v1.2"
_FIXED_MTIME = 0  # 1970-01-01: byte-identical rebuilds


@dataclass(frozen=True)
class Member:
    name: str  # "<key>.<ext>"
    offset: int  # of the data, past the 512-byte header
    size: int

    @property
    def key(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def ext(self) -> str:
        return self.name.split(".", 1)[1]


class ShardTarWriter:
    """Writes samples (dicts of extension -> bytes) into one tar, remembering member offsets for the index and
    each member's CRC32 for the checksum sidecar (format.py)."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "wb")
        self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        self.members: list[Member] = []
        self.checksums: list[tuple[str, int]] = []  # (member name, CRC32) in tar order
        self.samples = 0

    def write(self, key: str, members: dict[str, bytes]) -> None:
        if "." in key or "/" in key:
            raise ValueError(f"sample key {key!r} must not contain '.' or '/'")
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(data)
            info.mtime = _FIXED_MTIME
            info.mode = 0o444
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            offset = self._tar.offset + tarfile.BLOCKSIZE  # data starts after the header block
            self._tar.addfile(info, io.BytesIO(data))
            self.members.append(Member(info.name, offset, len(data)))
            self.checksums.append((info.name, crc32(data)))
        self.samples += 1

    def close(self) -> None:
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()


def index_text(members: list[Member]) -> str:
    """DALI's webdataset index for members in tar order (consecutive members with one key form a sample)."""
    samples: list[list[Member]] = []
    for member in members:
        if samples and samples[-1][0].key == member.key:
            samples[-1].append(member)
        else:
            samples.append([member])
    lines = [f"{INDEX_VERSION} {len(samples)}"]
    for sample in samples:
        lines.append(" ".join(f"{m.ext} {m.offset} {m.size} {m.name}" for m in sample))
    return "\n".join(lines) + "\n"


def read_members(path: Path) -> list[Member]:
    """Members of an existing tar, as the index describes them (raises tarfile.TarError on a damaged tar)."""
    with tarfile.open(path, mode="r:") as tar:
        return [Member(info.name, info.offset_data, info.size) for info in tar.getmembers() if info.isfile()]


def sample_span(members: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """The bytes [start, end) of a tar that hold a sample's members whole, from each member's (data offset, size):
    the first member's header block to the last member's last data byte."""
    members = list(members)
    return min(offset for offset, _ in members) - tarfile.BLOCKSIZE, max(offset + size for offset, size in members)


def parse_index(text: str) -> list[list[Member]]:
    """Samples of an index file; raises ValueError on a malformed one."""
    lines = text.strip().splitlines()
    if not lines:
        raise ValueError("empty index")
    header = lines[0].split()
    if len(header) != 2 or header[0] != INDEX_VERSION:
        raise ValueError(f"index header {lines[0]!r} is not '{INDEX_VERSION} <count>'")
    samples = []
    for line in lines[1:]:
        fields = line.split()
        if len(fields) % 4:
            raise ValueError(f"index line {line!r} is not groups of 'ext offset size name'")
        samples.append([Member(fields[i + 3], int(fields[i + 1]), int(fields[i + 2])) for i in range(0, len(fields), 4)])
    if len(samples) != int(header[1]):
        raise ValueError(f"index says {header[1]} samples but lists {len(samples)}")
    return samples


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()
