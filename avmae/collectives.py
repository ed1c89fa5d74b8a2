"""Every collective avmae calls across ranks, in one place that is correct for NCCL by construction.

NCCL reduces and gathers CUDA tensors only, on the device the rank has made current; gloo takes CPU tensors. So
each function here moves its tensor to ``group_device()`` before the collective and hands the result back on the
caller's own device: a caller never needs to know which backend the group runs. With no process group, or a world
of one, each returns a copy of its input and calls nothing.

Object collectives (``all_gather_object``, ``gather_object``, ``broadcast_object``) pickle into byte tensors; under
NCCL torch places those on ``torch.cuda.current_device()``, so the rank's device must have been made current
(``torch.cuda.set_device``) before the first one: avmae/distributed.py does that before the group starts.

Nothing else under ``avmae/`` calls ``torch.distributed`` collectives: tests/test_collectives.py checks the source,
and runs evaluation under avmae/testing_backend.py, which refuses a collective that does not come from here.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def is_distributed() -> bool:
    """A process group is running and has more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def group_device() -> torch.device:
    """Where the default group's collectives need their tensors: the current CUDA device under NCCL, else the CPU."""
    if dist.is_available() and dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _placed(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on the group's device, contiguous, as a tensor of its own (a collective may write into it)."""
    return tensor.detach().to(group_device(), copy=True).contiguous()


def _op(op: str) -> dist.ReduceOp:
    if op not in _OPS:
        raise ValueError(f"avmae.collectives: reduction op {op!r} is not one of {sorted(_OPS)}")
    return _OPS[op]


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """A new tensor: ``tensor`` reduced over the ranks with ``op`` (sum, max or min), on ``tensor``'s device."""
    reduction = _op(op)
    if not is_distributed():
        return tensor.detach().clone()
    work = _placed(tensor)
    dist.all_reduce(work, op=reduction)
    return work.to(tensor.device)


def all_reduce_(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``tensor`` reduced over the ranks in place, with no copy: for a tensor that already lives on
    ``group_device()`` (a benchmark's buffer, a flag the caller keeps there); any other is refused."""
    reduction = _op(op)
    if is_distributed():
        _on_group_device("all_reduce_", tensor)
        dist.all_reduce(tensor, op=reduction)
    return tensor


def all_gather_into_(output: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` written into ``output`` (``world_size()`` times its rows), in rank order, with no
    copy; both must already live on ``group_device()``."""
    if not is_distributed():
        output.copy_(tensor.reshape(output.shape))
        return output
    _on_group_device("all_gather_into_", output, tensor)
    dist.all_gather_into_tensor(output, tensor)
    return output


def _on_group_device(call: str, *tensors: torch.Tensor) -> None:
    device = group_device()
    for tensor in tensors:
        if tensor.device != device:
            raise ValueError(f"avmae.collectives.{call}: a tensor on {tensor.device}, and the group's collectives "
                             f"run on {device} (use the copying form, without the trailing underscore)")


def all_reduce_values(values: list[float], op: str = "sum") -> list[float]:
    """Host numbers reduced over the ranks, in float64, in one collective (and one device sync under NCCL): for log,
    checkpoint and guard boundaries, never inside a micro-step."""
    _op(op)
    if not is_distributed():
        return [float(v) for v in values]
    return all_reduce(torch.tensor(values, dtype=torch.float64), op).tolist()


def all_gather_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` (the same shape on every rank) concatenated in rank order along dim 0, on
    ``tensor``'s device. A 0-d tensor gathers as one row per rank."""
    if not is_distributed():
        return tensor.detach().clone().reshape(-1, *tensor.shape[1:]) if tensor.dim() == 0 else tensor.detach().clone()
    work = _placed(tensor.reshape(1) if tensor.dim() == 0 else tensor)
    out = torch.empty((world_size() * work.shape[0], *work.shape[1:]), dtype=work.dtype, device=work.device)
    dist.all_gather_into_tensor(out, work)
    return out.to(tensor.device)


def all_gather_object(obj: Any) -> list:
    """Every rank's picklable ``obj``, in rank order (between avmae's own ranks: never data read from a file)."""
    if not is_distributed():
        return [obj]
    everyone: list[Any] = [None] * world_size()
    dist.all_gather_object(everyone, obj)
    return everyone


def gather_object(obj: Any, dst: int = 0) -> list | None:
    """Every rank's ``obj`` in rank order on rank ``dst``; None on the others."""
    if not is_distributed():
        return [obj] if dst == 0 else None
    everyone: list[Any] | None = [None] * world_size() if rank() == dst else None
    dist.gather_object(obj, everyone, dst=dst)
    return everyone


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (the others' ``obj`` is ignored)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class _GatherWithGrad(torch.autograd.Function):
    """All ranks' rows forward; backward, each rank gets the sum over ranks of the gradient of its own rows (every
    rank's loss used them). The gradient is summed with one all-reduce of the gathered shape and sliced, which gloo
    and NCCL both run (gloo has no reduce-scatter); torch.distributed.nn.functional.all_gather computes the same
    sum, with an all-to-all off NCCL."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        ctx.rows = tensor.shape[0]
        return all_gather_tensor(tensor)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        start = rank() * ctx.rows
        return all_reduce(grad.contiguous(), "sum")[start:start + ctx.rows]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's ``tensor`` (the same shape on every rank) concatenated in rank order along dim 0, on
    ``tensor``'s device, differentiable: the gradient of each rank's rows flows back to that rank, as a contrastive
    loss whose negatives are the global batch needs. Every rank must run the backward too."""
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)


def barrier() -> None:
    """Wait for every rank. Under NCCL torch's barrier reduces a one-element CUDA tensor on the current device."""
    if is_distributed():
        dist.barrier()
