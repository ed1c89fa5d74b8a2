"""Peak bytes of tensor memory during a piece of CPU work, counted op by op.

CPU PyTorch keeps no allocator statistics (``torch.cuda.max_memory_allocated`` has no CPU twin), so this mode
sees every op's outputs, adds the bytes of each new storage, and drops a storage's bytes once nothing holds it
(a weak reference to the storage has expired). The peak is the most bytes alive at once among the tensors made
inside the mode: what a GPU allocator would have to hold for the same ops, before fragmentation. Backward ops
are seen too, because CPU autograd runs them on the calling thread.

DeepSpeed does not cover this either: its memory report (``see_memory_usage``, deepspeed/runtime/utils.py) reads the
accelerator's allocator, which on its CPU accelerator is the process's resident set size (cpu_accelerator.py's
``get_rss``): that includes the weights, the interpreter and freed memory not yet returned, not one step's tensors.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class LiveTensorBytes(TorchDispatchMode):
    """``with LiveTensorBytes() as live: work()`` then ``live.peak`` (bytes), ``live.current``, ``live.ops``."""

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[int, tuple[StorageWeakRef, int]] = {}  # storage address -> (weak ref, bytes)
        self.current = 0
        self.peak = 0
        self.ops: Counter[str] = Counter()  # which kernels ran (e.g. which attention SDPA chose)

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self._live.items() if ref.expired()]:
            self.current -= self._live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops[str(func.overloadpacket)] += 1
        self._sweep()  # first what the op's inputs left behind, so a peak is never two generations at once
        # A view or an in-place op returns an input's storage: no new bytes (and a view of a tensor made before
        # the mode, such as a weight's transpose, is not this work's memory).
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self._live and key not in inputs:
                    self._live[key] = (StorageWeakRef(storage), storage.nbytes())
                    self.current += storage.nbytes()
        self.peak = max(self.peak, self.current)
        return out

    def settle(self) -> int:
        """Bytes still alive now (after the work's temporaries are gone)."""
        self._sweep()
        return self.current
