"""avmae.crc.crc32 is zlib.crc32: every .crc sidecar and checkpoint marker written before it (with zlib) stays valid,
and one written now reads back with zlib. Lengths around the fast path's block sizes, running values, and the
kinds of buffer the readers hand it (bytes slices, memoryviews of a batch)."""

from __future__ import annotations

import os
import random
import zlib

import pytest

from avmae.crc import crc32
from avmae.train.checkpoint import file_crc32

LENGTHS = [0, 1, 3, 15, 16, 17, 63, 64, 65, 255, 256, 257, 4095, 4096, 4097, 65_537, 570_001]


@pytest.mark.parametrize("length", LENGTHS)
def test_equals_zlib_from_zero_and_from_a_running_value(length):
    data = random.Random(length).randbytes(length)
    assert crc32(data) == zlib.crc32(data)
    assert crc32(data, 0xDEADBEEF) == zlib.crc32(data, 0xDEADBEEF)
    cut = length // 3
    assert crc32(data[cut:], crc32(data[:cut])) == zlib.crc32(data)  # how file_crc32 runs over a file's chunks


def test_buffers_that_are_not_bytes():
    data = os.urandom(10_000)
    assert crc32(memoryview(data)[17:9_001]) == zlib.crc32(data[17:9_001])
    assert crc32(bytearray(data)) == zlib.crc32(data)


def test_a_flipped_bit_changes_it():
    data = bytearray(os.urandom(4096))
    before = crc32(data)
    data[2000] ^= 0x10
    assert crc32(data) != before


def test_a_file_in_chunks_equals_zlib_over_the_whole_file(tmp_path):
    path = tmp_path / "blob"
    data = os.urandom(3 * 1024 + 11)
    path.write_bytes(data)
    assert file_crc32(path, chunk=1024) == zlib.crc32(data)
