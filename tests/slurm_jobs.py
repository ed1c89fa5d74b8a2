"""Submit an sbatch script to the (localhost) SLURM cluster and wait for it, polling scontrol: `sbatch --wait`
polls coarsely, up to 10 s late (reference/environment.md)."""

from __future__ import annotations

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


def submit_and_wait(args: list[str], cwd, timeout: float = 300) -> tuple[str, list[str]]:
    out = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout
    job_id = out.strip().split(";")[0]
    deadline = time.time() + timeout
    states: list[str] = []
    while time.time() < deadline:
        states = job_states(job_id)
        if states and all(state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
                          for state in states):
            return job_id, states
        time.sleep(0.25)
    subprocess.run(["scancel", job_id])
    raise TimeoutError(f"job {job_id} still {states} after {timeout} s")
