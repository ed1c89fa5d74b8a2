"""Keep large host buffers mapped between batches (Linux glibc).

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it on
free, so each new batch tensor on the CPU page-faults all its pages in again. A batch of 8 clips of 16 frames at
224² is 77 MB as float: converting it from uint8 took 31 ms with fresh pages and 8 ms with reused ones (measured
on this 2-core machine), which made the normalisation in the training process cost as much as a worker's decode.

The DALI feed needs it on every device: it packs each batch into new host arrays (dali/batch.py), in its worker
processes or, serially, in the training process. In this VM a page fault costs ~15 µs, and a feed worker spent
0.35 of its 1.1-1.2 ms of CPU per sample faulting in those arrays' pages: 0.83-0.88 ms with the heap kept (16
frames, batch 8, `avmae-bench feed`). On a GPU the CUDA caching allocator already reuses the blocks of device
tensors; the host side is what this is for.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
_M_MMAP_THRESHOLD = -3
_KEEP_BELOW = 1 << 30  # allocations under 1 GiB come from the heap and stay there after free
_applied = False


def keep_large_allocations() -> bool:
    """Serve allocations under 1 GiB from the heap and do not trim it, so freed batch buffers are reused without
    page faults. Once per process (DataLoader workers forked later inherit it); False where there is no glibc."""
    global _applied
    if _applied:
        return True
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        log.debug("no glibc mallopt here (%s); large host buffers are mapped afresh per batch", name)
        return False
    _applied = bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BELOW)) and bool(mallopt(_M_TRIM_THRESHOLD, 2 * _KEEP_BELOW))
    return _applied
