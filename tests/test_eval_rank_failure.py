"""A rank of a distributed evaluation that cannot score its share ends the job at once with its own one-line error.
It used to enter a barrier while its peers were gathering scores: the collectives did not match, every rank waited
the whole collective timeout (1800 s, not settable), and the barrier's timeout replaced the real error."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from avmae.data.eval_order import eval_range
from avmae.data.spec import load_spec
from avmae.recipe.config import GuardConfig
from tests.faults.damage import flip_bits_in_place
from tests.helpers import REPO, free_port, initialised_export

pytestmark = pytest.mark.serial  # asserts how soon the job ends: not beside other tests' load

# Long enough that a job waiting out a collective's timeout cannot pass the bound below; short enough that such a
# regression still ends by itself.
COLLECTIVE_TIMEOUT_S = 120
BOUND_S = 60


@pytest.fixture(scope="module")
def export(shards, tmp_path_factory) -> Path:
    """A classifier export of the tiny model (weights as initialised: the weights are not under test)."""
    return initialised_export(tmp_path_factory.mktemp("export"), shards)


@pytest.fixture
def rank_one_damaged(shards, tmp_path) -> tuple[Path, list[str]]:
    """A copy of the shards in which every sample of rank 1's evaluation range (of 2 ranks) fails its checksum, so
    that rank cannot score anything and stops (evaluation has no skip budget: a rank with some good samples counts
    its bad ones and goes on); returns the copy and the names of the tars damaged. Rank 0's share is intact."""
    copy = tmp_path / "shards"
    shutil.copytree(shards, copy)
    tars = load_spec(copy, "train").shards
    first, end = eval_range(sum(tar.samples for tar in tars), 1, 2)
    start, damaged = 0, []
    for tar in tars:
        for sample in range(tar.samples):
            if first <= start + sample < end:
                flip_bits_in_place(Path(tar.tar), "01.jpg", sample)
                damaged.append(Path(tar.tar).name)
        start += tar.samples
    return copy, sorted(set(damaged))


def _run(command: list[str], limit_s: float) -> tuple[int, str, float]:
    """(exit status, stderr, seconds) of ``command``; past ``limit_s`` it and the ranks it started are killed."""
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                               env={**os.environ, "OMP_NUM_THREADS": "1"}, process_group=0)
    try:
        _, stderr = process.communicate(timeout=limit_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        _, stderr = process.communicate()
    return process.returncode, stderr, time.monotonic() - started


def test_a_failing_rank_ends_the_job_at_once_with_its_own_line(export, rank_one_damaged, tmp_path):
    data, damaged = rank_one_damaged
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "-m", "avmae.cli.eval", "--ckpt", str(export), "--data", str(data), "--split", "train",
               "--task", "vggsound", "--backend", "torch", "--device", "cpu", "--out", str(tmp_path / "out"),
               "--workers", "0", "--batch-size", "4", "--json", "--collective-timeout-s", str(COLLECTIVE_TIMEOUT_S)]
    status, stderr, took = _run(command, COLLECTIVE_TIMEOUT_S + 60)
    assert status != 0
    assert took < BOUND_S, f"{took:.0f} s: {stderr[-3000:]}"
    failing = [line for line in stderr.splitlines() if line.startswith("avmae-eval: rank 1 ")]
    assert failing, stderr[-3000:]
    assert "every one of the" in failing[0] and "samples of its evaluation range is bad" in failing[0], failing
    assert damaged[0] in failing[0], (damaged, failing)
    assert "Timed out" not in stderr, stderr[-3000:]  # no collective waited out its timeout
    assert not (tmp_path / "out" / "report.json").exists()


def test_the_collective_timeout_is_a_flag_whose_default_is_trainings():
    from avmae.eval.request import EvalRequest

    assert EvalRequest("ckpt", "data", "vggsound").collective_timeout_s == GuardConfig.collective_timeout_s
    shown = subprocess.run([sys.executable, "-m", "avmae.cli.eval", "--help"], capture_output=True, text=True,
                           cwd=REPO, check=True).stdout
    assert "--collective-timeout-s" in shown
    shown_default = f"as training's guard.collective_timeout_s (default: {GuardConfig.collective_timeout_s})"
    assert shown_default in " ".join(shown.split())
    with pytest.raises(ValueError, match="collective_timeout_s must be more than 0"):
        EvalRequest("ckpt", "data", "vggsound", collective_timeout_s=0).validate()
