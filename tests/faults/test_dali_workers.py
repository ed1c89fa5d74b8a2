"""A rank whose process dies takes its DALI feed workers with it (avmae/data/dali_feed.py, PR_SET_PDEATHSIG): killed
(SIGKILL: the OOM killer, a node's cleanup), terminated (SIGTERM, as torchrun and SLURM end the ranks of a failed job;
Python's default action runs no exit handler) or failing with an error, no worker process of its process group stays
behind (re-parented to init, holding memory, shared memory and shard files), and no /dev/shm file the job had mapped
(DALI's ``nvidia_dali_*`` segments) or made is left."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import build_shards

pytestmark = pytest.mark.dali

# The rank: a training DALI loader with one feed worker, one batch taken; it reports its workers and the /dev/shm files
# it and they map, then fails or waits to be killed.
RANK = """
import json, sys, time
import psutil
from avmae.data.config import DataConfig
from avmae.data.loader import build_loader

config = DataConfig(shards=sys.argv[1], backend="dali", batch_size=2, workers=1, num_frames=4, crop_size=64,
                    shuffle_buffer=2)
stream = iter(build_loader(config, "train", train=True))
next(stream)
me = psutil.Process()
tree = [me, *me.children(recursive=True)]
shm = sorted({m.path for p in tree for m in p.memory_maps() if m.path.startswith("/dev/shm/")})
print(json.dumps({"workers": [p.pid for p in tree[1:]], "shm": shm}), flush=True)
if sys.argv[2] == "fail":
    raise RuntimeError("this rank fails")
time.sleep(300)
"""


@pytest.fixture(scope="module")
def shards(synth_corpus, tmp_path_factory) -> Path:
    return build_shards(synth_corpus, tmp_path_factory.mktemp("dali_workers") / "shards", val_fraction=0)


def _alive(pid: int) -> bool:
    """A process that still runs: a zombie has let go of its memory and files, and waits only to be reaped."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _group(pgid: int) -> list[int]:
    import psutil

    members = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and _alive(process.pid):
                members.append(process.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return members


@pytest.mark.parametrize("end", ["kill", "term", "fail"])
def test_feed_workers_die_with_their_rank(shards, end):
    pytest.importorskip("nvidia.dali")
    shm_before = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
    rank = subprocess.Popen([sys.executable, "-c", RANK, str(shards), end], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # its own process group
    try:
        ready, _, _ = select.select([rank.stdout], [], [], 180)
        assert ready, "the rank did not report its workers in 180 s"
        line = rank.stdout.readline()
        assert line, f"the rank ended before reporting: {rank.stderr.read()[-2000:]}"
        report = json.loads(line)
        assert len(report["workers"]) >= 1 and all(_alive(pid) for pid in report["workers"])
        if end != "fail":
            os.kill(rank.pid, signal.SIGKILL if end == "kill" else signal.SIGTERM)
        rank.wait(timeout=60)
        assert rank.returncode != 0
        deadline = time.monotonic() + 5
        while (_group(rank.pid) or any(map(_alive, report["workers"]))) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _group(rank.pid) == [] and not any(map(_alive, report["workers"])), "a feed worker outlived its rank"
        # DALI's shared memory: /dev/shm/nvidia_dali_* segments (and semaphores), which the rank and its worker map
        assert [path for path in report["shm"] if os.path.exists(path)] == []
        shm_after = set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()
        assert [name for name in shm_after - shm_before if name.startswith(("nvidia_dali", "avmae"))] == []
    finally:
        if rank.poll() is None:
            rank.kill()
            rank.wait()
        for pid in _group(rank.pid):  # leave nothing behind when the test fails
            os.kill(pid, signal.SIGKILL)
