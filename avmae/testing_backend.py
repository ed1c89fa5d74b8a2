"""``avmae_checked``: a process-group backend for tests that rehearses NCCL's rules on a machine without a GPU.

NCCL refuses tensors that are not on the rank's CUDA device, and nothing on a CPU-only machine would notice a
collective that breaks that rule. avmae/collectives.py is the one place that places tensors for the group; this
backend wraps gloo and refuses, naming the call and its caller,

- a collective whose caller is not avmae/collectives.py (an avmae module, or a test, calling
  ``torch.distributed`` itself), and
- a tensor that is not on the group's declared device.

DeepSpeed's own collectives (ZeRO's reductions and gathers) are its business and pass unchecked. A run selects the
backend with ``AVMAE_DIST_BACKEND=avmae_checked`` (read by avmae/distributed.py); nothing else uses it.

A Python subclass of ``torch.distributed.ProcessGroup`` returned by the creator function becomes the group itself
(torch/distributed/distributed_c10d.py, ``_new_process_group_helper``), and ``torch.distributed``'s functions call
its methods by name from Python, so each method below checks and then hands the same arguments to gloo.
"""

from __future__ import annotations

import sys
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

NAME = "avmae_checked"
DEVICE = torch.device("cpu")  # the device gloo's side of the rehearsal holds every tensor on

_TORCH = str(Path(torch.__file__).resolve().parent)
_COLLECTIVES = str(Path(__file__).resolve().parent / "collectives.py")
_ALLOWED_OWNERS = ("deepspeed",)  # packages whose own collectives are not avmae's to route


class CollectiveRefused(RuntimeError):
    """A collective broke the rule NCCL would enforce on a GPU."""


def _caller() -> tuple[str, int]:
    """File and line of the innermost frame outside torch (and outside this module): who asked for the collective."""
    frame = sys._getframe(2)
    here = str(Path(__file__).resolve())
    while frame is not None:
        name = str(Path(frame.f_code.co_filename).resolve()) if frame.f_code.co_filename[:1] != "<" else ""
        if name and not name.startswith(_TORCH) and name != here:
            return name, frame.f_lineno
        frame = frame.f_back
    return "<unknown>", 0


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for item in value for t in _tensors(item)]
    return []


def _check(call: str, *arguments) -> None:
    path, line = _caller()
    owner = Path(path).parts
    if path != _COLLECTIVES and not any(part in _ALLOWED_OWNERS for part in owner):
        raise CollectiveRefused(f"{NAME}: {call} called from {path}:{line}, not through avmae.collectives "
                                "(on NCCL its tensors would not be placed on the rank's GPU)")
    for tensor in _tensors(list(arguments)):
        if tensor.device != DEVICE:
            raise CollectiveRefused(f"{NAME}: {call} from {path}:{line} got a tensor on {tensor.device}; "
                                    f"the group's device is {DEVICE}")


class CheckedGroup(dist.ProcessGroup):
    """gloo, behind the checks above."""

    def __init__(self, store, rank: int, size: int, timeout: timedelta):
        super().__init__(rank, size)
        self.gloo = dist.ProcessGroupGloo(store, rank, size, timeout)

    def getBackendName(self) -> str:  # noqa: N802 (torch's name)
        return NAME

    def name(self) -> str:
        return NAME

    def allreduce(self, tensors, opts=None):
        _check("all_reduce", tensors)
        return self.gloo.allreduce(tensors, opts or dist.AllreduceOptions())

    def allreduce_coalesced(self, tensors, opts=None):
        _check("all_reduce_coalesced", tensors)
        return self.gloo.allreduce_coalesced(tensors, opts or dist.AllreduceCoalescedOptions())

    def allgather(self, outputs, inputs, opts=None):
        _check("all_gather", outputs, inputs)
        return self.gloo.allgather(outputs, inputs, opts or dist.AllgatherOptions())

    def _allgather_base(self, output, input, opts=None):
        _check("all_gather_into_tensor", output, input)
        return self.gloo._allgather_base(output, input, opts or dist.AllgatherOptions())

    def allgather_into_tensor_coalesced(self, outputs, inputs, opts=None):
        _check("all_gather_into_tensor_coalesced", outputs, inputs)
        return self.gloo.allgather_into_tensor_coalesced(outputs, inputs, opts or dist.AllgatherOptions())

    def broadcast(self, tensors, opts=None):
        _check("broadcast", tensors)
        return self.gloo.broadcast(tensors, opts or dist.BroadcastOptions())

    def gather(self, outputs, inputs, opts=None):
        _check("gather", outputs, inputs)
        return self.gloo.gather(outputs, inputs, opts or dist.GatherOptions())

    def scatter(self, outputs, inputs, opts=None):
        _check("scatter", outputs, inputs)
        return self.gloo.scatter(outputs, inputs, opts or dist.ScatterOptions())

    def reduce(self, tensors, opts=None):
        _check("reduce", tensors)
        return self.gloo.reduce(tensors, opts or dist.ReduceOptions())

    def reduce_scatter(self, outputs, inputs, opts=None):
        _check("reduce_scatter", outputs, inputs)
        return self.gloo.reduce_scatter(outputs, inputs, opts or dist.ReduceScatterOptions())

    def _reduce_scatter_base(self, output, input, opts=None):
        _check("reduce_scatter_tensor", output, input)
        return self.gloo._reduce_scatter_base(output, input, opts or dist.ReduceScatterOptions())

    def alltoall(self, outputs, inputs, opts=None):
        _check("all_to_all", outputs, inputs)
        return self.gloo.alltoall(outputs, inputs, opts or dist.AllToAllOptions())

    def alltoall_base(self, output, input, output_splits, input_splits, opts=None):
        _check("all_to_all_single", output, input)
        return self.gloo.alltoall_base(output, input, output_splits, input_splits, opts or dist.AllToAllOptions())

    def barrier(self, opts=None):
        _check("barrier")
        return self.gloo.barrier(opts or dist.BarrierOptions())

    def monitored_barrier(self, timeout=None, wait_all_ranks: bool = False):
        _check("monitored_barrier")
        return self.gloo.monitored_barrier(timeout, wait_all_ranks)

    def send(self, tensors, dst: int, tag: int):
        _check("send", tensors)
        return self.gloo.send(tensors, dst, tag)

    def recv(self, tensors, src: int, tag: int):
        _check("recv", tensors)
        return self.gloo.recv(tensors, src, tag)

    def recv_anysource(self, tensors, tag: int):
        _check("recv", tensors)
        return self.gloo.recv_anysource(tensors, tag)


def register() -> str:
    """Make ``avmae_checked`` a backend name ``init_process_group`` accepts (once per process); returns the name."""
    if NAME not in dist.Backend.backend_list:
        dist.Backend.register_backend(NAME, CheckedGroup, devices=["cpu"])
    return NAME
