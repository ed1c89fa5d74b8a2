"""Process-group set-up from SLURM, torchrun or nothing (one process), before DeepSpeed sees it.

DeepSpeed falls back to MPI discovery (and needs mpi4py) when RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT /
LOCAL_RANK are missing (engineering.md 5.3); so they are always set here, from SLURM's variables when srun
started us: MASTER_ADDR is the first host of the job's node list, MASTER_PORT is derived from the job id so two
jobs sharing a node do not collide.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta

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


def setup_distributed(device_name: str | None = None, timeout_s: float = 1800.0) -> DistInfo:
    """Set the variables, choose the device and backend (NCCL on CUDA, gloo on CPU), start the process group.
    The one set-up of training and evaluation; ``device_name="cpu"`` keeps a GPU machine's process on the CPU.
    ``timeout_s`` (``guard.collective_timeout_s``) bounds every collective of the group: a rank that died or hangs
    ends the job with an error on the others instead of leaving them waiting for ever."""
    import deepspeed

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
    if torch.cuda.is_available() and device_name != "cpu":
        torch.cuda.set_device(local_rank)
        device, backend = torch.device("cuda", local_rank), "nccl"
    else:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        device, backend = torch.device("cpu"), "gloo"
    if launcher != "single":  # one line per rank: on many nodes, which host holds which rank is the first question
        print(f"avmae: rank {rank}/{world} local {local_rank} on {socket.gethostname()}, rendezvous "
              f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}, {backend}", file=sys.stderr, flush=True)
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

    if groups._WORLD_GROUP is None:  # every rank calls this, as creating a group needs
        groups._WORLD_GROUP = torch.distributed.new_group(ranks=list(range(world)), timeout=timeout)
