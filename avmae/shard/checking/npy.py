"""A shard's ``.npy`` member (the log-mel) read as the shard contract requires it: numpy's header, and data exactly as
long as the header's shape and dtype need. The one home of that rule and of ``load_npy``, which reads every log-mel
that the loaders and ``avmae-shard verify`` check (shard/checking/sample_rules.py): headers cached, the data a view."""

from __future__ import annotations

import io
import math
import tokenize

import numpy as np

# What numpy's .npy header parsing raises on hostile bytes besides ValueError: EOFError (an empty member), OSError,
# SyntaxError and TypeError (its header evaluation), tokenize.TokenError (its fallback header filter, e.g. for a
# quote turned into a bracket). In a version-1 shard no checksum stops such bytes first.
NPY_ERRORS = (ValueError, TypeError, OSError, EOFError, SyntaxError, tokenize.TokenError)
_NPY_MAGIC = b"\x93NUMPY"
_NPY_HEADERS: dict[bytes, tuple[np.dtype, tuple[int, ...], int]] = {}  # a .npy prefix -> dtype, shape, count


def npy_header(npy: bytes) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, Fortran order, dtype, offset of the data) of a .npy member, parsed by numpy (which raises one of
    NPY_ERRORS on a damaged header)."""
    stream = io.BytesIO(npy)
    version = np.lib.format.read_magic(stream)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = read_header(stream)
    return shape, fortran_order, dtype, stream.tell()


def check_data_length(npy: bytes, start: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """ValueError unless the data from ``start`` is exactly what ``shape`` and ``dtype`` need: np.load allocates what
    a header says before it reads, and a view of the member must not run past it."""
    needed = math.prod(shape) * dtype.itemsize
    if len(npy) - start != needed:
        raise ValueError(f"{len(npy) - start} bytes of data, the header's shape {shape} {dtype} needs {needed}")


def load_npy(npy: bytes) -> np.ndarray:
    """``np.load`` of a .npy member, read-only, without np.load's cost per call: it copies the bytes through a file
    object and parses the header with ``ast`` (0.08 ms of a log-mel, about a tenth of a feed worker's CPU per
    sample). Every log-mel of a shard folder has the same header, so a header is parsed once by numpy and cached by
    its bytes, and the array is a view of the member. A header that is not plain C-order data (Fortran order, objects)
    goes to np.load; data shorter or longer than the header says is a ValueError."""
    if npy[:6] != _NPY_MAGIC or len(npy) < 10:
        raise ValueError("not a .npy file (no NUMPY magic)")
    size_bytes = 2 if npy[6] == 1 else 4  # header length: 2 bytes in format 1.0, 4 in 2.0 and 3.0
    start = 8 + size_bytes + int.from_bytes(npy[8:8 + size_bytes], "little")
    prefix = npy[:start]
    if prefix not in _NPY_HEADERS:
        shape, fortran_order, dtype, _ = npy_header(npy)
        if fortran_order or dtype.hasobject:
            if not dtype.hasobject:  # np.load allocates what the header says before it reads: check the length first
                check_data_length(npy, start, shape, dtype)
            return np.load(io.BytesIO(npy), allow_pickle=False)
        _NPY_HEADERS[prefix] = (dtype, shape, math.prod(shape))
    dtype, shape, count = _NPY_HEADERS[prefix]
    check_data_length(npy, start, shape, dtype)
    return np.frombuffer(npy, dtype=dtype, count=count, offset=start).reshape(shape)
