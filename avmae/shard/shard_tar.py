"""The shard's own tar and its DALI index: written reproducibly (writing/writer.py), parsed and read back by
``avmae-shard verify``, ``inspect`` and ``ids`` (checking/) and by the loaders (data/tar_reader.py). Source tars of
videos, read as build inputs, are inputs/source_tars.py.

Tars are USTAR (DALI fails on PAX headers, webdataset#144) with fixed owner, mode and mtime, so the same samples
always give the same bytes. The DALI index (``wds2idx`` format v1.2) lists, per sample, each member's extension,
data offset, size and name; DALI needs it to shard by sample without scanning every tar at start-up.
"""

from __future__ import annotations

import hashlib
import io
import operator
import os
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from avmae.shard.format import crc32

INDEX_VERSION = "v1.2"
_FIXED_MTIME = 0  # 1970-01-01: byte-identical rebuilds
# The largest member a USTAR header can describe (11 octal digits of size), so the largest an index of our tars can
# list: a bigger size is a damaged index, and past 2**63 os.pread fails with an OverflowError instead of a named error.
MAX_MEMBER_SIZE = 8 ** 11 - 1
_MAX_FILE_SIZE = 2 ** 63 - 1  # a file offset's range (off_t): an index pointing past it is damaged


@dataclass(frozen=True)
class Member:
    name: str  # "<key>.<ext>"
    offset: int  # of the data, past the 512-byte header
    size: int

    @property
    def key(self) -> str:
        return self.name.partition(".")[0]

    @property
    def ext(self) -> str:
        return self.name.partition(".")[2]  # "" for a name without a dot: its sample lacks the members asked for


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


def utf8_text(data: str | bytes, source: str) -> str:
    """A shard file's text (an index, a checksum sidecar); bytes that are not UTF-8 are one ValueError naming
    ``source``, not a UnicodeDecodeError that names no file."""
    if isinstance(data, str):
        return data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{source}: not UTF-8 text ({err}); the file is damaged or not avmae's") from None


def parse_index(text: str | bytes, source: str = "the index") -> list[list[Member]]:
    """Samples of an index file (``source``: its path, for the errors); a malformed one is one ValueError naming
    ``source`` and the line. Blank lines are ignored (as the surrounding ones always were). Member names are data,
    as the tar holds them: one without a '.<member>' part, or with a hostile key, is a sample that lacks the
    members a reader asks for (a SampleError when read), not a malformed index."""
    lines = [(number, line) for number, line in enumerate(utf8_text(text, source).splitlines(), 1) if line.strip()]
    if not lines:
        raise ValueError(f"{source}: empty index")
    number, first = lines[0]
    header = first.split()
    if len(header) != 2 or header[0] != INDEX_VERSION or not (header[1].isascii() and header[1].isdigit()) or (
            len(header[1]) > 18):
        raise ValueError(f"{source}:{number}: index header {first[:80]!r} is not '{INDEX_VERSION} <count>'")
    samples = [_index_sample(line, f"{source}:{number}") for number, line in lines[1:]]
    if len(samples) != int(header[1]):
        raise ValueError(f"{source}: index says {header[1]} samples but lists {len(samples)}")
    return samples


def _index_sample(line: str, where: str) -> list[Member]:
    """One sample's line, ``where`` being "<index>:<line number>". Checked so that a reader asks the tar only for
    bytes a sample can have (a negative or huge size would reach os.pread as an OSError or OverflowError): each
    member's data follows its 512-byte header on a block boundary, its size fits a USTAR header, and the members lie
    side by side (a reader reads their span in one go: a damaged offset must not make it gigabytes). These checks
    run on every line of every index at start-up, so they run on whole lists; the per-member walk that words the
    error runs only for a line that fails them."""
    fields = line.split()
    if len(fields) % 4:
        raise ValueError(f"{where}: index line {line[:80]!r} is not groups of 'ext offset size name'")
    offsets, sizes, names = fields[1::4], fields[2::4], fields[3::4]
    try:
        starts, lengths = list(map(int, offsets)), list(map(int, sizes))
    except ValueError:
        starts = lengths = [-1]
    if min(starts) < tarfile.BLOCKSIZE or any(map((tarfile.BLOCKSIZE - 1).__and__, starts)) or min(lengths) < 0 or (
            max(lengths) > MAX_MEMBER_SIZE):
        raise ValueError(f"{where}: {_first_bad_member(offsets, sizes, names)}")
    start, end = min(starts) - tarfile.BLOCKSIZE, max(map(operator.add, starts, lengths))
    if end - start > sum(lengths) + 2 * tarfile.BLOCKSIZE * len(starts) or end > _MAX_FILE_SIZE:  # see _spread
        raise ValueError(f"{where}: {_spread(names, starts, lengths)}")
    return list(map(Member, names, starts, lengths))


def _first_bad_member(offsets: list[str], sizes: list[str], names: list[str]) -> str:
    """What is wrong with the first bad 'ext offset size name' group of an index line (_index_sample)."""
    for offset, size, name in zip(offsets, sizes, names):
        for what, text in (("offset", offset), ("size", size)):
            if _number(text) is None:
                return f"{name}: {what} {text[:40]!r} is not a whole number"
        if int(offset) < tarfile.BLOCKSIZE or int(offset) % tarfile.BLOCKSIZE:
            return (f"{name}: offset {offset} is not where member data can start (after a {tarfile.BLOCKSIZE}-byte "
                    f"header, on a {tarfile.BLOCKSIZE}-byte block boundary)")
        if not 0 <= int(size) <= MAX_MEMBER_SIZE:
            return f"{name}: size {size} is not one a tar member can have (0 to {MAX_MEMBER_SIZE} bytes)"
    return "the line does not describe a sample's members"  # not reached: the checks above are _index_sample's


def _number(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:  # not a number, or more digits than int() takes
        return None


def _spread(names: list[str], starts: list[int], lengths: list[int]) -> str:
    """The error for a sample whose members do not lie side by side. A tar holds each member as a header block and
    its data padded to whole blocks; _index_sample's bound, the data plus two blocks a member, allows up to a block
    less padding per member than that, and costs no pass over the members to pad each size."""
    start, end = min(starts) - tarfile.BLOCKSIZE, max(map(operator.add, starts, lengths))
    blocks = sum(tarfile.BLOCKSIZE + -(-length // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE for length in lengths)
    return (f"the members of sample {names[0].partition('.')[0]} span bytes {start} to {end} of the tar; side by "
            f"side, as a tar holds them, they take {blocks}")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()
