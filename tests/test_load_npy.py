"""npy.load_npy, the log-mel reader of both backends' checks: the same arrays as np.load for every header it
meets (cached or not, format 1.0 and 2.0, Fortran order through np.load), and a ValueError where np.load would fail
or where the data is longer than the header says."""

from __future__ import annotations

import io

import numpy as np
import pytest

from avmae.shard.checking.npy import load_npy


def npy_bytes(array: np.ndarray, version: tuple[int, int] | None = None) -> bytes:
    out = io.BytesIO()
    if version is None:
        np.save(out, array)
    else:
        np.lib.format.write_array(out, array, version=version)
    return out.getvalue()


ARRAYS = [np.random.default_rng(0).standard_normal((1024, 128)).astype(np.float16),
          np.arange(12, dtype=np.float32).reshape(3, 4), np.zeros((0, 5)), np.array(3.0, dtype=np.float32),
          np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)), np.arange(6, dtype=">i4")]


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
@pytest.mark.parametrize("version", [None, (2, 0)])
def test_load_npy_equals_np_load(array, version):
    raw = npy_bytes(array, version)
    for _ in range(2):  # the header parsed, then from the cache
        got = load_npy(raw)
        reference = np.load(io.BytesIO(raw), allow_pickle=False)
        assert got.dtype == reference.dtype and got.shape == reference.shape
        assert np.array_equal(got, reference)


@pytest.mark.parametrize("array", [ARRAYS[0], ARRAYS[1]], ids=["logmel", "small"])
def test_data_shorter_or_longer_than_the_header_is_an_error(array):
    raw = npy_bytes(array)
    for bad in (raw[:-2], raw + b"\0\0"):
        with pytest.raises(ValueError, match="bytes of data, the header's shape"):
            load_npy(bad)
    with pytest.raises(ValueError, match="not a .npy"):
        load_npy(b"PK\x03\x04" + raw[4:])  # another file type
