"""``guard.collective_timeout_s`` bounds the collectives DeepSpeed runs on its own groups too: ZeRO reduces gradients
and gathers parameters on a copy of the world group, which torch would otherwise create with its default timeout
(30 minutes on gloo). A rank that hangs while the others train then ends their step after the job's timeout."""

from __future__ import annotations

import os
import time

import pytest
import torch
import torch.multiprocessing as mp

from tests.helpers import free_port

pytestmark = pytest.mark.serial  # rank 0 must fail within the timeout: not beside other tests' load

TIMEOUT_S = 2


def _rank(rank: int, port: str, stage: int, results) -> None:
    import deepspeed

    from avmae.distributed import ALONE, setup_distributed

    # What a launcher gives its workers; not the mark of a process alone, which an earlier test's in-process run
    # may have left in the environment this process inherited.
    os.environ.pop(ALONE, None)
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=port)
    setup_distributed(device_name="cpu", timeout_s=TIMEOUT_S)
    model = torch.nn.Linear(8, 8)
    # A torch optimizer, as the trainer passes: DeepSpeed's own "Adam" is an op it compiles on first use (minutes
    # on 2 cores, longer than this test waits for its ranks).
    engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3), config={
        "train_micro_batch_size_per_gpu": 2, "zero_optimization": {"stage": stage}})
    if rank == 1:  # hangs: alive, connected, never answering, until rank 0 has its answer
        deadline = time.time() + 120
        while "rank 0" not in results and time.time() < deadline:
            time.sleep(0.2)
        os._exit(0)
    started = time.time()
    try:
        loss = engine(torch.ones(2, 8)).square().mean()
        engine.backward(loss)
        engine.step()
        results["rank 0"] = ("the step finished without its peer", 0.0)
    except RuntimeError as err:
        results["rank 0"] = (str(err).splitlines()[0], time.time() - started)
    os._exit(0)  # tearing down a group with a hung peer would wait on it


@pytest.mark.parametrize("stage", [2, 3])
def test_a_rank_hung_in_a_zero_step_fails_the_others_after_the_jobs_timeout(stage):
    results = mp.Manager().dict()
    context = mp.get_context("spawn")
    port = free_port()
    ranks = [context.Process(target=_rank, args=(rank, port, stage, results)) for rank in range(2)]
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(timeout=180)
        if process.is_alive():  # a failed test leaves nothing running
            process.kill()
    message, waited = results.get("rank 0", ("rank 0 never answered", 0.0))
    assert "Timed out" in message or "timed out" in message, message
    assert TIMEOUT_S - 0.5 <= waited < TIMEOUT_S + 10  # torch's default would be 1800 s
