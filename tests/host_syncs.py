"""Counting the host synchronisations of real training steps (tests/test_host_syncs.py says what counts as one and
the budget): ``counted`` trains the tiny model under a ``SyncCounter`` in fresh processes (one, or ranks over
torchrun), ``check_budget`` asserts the budget on a rank's report, ``deepspeed_own`` reports DeepSpeed's share."""

from __future__ import annotations

import json
import os
import sys
import sysconfig
from collections import Counter
from pathlib import Path

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten

from tests.helpers import REPO, free_port, run_config

# Per micro-step, by file, the syncs that are known and are another module's to take out: none remain.
SYNCS_ALLOWED: dict[str, int] = {}
# In the first step only: the model's sin-cos position tables, built on the host, are copied to the device at its
# first forward and kept there (audio and video, for the encoder and the decoder: 4 on the tiny model), and so are
# the loader's video mean and std (normalise_video, 2; the colour augmentation uses the same) and the colour
# augmentation's luma weights (1).
FIRST_STEP_ALLOWED = {"avmae/models/tokenizers.py": 4, "avmae/data/samples.py": 2, "avmae/data/colour.py": 1}

DEVICE_BOUND = "_counted_device_bound"
READS = {torch.Tensor.item: "item", torch.Tensor.tolist: "tolist", torch.Tensor.__bool__: "bool",
         torch.Tensor.__int__: "int", torch.Tensor.__float__: "float", torch.Tensor.__index__: "index",
         torch.Tensor.cpu: "cpu", torch.Tensor.numpy: "numpy"}
MOVES = {torch.Tensor.to, torch.Tensor.cuda}
TORCH_DIR = str(Path(torch.__file__).parent)
STDLIB_DIR = sysconfig.get_paths()["stdlib"]
AVMAE_DIR = str(REPO / "avmae")


def device_bound(value) -> bool:
    return isinstance(value, torch.Tensor) and getattr(value, DEVICE_BOUND, False)


DEVICE_GETTER = torch.Tensor.device.__get__


def _target_device(func, args, kwargs):
    """The device a call explicitly asks for (None when it names none): ``device=``, or ``.to(device | str |
    tensor)`` / ``.cuda()``."""
    if kwargs.get("device") is not None:
        return kwargs["device"]
    if func is torch.Tensor.cuda:
        return "cuda"
    if func is torch.Tensor.to:
        for arg in args[1:]:
            if isinstance(arg, (torch.device, str, torch.Tensor)):
                return arg
    return None


class SyncCounter(TorchFunctionMode):
    """Counts host syncs by (step, source, kind); ``next_step`` is called by whoever drives the steps.

    ``run_device``: the run's device object (``DistInfo.device``); a device named by it, or read off a device-bound
    tensor (``x.device``), stands for the device, so ``torch.rand(n, device=x.device)`` is device-bound and
    ``.to(x.device)`` of a host tensor is a copy to the device; any other CPU device is the host."""

    def __init__(self, run_device: torch.device):
        super().__init__()
        self.step = 0
        self.events: Counter = Counter()
        self.run_device = run_device
        self.devices: dict[int, torch.device] = {id(run_device): run_device}

    def next_step(self) -> None:
        self.step += 1
        self.devices = {id(self.run_device): self.run_device}  # the device objects read off tensors so far

    def mark(self, tensors) -> None:
        for tensor in tensors:
            setattr(tensor, DEVICE_BOUND, True)

    def on_device(self, target) -> bool | None:
        """Whether ``target`` names the run's device (None: no device named)."""
        if target is None:
            return None
        if isinstance(target, torch.Tensor):
            return device_bound(target)
        if isinstance(target, str):
            return not target.startswith("cpu")
        return id(target) in self.devices or target.type != "cpu"

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        destination = self.on_device(_target_device(func, args, kwargs))
        kind = None
        if func in READS and device_bound(args[0]):
            kind = READS[func]
        elif func in MOVES and destination is not None:
            if not destination and device_bound(args[0]):
                kind = "to_host"  # a copy off the device
            elif destination and not device_bound(args[0]) and not kwargs.get("non_blocking", False):
                kind = "host_to_device"  # a host tensor to the device, waited for
        if kind is not None:
            self.events[(self.step, self._source(), kind)] += 1
        out = func(*args, **kwargs)
        if func == DEVICE_GETTER:
            if device_bound(args[0]):
                self.devices[id(out)] = out
            return out
        if func in MOVES and destination and out is args[0] and not device_bound(out):
            out = out.clone()  # on the CPU a move to "the device" hands back the host tensor itself; a GPU copies
        if destination if destination is not None else any(device_bound(t) for t in inputs):
            for result in tree_flatten(out)[0]:
                if isinstance(result, torch.Tensor):
                    try:
                        setattr(result, DEVICE_BOUND, True)
                    except (AttributeError, RuntimeError):  # a tensor that takes no attributes: left host-bound
                        pass
        return out

    @staticmethod
    def _source() -> str:
        frame = sys._getframe(2)
        while frame is not None:
            path = frame.f_code.co_filename
            if path == __file__ and frame.f_code.co_name in ("__torch_function__", "_source"):
                frame = frame.f_back
                continue
            library = "-packages/" in path  # site-packages sit under the standard library's folder
            if not (path.startswith(TORCH_DIR) or path.startswith(STDLIB_DIR) and not library or path.startswith("<")):
                if path.startswith(AVMAE_DIR):
                    return "avmae/" + os.path.relpath(path, AVMAE_DIR)
                return "deepspeed" if "/deepspeed/" in path else os.path.basename(path)
            frame = frame.f_back
        return "torch"


def patched_cuda_synchronize(counter: SyncCounter):
    original = torch.cuda.synchronize

    def synchronize(*args, **kwargs):
        counter.events[(counter.step, SyncCounter._source(), "cuda_synchronize")] += 1
        return original(*args, **kwargs)

    return original, synchronize


def count_a_run(config_path: str, out_path: str) -> None:
    """Train per ``config_path`` under the counter; write this rank's events (and the counter's self-checks) as
    JSON to ``out_path`` with ``{rank}`` filled in."""
    from avmae import collectives
    from avmae.config import load
    from avmae.recipe.config import RunConfig
    from avmae.train import step as step_module
    from avmae.train.divergence import NonFiniteGuard
    from avmae.train.run_start import start_run
    from avmae.train.trainer import Trainer

    trainer = Trainer(start_run(load(RunConfig, Path(config_path))))
    counter = SyncCounter(trainer.dist.device)
    counter.mark([*trainer.model.parameters(), *trainer.model.buffers()])
    original_call = step_module.TrainStep.__call__

    def counted_call(self, next_batch):
        counter.next_step()
        return original_call(self, next_batch)

    step_module.TrainStep.__call__ = counted_call
    original_group_device = collectives.group_device
    # Under NCCL the group's device is the run's device; gloo's CPU stands for it here.
    collectives.group_device = lambda: trainer.dist.device
    original_sync, torch.cuda.synchronize = patched_cuda_synchronize(counter)
    try:
        with counter:
            result = trainer.run()
            counter.step = -1  # the counter's own checks: what it must see, and what it must not
            device_value = torch.ones(3, device=trainer.dist.device)
            device_value.sum().item()
            torch.rand(()).item()  # a host draw: reading it costs the device nothing
            torch.arange(3).to(trainer.dist.device)  # a host table copied to the device, waited for
            torch.arange(3).to(trainer.dist.device, non_blocking=True)  # not waited for
            guard = NonFiniteGuard(trainer.config.guard)
            guard.record(1, device_value.sum(), True, device_value[0] > 0)
            guard.check()  # reads the flags with .tolist() in avmae/train/divergence.py
    finally:
        step_module.TrainStep.__call__ = original_call
        torch.cuda.synchronize = original_sync
        collectives.group_device = original_group_device
    events = [{"step": step, "source": source, "kind": kind, "count": count}
              for (step, source, kind), count in sorted(counter.events.items())]
    Path(out_path.format(rank=trainer.dist.rank)).write_text(json.dumps({"result": result, "events": events}))


def counted(run: Path, shards: Path, processes: int, grad_accum: int, **sections) -> list[dict]:
    """Each rank's report of 6 steps of the tiny model: logging and signal checks every 3 steps, no checkpoint
    until the last step, so steps 1, 2, 4 and 5 are no boundary. ``sections``: more of the run config."""
    import subprocess

    config = run_config(run, shards, grad_accum=grad_accum, **sections,
                        optim={"steps": 6, "lr": 1e-3, "warmup_steps": 1},
                        checkpoint={"every": 100, "keep": 1, "export": False},
                        log={"every": 3, "progress": False, "tensorboard": False}, guard={"signal_check_every": 3})
    out = str(run / "syncs_rank{rank}.json")
    code = f"from tests.host_syncs import count_a_run; count_a_run({str(config)!r}, {out!r})"
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}", f"--master_port={free_port()}"]
    script = run / "count_syncs.py"
    script.write_text(code + "\n")
    done = subprocess.run([*launcher, str(script)], capture_output=True, text=True, cwd=REPO, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(Path(out.format(rank=rank)).read_text()) for rank in range(processes)]


NON_BOUNDARY_STEPS = (1, 2, 4, 5)


def check_budget(report: dict, grad_accum: int) -> dict[str, int]:
    """Assert the budget on one rank's report; the syncs of the non-boundary steps by source (for the record)."""
    assert report["result"]["step"] == 6 and report["result"]["finished"]
    events = report["events"]
    per_step: dict[int, Counter] = {}
    for event in events:
        if event["source"].startswith("avmae/") and event["step"] > 0:
            per_step.setdefault(event["step"], Counter())[event["source"]] += event["count"]
    for step in NON_BOUNDARY_STEPS:
        syncs = per_step.get(step, Counter())
        allowed = {source: grad_accum * n for source, n in SYNCS_ALLOWED.items()}
        if step == 1:
            allowed.update(FIRST_STEP_ALLOWED)
        over = {source: n for source, n in syncs.items() if n > allowed.get(source, 0)}
        assert not over, f"step {step}: host syncs past the budget: {over} (all: {dict(syncs)})"
    # The boundaries do read: the loss at steps 3 and 6 is logged from the device.
    assert any(per_step.get(step) for step in (3, 6)), events
    # The counter counts: the deliberate reads of device values are seen, the host draw is not.
    own = Counter({(e["source"], e["kind"]): e["count"] for e in events if e["step"] == -1})
    assert own[("host_syncs.py", "item")] == 1 and own[("host_syncs.py", "host_to_device")] == 1, own
    assert own[("avmae/train/divergence.py", "tolist")] == 1, own
    return dict(sum((per_step.get(step, Counter()) for step in NON_BOUNDARY_STEPS), Counter()))


def deepspeed_own(report: dict) -> dict[str, int]:
    """DeepSpeed's own events in the non-boundary steps, by kind (reported, not budgeted; on the CPU its moves to
    "the accelerator" are moves to "cpu" and count as copies off the device)."""
    kinds: Counter = Counter()
    for event in report["events"]:
        if event["source"] == "deepspeed" and event["step"] in NON_BOUNDARY_STEPS:
            kinds[event["kind"]] += event["count"]
    return dict(kinds)
