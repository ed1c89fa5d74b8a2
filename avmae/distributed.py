"""Process-group set-up from SLURM, torchrun or nothing (one process), before DeepSpeed sees it.

DeepSpeed falls back to MPI discovery (and needs mpi4py) when RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT /
LOCAL_RANK are missing (deepspeed/comm/comm.py, ``init_distributed``); so they are always set here, from SLURM's
variables when srun started us: MASTER_ADDR is the first host of the job's node list, MASTER_PORT is derived from
the job id so two jobs sharing a node do not collide.

The device is ``cuda:(LOCAL_RANK % device_count)``, and a machine whose GPUs torch cannot use stops with one line
instead of running on the CPU; both decisions are pure functions of the facts they are given (``choose_device``),
so the tests try them without a GPU. NCCL's error-handling variables get their defaults here too, before the
group starts.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    backend: str
    launcher: str  # "slurm", "torchrun" or "single"

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``node[01-04],gpu7`` -> ``node01``), via scontrol when available."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
        return out.stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        head = nodelist.split(",")[0]
        if "[" in head:
            prefix, rest = head.split("[", 1)
            head = prefix + rest.split("-")[0].split(",")[0].rstrip("]")
        return head


def port_for_job(job_id: str) -> int:
    """A port in [20000, 30000) that depends on the job id only (every task of the job computes the same one)."""
    return 20000 + int(job_id) % 10000


def free_port() -> int:
    """A port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


ALONE = "AVMAE_ALONE"  # set with the torch.distributed variables of a process that runs alone


def launcher_of(env: dict[str, str]) -> str:
    """Who started this process: torchrun marks its workers (TORCHELASTIC_RUN_ID), srun its tasks (SLURM_STEP_ID; a
    batch script has SLURM_PROCID=0 but no step, and a process it runs directly is alone). In that order, because
    sbatch hands the submitting shell's variables to the job: a RANK=0 WORLD_SIZE=1 left there by an earlier run in
    the same process (the test suite) made every srun task a rank 0 of its own (seen on the two-node cluster)."""
    if "TORCHELASTIC_RUN_ID" in env:
        return "torchrun"
    if "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
        return "slurm"
    if env.get(ALONE) == "1":  # RANK and the rest were set by an earlier set-up of a process alone, not a launcher
        return "single"
    return "torchrun" if "RANK" in env else "single"


def environment_from_slurm(env: dict[str, str]) -> dict[str, str]:
    """The torch.distributed variables for one srun task (empty when not under srun); they replace any inherited."""
    if launcher_of(env) != "slurm":
        return {}
    return {
        "RANK": env["SLURM_PROCID"],
        "WORLD_SIZE": env.get("SLURM_NTASKS", "1"),
        "LOCAL_RANK": env.get("SLURM_LOCALID", "0"),
        "MASTER_ADDR": env.get("MASTER_ADDR") or first_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")),
        "MASTER_PORT": env.get("MASTER_PORT") or str(port_for_job(env.get("SLURM_JOB_ID", "0"))),
    }


DEVICE_VARIABLE = "AVMAE_DEVICE"  # "cpu": run on the CPU on purpose, on a machine that has GPUs
BACKEND_VARIABLE = "AVMAE_DIST_BACKEND"  # "avmae_checked": the CPU rehearsal of NCCL's rules (avmae/testing_backend.py)
NVIDIA_PROC = Path("/proc/driver/nvidia")


class NoUsableGPU(ValueError):
    """The machine shows NVIDIA GPUs that torch cannot use; ``str(error)`` is the one line a person reads (a
    ValueError: avmae-train and avmae-eval print it as bad input, without a traceback, and exit 2)."""


@dataclass(frozen=True)
class MachineGPUs:
    """What the machine itself shows of NVIDIA GPUs, whatever torch makes of them."""

    count: int  # GPUs the driver lists (0: none, or no driver)
    driver: str | None  # the kernel module's version, e.g. "535.104.05"


def gpus_of_machine(proc_root: Path = NVIDIA_PROC, smi: str | None = "nvidia-smi") -> MachineGPUs:
    """The NVIDIA driver's view: one folder per GPU under ``/proc/driver/nvidia/gpus`` and the version line of
    ``/proc/driver/nvidia/version`` ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05 ..."); where
    /proc shows nothing (a container that hides it), ``nvidia-smi -L`` lists the GPUs. ``smi=None`` skips it."""
    gpus = proc_root / "gpus"
    count = len(list(gpus.iterdir())) if gpus.is_dir() else 0
    version_file = proc_root / "version"
    driver = None
    if version_file.is_file():
        found = re.search(r"Kernel Module\s+([0-9][0-9.]*)", version_file.read_text(errors="replace"))
        driver = found.group(1) if found else None
    if (count == 0 or driver is None) and smi and shutil.which(smi):
        try:
            listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
            count = count or sum(line.startswith("GPU ") for line in listed.splitlines())
            query = [smi, "--query-gpu=driver_version", "--format=csv,noheader"]
            driver = driver or (subprocess.run(query, capture_output=True, text=True, timeout=30).stdout.split()
                                or [None])[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return MachineGPUs(count, driver)


def device_index(local_rank: int, device_count: int) -> int:
    """The CUDA device of a rank: ``LOCAL_RANK % device_count``. Under ``srun --gpus-per-task=1`` (or any per-task
    ``CUDA_VISIBLE_DEVICES``) each task sees one GPU, index 0, whatever its local rank; with every GPU of the node
    visible, the local rank picks one."""
    if device_count < 1:
        raise ValueError(f"device_index: no CUDA device to place local rank {local_rank} on")
    return local_rank % device_count


def choose_device(requested: str | None, cuda_available: bool, device_count: int, local_rank: int,
                  machine: MachineGPUs, torch_cuda: str | None) -> torch.device:
    """The rank's device, from the facts given: ``requested`` "cpu" (``device_name`` or ``AVMAE_DEVICE``) keeps the
    rank on the CPU; otherwise a usable GPU is used, and GPUs that the machine shows but torch cannot use (a
    driver older than torch's CUDA needs, or a CPU-only torch) are an error: a silent CPU run of a GPU job would
    take days and look like a slow cluster."""
    if requested not in (None, "", "cpu", "cuda"):
        raise ValueError(f"{DEVICE_VARIABLE} / device_name: {requested!r} is not 'cpu' or 'cuda'")
    if requested == "cpu":
        return torch.device("cpu")
    if cuda_available and device_count > 0:
        return torch.device("cuda", device_index(local_rank, device_count))
    if machine.count > 0 or requested == "cuda":
        shown = f"this machine shows {machine.count} NVIDIA GPU(s)" if machine.count else "a GPU was asked for"
        raise NoUsableGPU(
            f"avmae: {shown} (driver {machine.driver or 'unknown'}) but torch sees no usable CUDA device (torch "
            f"{torch.__version__}, built for CUDA {torch_cuda or 'none: a CPU-only build'}); install a torch built for "
            f"this driver's CUDA, or run on the CPU on purpose with {DEVICE_VARIABLE}=cpu")
    return torch.device("cpu")


def backend_for(device: torch.device, env: dict[str, str]) -> str:
    """NCCL on CUDA; on the CPU gloo, or the checking backend of the tests when ``AVMAE_DIST_BACKEND`` asks."""
    asked = env.get(BACKEND_VARIABLE, "")
    if device.type == "cuda":
        if asked and asked != "nccl":
            raise ValueError(f"{BACKEND_VARIABLE}={asked}: a CUDA device runs NCCL only")
        return "nccl"
    if asked in ("", "gloo"):
        return "gloo"
    from avmae import testing_backend

    if asked != testing_backend.NAME:
        raise ValueError(f"{BACKEND_VARIABLE}={asked}: not one of gloo, {testing_backend.NAME}")
    return testing_backend.register()


# What a cluster run of NCCL needs, set before the group starts and only where the user has not chosen otherwise.
# Names and values from torch 2.11's ProcessGroupNCCL.hpp and its "ProcessGroupNCCL Environment Variables" page
# (pytorch.org/docs/stable/torch_nccl_environment_variables.html):
# - TORCH_NCCL_ASYNC_ERROR_HANDLING=3: the watchdog tears the process down when a collective fails or passes the
#   group's timeout, instead of leaving it waiting on a dead rank; 3 (torch's default) skips aborting the
#   communicators first, an abort that can itself hang; stated here so the behaviour does not depend on the
#   version's default. TORCH_NCCL_BLOCKING_WAIT stays unset: a blocking wait() would stall the host at every
#   collective instead of only when a value is read.
# - TORCH_NCCL_DUMP_ON_TIMEOUT=1 with TORCH_NCCL_TRACE_BUFFER_SIZE>0: on a timeout each rank writes its flight
#   recorder (the last collectives it issued) to TORCH_NCCL_DEBUG_INFO_TEMP_FILE<rank> (default
#   /tmp/nccl_trace_rank_<rank>), which says which rank stopped issuing collectives.
NCCL_DEFAULTS = {
    "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3",
    "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
    "TORCH_NCCL_TRACE_BUFFER_SIZE": "2000",
}


def nccl_environment(env: dict[str, str]) -> dict[str, str]:
    """The NCCL variables to add to ``env``: the defaults above that it does not set already."""
    return {key: value for key, value in NCCL_DEFAULTS.items() if key not in env}


def setup_distributed(device_name: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Set the variables, choose the device and backend (NCCL on CUDA, gloo on CPU), start the process group.
    The one set-up of training and evaluation; ``device_name="cpu"`` (or ``AVMAE_DEVICE=cpu``) keeps a GPU
    machine's process on the CPU; a GPU the machine shows but torch cannot use is an error (``NoUsableGPU``).
    ``timeout_s`` (``guard.collective_timeout_s``) bounds every collective of the group: a rank that died or hangs
    ends the job with an error on the others instead of leaving them waiting for ever."""
    launcher = launcher_of(dict(os.environ))
    if launcher == "single":
        # A process alone is rank 0 of 1 whatever it inherited, and takes any free port: two single-process runs on
        # one machine (an evaluation beside a training run) must not meet on a fixed one. The mark tells a later
        # set-up in this process (or a child) that these variables are its own, not a launcher's.
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(free_port()), ALONE: "1"})
    else:
        os.environ.update(environment_from_slurm(dict(os.environ)))
        os.environ.pop(ALONE, None)
        for key, value in {"LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(port_for_job(os.environ.get("SLURM_JOB_ID", "0")))}.items():
            os.environ.setdefault(key, value)
    rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    requested = device_name or os.environ.get(DEVICE_VARIABLE) or None
    cuda = requested != "cpu" and torch.cuda.is_available()
    machine = gpus_of_machine() if requested != "cpu" and not cuda else MachineGPUs(0, None)
    device = choose_device(requested, cuda, torch.cuda.device_count() if cuda else 0, local_rank, machine,
                           torch.version.cuda)
    backend = backend_for(device, dict(os.environ))
    if device.type == "cuda":
        # Before the group starts: NCCL's communicator, and the byte tensors of object collectives, go on the
        # current device, which would otherwise be cuda:0 for every rank of the node.
        torch.cuda.set_device(device)
        os.environ.update(nccl_environment(dict(os.environ)))
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if launcher != "single":  # one line per rank: on many nodes, which host holds which rank is the first question
        print(f"avmae: rank {rank}/{world} local {local_rank} on {socket.gethostname()}, rendezvous "
              f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}, {backend} on {device}", file=sys.stderr,
              flush=True)
    import deepspeed  # here: after the device is chosen, a GPU that cannot be used stops the run without loading it

    timeout = timedelta(seconds=timeout_s)
    deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, timeout=timeout)
    _bound_deepspeed_world_copy(world, timeout)
    return DistInfo(rank, world, local_rank, device, backend, launcher)


def _bound_deepspeed_world_copy(world: int, timeout: timedelta) -> None:
    """DeepSpeed runs ZeRO's gradient reductions and parameter gathers on its own copy of the world group, which
    it creates with torch's default timeout (30 minutes on gloo, 10 on NCCL), not the one given to
    ``init_distributed``: a rank that hung during a reduction held the others that long, not
    ``guard.collective_timeout_s``. The copy is made here first, with the job's timeout; DeepSpeed then uses it."""
    from deepspeed.utils import groups

    # Made anew when absent or left from a process group that is gone (a second run in one process, after the
    # first destroyed its group: DeepSpeed's module-level copy outlives it). Every rank runs this: making a group is
    # a collective.
    if groups._WORLD_GROUP is None or not _registered(groups._WORLD_GROUP):
        groups._WORLD_GROUP = torch.distributed.new_group(ranks=list(range(world)), timeout=timeout)


def _registered(group) -> bool:
    """Whether ``group`` belongs to the current default process group (torch refuses a destroyed one's groups)."""
    try:
        torch.distributed.get_process_group_ranks(group)
    except (KeyError, ValueError, RuntimeError):
        return False
    return True
