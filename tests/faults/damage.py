"""Real damage to real shards: rewrite members of a built tar (optionally recording the new bytes' CRC32, so the
check behind the checksum is what must catch it), flip bits in place, cut a tar."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path
from typing import Callable, Iterable

from avmae.shard.format import (CHECKSUM_SUFFIX, LABELS_SUFFIX, METADATA_MEMBER, META_KEY, META_LABELS, checksum_text,
                                labels_text)
from avmae.shard.shard_tar import ShardTarWriter, index_text, parse_index

Members = dict[str, bytes]


def rewrite_samples(tar_path: Path, change: Callable[[Members], Members], *, fix_checksums: bool = True) -> None:
    """Rewrite a tar and its index with ``change(members) -> members`` applied to every sample; the checksum
    sidecar is rewritten to match (``fix_checksums``) or left as the build wrote it."""
    with tarfile.open(tar_path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    samples: dict[str, Members] = {}
    for name, data in members:
        key, ext = name.split(".", 1)
        samples.setdefault(key, {})[ext] = data
    writer = ShardTarWriter(tar_path)
    for key, parts in samples.items():
        writer.write(key, change(parts))
    writer.close()
    tar_path.with_suffix(".idx").write_text(index_text(writer.members))
    if fix_checksums:
        tar_path.with_suffix(CHECKSUM_SUFFIX).write_text(checksum_text(writer.checksums))


def json_label_rows(tar_path: Path) -> list[tuple[str, list[str]]]:
    """(key, labels) of every sample of a tar, in tar order, read from the samples' JSON members."""
    with tarfile.open(tar_path) as tar:
        metas = [json.loads(tar.extractfile(member).read()) for member in tar.getmembers()
                 if member.name.endswith(f".{METADATA_MEMBER}")]
    return [(meta[META_KEY], meta[META_LABELS]) for meta in metas]


def write_label_sidecar(tar_path: Path) -> None:
    """Rewrite a tar's labels sidecar from its samples' JSON members (after rewrite_samples changed labels)."""
    tar_path.with_suffix(LABELS_SUFFIX).write_text(labels_text(json_label_rows(tar_path)))


def change_one(tar_path: Path, ext: str, damage: Callable[[bytes], bytes], *, fix_checksums: bool,
               sample: int = 0) -> str:
    """Replace member ``ext`` of the ``sample``-th sample of a tar by ``damage(bytes)``; returns the sample's key."""
    key = keys_of(tar_path)[sample]

    def change(parts: Members) -> Members:
        if json.loads(parts[METADATA_MEMBER])[META_KEY] == key:
            return {name: damage(data) if name == ext else data for name, data in parts.items()}
        return parts

    rewrite_samples(tar_path, change, fix_checksums=fix_checksums)
    return key


def flip_bits_in_place(tar_path: Path, ext: str, sample: int = 0, at: float = 0.6) -> str:
    """Flip the bits of one byte at ``at`` of member ``ext`` (for a JPEG: in its entropy-coded data) without
    touching the tar's layout or the checksum sidecar; returns the sample's key."""
    found = parse_index(tar_path.with_suffix(".idx").read_text())[sample]
    member = next(m for m in found if m.ext == ext)
    position = member.offset + int(member.size * at)
    data = bytearray(tar_path.read_bytes())
    data[position] ^= 0xFF
    tar_path.write_bytes(bytes(data))
    return member.key


def stray_marker(jpeg: bytes) -> tuple[bytes, int]:
    """``jpeg`` with one byte of its image data, past the middle, made 0xFF where the next byte turns it into a
    marker that has no place there (one flipped byte makes such a marker); returns the bytes and the marker's
    position. libjpeg stops on it; a decoder that falls back to another decoder does not."""
    data = bytearray(jpeg)
    scan = data.index(b"\xff\xda")
    at = next(i for i in range(scan + (len(data) - scan) // 2, len(data) - 2)
              if data[i - 1] != 0xFF and 0x00 < data[i + 1] < 0xC0)  # not stuffing, restart or a between-scans marker
    data[at] = 0xFF
    return bytes(data), at


def flip_every_sample(tar_paths: Iterable[Path], ext: str) -> None:
    """flip_bits_in_place on member ``ext`` of every sample of each tar: every draw from them is a checksum skip."""
    for tar_path in tar_paths:
        for sample in range(len(keys_of(tar_path))):
            flip_bits_in_place(tar_path, ext, sample)


def keys_of(tar_path: Path) -> list[str]:
    return [sample[0].key for sample in parse_index(tar_path.with_suffix(".idx").read_text())]


def cut_in_half(tar_path: Path) -> list[str]:
    """Cut a tar to half its length; returns the keys of the samples that lost bytes."""
    size = tar_path.stat().st_size // 2
    tar_path.write_bytes(tar_path.read_bytes()[:size])
    return [sample[0].key for sample in parse_index(tar_path.with_suffix(".idx").read_text())
            if max(m.offset + m.size for m in sample) > size]
