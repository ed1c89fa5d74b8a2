"""A shard's ``.npy`` member (the log-mel) read as the shard contract requires it: numpy's header, and data exactly as
long as the header's shape and dtype need. The one home for both readers of that rule: the loaders' checker
(data/checked.py load_npy, which caches headers and views the data) and ``avmae-shard verify`` (which reads only
the header)."""

from __future__ import annotations

import io
import math
import tokenize

import numpy as np

# What numpy's .npy header parsing raises on hostile bytes besides ValueError: EOFError (an empty member), OSError,
# SyntaxError and TypeError (its header evaluation), tokenize.TokenError (its fallback header filter, e.g. for a
# quote turned into a bracket). In a version-1 shard no checksum stops such bytes first.
NPY_ERRORS = (ValueError, TypeError, OSError, EOFError, SyntaxError, tokenize.TokenError)


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
