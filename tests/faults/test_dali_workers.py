"""A rank whose process dies takes its DALI feed workers with it (avmae/data/dali/feed.py, PR_SET_PDEATHSIG): killed
(SIGKILL: the OOM killer, a node's cleanup), terminated (SIGTERM, as torchrun and SLURM end the ranks of a failed job;
Python's default action runs no exit handler) or failing with an error, no worker process of its process group stays
behind (re-parented to init, holding memory, shared memory and shard files), and no /dev/shm file the job had mapped
(DALI's ``nvidia_dali_*`` segments) or made is left. And a feed worker's skip-budget stop at start-up reaches the
trainer as the reader's one line."""

from __future__ import annotations

import json
import os
import re
import select
import shutil
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


@pytest.fixture(scope="module")
def all_bad(shards, tmp_path_factory) -> Path:
    """A copy in which every sample's log-mel has a flipped byte: every draw is a checksum skip."""
    from tests.faults.damage import flip_every_sample

    bad = tmp_path_factory.mktemp("dali_all_bad") / "shards"
    shutil.copytree(shards, bad)
    flip_every_sample(bad.glob("train-*.tar"), "logmel.npy")
    return bad


BUDGET = (r"^rank 0 reader 0: 6 bad samples in a row \(data.max_skip_run=5\); most skips in .*train-\d+\.tar \(\d+\)"
          r".*; reasons: checksum 6")


@pytest.mark.parametrize("workers", [0, 1])
def test_a_budget_stop_at_start_up_is_the_readers_one_line(all_bad, workers):
    """In the serial feed the reader's error reaches the loader as it is; from a feed worker DALI wraps it in a bare
    Exception holding the worker's traceback (46 lines), which the loader unwraps to the reader's class and line."""
    pytest.importorskip("nvidia.dali")
    from avmae.data.config import DataConfig
    from avmae.data.dali.feed import WORKER_SUFFIX
    from avmae.data.faults import SkipBudgetExceeded
    from avmae.data.loader import build_loader

    config = DataConfig(shards=str(all_bad), backend="dali", batch_size=1, workers=workers, num_frames=4, crop_size=64,
                        shuffle_buffer=1, max_skip_run=5)
    with pytest.raises(SkipBudgetExceeded, match=BUDGET + (re.escape(WORKER_SUFFIX) if workers else "") + "$") as stop:
        next(iter(build_loader(config, "train", train=True)))
    assert "\n" not in str(stop.value) and "Traceback" not in str(stop.value)
    if workers:
        assert stop.value.__suppress_context__  # DALI's 46 lines are not chained on


def _wrapped(last_line: str) -> Exception:
    """An error as DALI's pool raises a worker's (nvidia/dali/_multiproc/pool.py, handle_error)."""
    return Exception("\n\nException traceback received from worker thread:\n\nTraceback (most recent call last):\n"
                     '  File "/x/dali_feed.py", line 96, in __iter__\n    rows = reader_rows()\n'
                     "            ^^^^^^^^^^^^^\n" + last_line + "\n")


def test_worker_error_rebuilds_the_workers_class_and_line():
    from avmae.data.dali.feed import WORKER_SUFFIX, worker_error
    from avmae.data.faults import SkipBudgetExceeded

    found = worker_error(_wrapped("avmae.data.faults.SkipBudgetExceeded: rank 0 reader 1: 9 bad samples"))
    assert type(found) is SkipBudgetExceeded and str(found) == "rank 0 reader 1: 9 bad samples" + WORKER_SUFFIX
    found = worker_error(_wrapped("OSError: [Errno 5] Input/output error: 'a.tar'"))
    assert type(found) is OSError and str(found) == "[Errno 5] Input/output error: 'a.tar'" + WORKER_SUFFIX
    # A class that takes other arguments than one line, and one from outside avmae: the line, as a RuntimeError
    found = worker_error(_wrapped("avmae.data.faults.SampleError: a.tar: sample k member 00.jpg: decode: bad"))
    assert type(found) is RuntimeError and str(found).startswith("avmae.data.faults.SampleError: a.tar: sample k")
    found = worker_error(_wrapped("somepackage.errors.Odd: text"))
    assert type(found) is RuntimeError and str(found) == "somepackage.errors.Odd: text" + WORKER_SUFFIX
    assert worker_error(RuntimeError("Critical error in pipeline")) is None  # not a worker's: left as it is


@pytest.mark.slow
def test_avmae_train_with_dali_says_a_workers_budget_stop_in_one_line(all_bad, tmp_path):
    pytest.importorskip("nvidia.dali")
    from tests.faults.test_training_faults import stop_line, train
    from tests.helpers import run_config

    config = run_config(tmp_path, all_bad, data={"backend": "dali", "workers": 1, "max_skip_run": 5, "batch_size": 1})
    process = train(config)
    assert process.returncode == 1, process.stderr[-3000:]
    line = stop_line(process)
    assert "rank 0 reader 0: 6 bad samples in a row (data.max_skip_run=5); most skips in " in line, line
    assert line.endswith("reasons: checksum 6 (in a DALI feed worker)"), line
    assert "Traceback" not in process.stderr, process.stderr[-3000:]
