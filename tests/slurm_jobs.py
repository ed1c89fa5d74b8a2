"""Submit an sbatch script to the test SLURM cluster and wait for it, polling scontrol: `sbatch --wait` polls
coarsely, up to 10 s late (docs/reference/libraries.md#sbatch-wait-polls-coarsely). The cluster is
tests/slurm/two_node_cluster.sh (two nodes in network namespaces) or, where namespaces are not available,
tests/slurm/localhost_cluster.sh (one node)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest

needs_slurm = pytest.mark.skipif(shutil.which("sbatch") is None, reason="no sbatch: start tests/slurm/localhost_cluster.sh")


def job_states(job_id: str) -> list[str]:
    """States of a job (one per array task)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return re.findall(r"JobState=(\S+)", out)


ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")


def submit(args: list[str], cwd) -> str:
    out = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout
    return out.strip().split(";")[0]


def wait_for(job_id: str, timeout: float = 300) -> list[str]:
    """The job's final states; cancels it and raises after ``timeout`` seconds."""
    deadline = time.time() + timeout
    states: list[str] = []
    while time.time() < deadline:
        states = job_states(job_id)
        if states and all(state in ENDED for state in states):
            return states
        time.sleep(0.25)
    subprocess.run(["scancel", job_id])
    raise TimeoutError(f"job {job_id} still {states} after {timeout} s")


def submit_and_wait(args: list[str], cwd, timeout: float = 300) -> tuple[str, list[str]]:
    job_id = submit(args, cwd)
    return job_id, wait_for(job_id, timeout)


# The two-node cluster (tests/slurm/two_node_cluster.sh): each node a network namespace under /run/netns.
NODES = ("avmae-n1", "avmae-n2")


def cluster_nodes() -> list[str]:
    if shutil.which("sinfo") is None:
        return []
    out = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True).stdout
    return sorted(set(out.split()))


needs_two_nodes = pytest.mark.skipif(
    cluster_nodes() != list(NODES),
    reason="needs the two-node SLURM cluster: as root, bash tests/slurm/two_node_cluster.sh start "
           "(pipelines/test.sh starts it; it needs apt-get and network namespaces)")


def node_processes(node: str) -> dict[int, str]:
    """pid -> command name of every process in the node's network namespace (its slurmd, job steps and tasks)."""
    namespace = os.stat(f"/run/netns/{node}").st_ino
    found = {}
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}/ns/net").st_ino == namespace:
                found[int(entry)] = open(f"/proc/{entry}/comm").read().strip()
        except OSError:
            continue  # gone meanwhile
    return found
