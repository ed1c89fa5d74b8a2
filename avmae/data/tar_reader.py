"""Random access to the samples of a shard through its DALI index: one read per sample, only the members asked
for, no tar parsing in Python (webdataset's tarfile streaming costs ~1 ms per 18-member sample, as much as
decoding its audio). Each member's tar header is checked against the index, and each member's bytes against the
CRC32 the build recorded (format.py), so a stale index, a truncated tar and flipped bits are reported, with the
shard, key and member, instead of yielding wrong bytes.

A remote shard (a URL or pipe: root, avmae/shard_files.py) is read the same way through a ForwardReader: ascending
reads stream the tar front to back. Training's streaming reader (stream_fetch.py) reads whole samples ahead and
hands them in as a SampleBlock; the checks are the same ones either way."""

from __future__ import annotations

import os
import tarfile
from dataclasses import dataclass

from avmae.data.faults import SampleError
from avmae.forward_reader import ForwardReader
from avmae.shard.format import crc32, parse_checksums
from avmae.shard.shard_tar import parse_index, sample_span, utf8_text
from avmae.shard_files import read_bytes
from avmae.storage import is_url

_HEADER = tarfile.BLOCKSIZE  # a member's header block, before its data


@dataclass(frozen=True)
class SampleBlock:
    """Bytes [start, start + len(data)) of a tar, read ahead; shorter than asked where the tar ends."""
    start: int
    data: bytes


class IndexedShard:
    """``crc``: the shard's checksum sidecar, or None for format-version-1 shards (read unchecked). ``idx_text`` /
    ``crc_text``: those files' contents (text or bytes) when the caller fetched them already (many at once,
    open_shards). A damaged index or sidecar is one ValueError naming the file (parse_index checks each line).
    ``labels``: the shard's labels sidecar, or None for shards built before it; only class-balanced sampling reads
    it (schedule.py)."""

    def __init__(self, tar: str, idx: str, crc: str | None = None, *, idx_text: str | bytes | None = None,
                 crc_text: str | bytes | None = None, labels: str | None = None):
        self.tar, self.labels = tar, labels
        # bytes, decoded by parse_index / utf8_text: a damaged file is a ValueError naming it, not a UnicodeDecodeError
        index = parse_index(idx_text if idx_text is not None else read_bytes(idx), idx)
        self.samples = [{m.ext: (m.offset, m.size, m.name) for m in members} for members in index]
        self.keys = [members[0].key for members in index]  # parse_index: every sample has members, all of one key
        if crc is not None:
            self.checksums = parse_checksums(utf8_text(crc_text if crc_text is not None else read_bytes(crc), crc), crc)
        else:
            self.checksums = None
        self.remote = is_url(tar)
        self._fd: int | None = None
        self._reader: ForwardReader | None = None

    def __len__(self) -> int:
        return len(self.samples)

    def span(self, index: int) -> tuple[int, int]:
        """Bytes of the tar that hold sample ``index`` whole: its first member's header to its last byte."""
        return sample_span((offset, size) for offset, size, _ in self.samples[index].values())

    def _bytes(self, start: int, end: int) -> bytes:
        """Bytes [start, end) of the tar, fewer where it ends. Opened lazily, in the worker process that reads."""
        if self.remote:
            if self._reader is None:
                self._reader = ForwardReader(self.tar)
            return self._reader.read(start, end)
        if self._fd is None:
            self._fd = os.open(self.tar, os.O_RDONLY)
        return os.pread(self._fd, end - start, start)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def read(self, index: int, exts: list[str], block: SampleBlock | None = None) -> dict[str, bytes]:
        """Members ``exts`` of sample ``index``, checked; from ``block`` when a streaming reader read it ahead."""
        sample, key = self.samples[index], self.keys[index]
        missing = [ext for ext in exts if ext not in sample]
        if missing:
            raise SampleError(self.tar, key, missing[0], "missing_member", f"lacks members {missing}")
        wanted = [sample[ext] for ext in exts]
        start, end = sample_span((offset, size) for offset, size, _ in wanted)
        if block is not None:
            if block.start > start:  # bytes read ahead for another span: a check, not an assert (python -O)
                raise SampleError(self.tar, key, exts[0], "index_mismatch", f"the bytes read ahead start at byte "
                                  f"{block.start}, after the sample's first member header at {start}")
            raw = block.data[start - block.start:end - block.start]
            tar_end = block.start + len(block.data)
        else:
            raw = self._bytes(start, end)
            tar_end = start + len(raw)
        if len(raw) < end - start:
            cut = next(ext for ext, (offset, size, _) in zip(exts, wanted) if offset + size > tar_end)
            raise SampleError(self.tar, key, cut, "truncated", f"the tar ends at byte {tar_end}; the sample "
                              f"needs bytes up to {end}")
        out = {}
        for ext, (offset, size, name) in zip(exts, wanted):
            header = raw[offset - _HEADER - start: offset - _HEADER - start + 100]
            if not header.startswith(name.encode("utf-8")):
                raise SampleError(self.tar, key, ext, "index_mismatch", f"the index does not match the tar at {name} "
                                  "(rebuild the index)")
            data = raw[offset - start: offset - start + size]
            if self.checksums is not None:
                recorded = self.checksums.get(name)
                if recorded is None:
                    raise SampleError(self.tar, key, ext, "checksum", "the checksum sidecar has no entry for it")
                actual = crc32(data)
                if actual != recorded:
                    raise SampleError(self.tar, key, ext, "checksum",
                                      f"CRC32 {actual:08x} differs from the {recorded:08x} recorded at build time")
            out[ext] = data
        return out
