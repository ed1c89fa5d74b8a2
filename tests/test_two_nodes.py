"""Two SLURM nodes for real (tests/slurm/two_node_cluster.sh: two slurmd, each in its own network and UTS
namespace): pretraining, the shard array, evaluation and the loss of a node, each checked against the same work on
one node or in one process."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import REPO, build_arguments, build_shards, metrics, run_config, torchrun
from tests.slurm_jobs import NODES, needs_two_nodes, node_processes, submit, submit_and_wait, wait_for

TWO_NODES = ["--nodes=2", "--ntasks-per-node=1"]
ONE_NODE = ["--nodes=1", "--ntasks-per-node=2"]
# One CPU per task and no GPU: the recipe's #SBATCH lines ask for 8 GPUs and 12 CPUs per task.
SMALL = ["--gpus-per-node=0", "--cpus-per-task=1", "--time=00:10:00"]
RANK_LINE = re.compile(r"avmae: rank (\d+)/(\d+) local (\d+) on (\S+), rendezvous (\S+):(\d+), gloo")


def job_log(folder: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(folder.glob("job-*.out")))


def ranks(log: str) -> dict[int, tuple[int, str, str]]:
    """rank -> (local rank, host, rendezvous host) from the line avmae.distributed prints for every rank."""
    return {int(m[0]): (int(m[2]), m[3], m[4]) for m in RANK_LINE.findall(log)}


def pretrain(folder: Path, shards: Path, layout: list[str]) -> Path:
    """4 steps of the tiny pretraining through slurm/pretrain_as2m.sbatch with the given --nodes/--ntasks-per-node."""
    folder.mkdir()
    config = run_config(folder, shards, optim={"steps": 4, "lr": 1e-3, "warmup_steps": 1},
                        checkpoint={"every": 2, "keep": 2})
    _, states = submit_and_wait(
        [*layout, *SMALL, f"--output={folder}/job-%j.out",
         "--export=ALL,OMP_NUM_THREADS=1,AVMAE_CONFIG=" + str(config), "slurm/pretrain_as2m.sbatch",
         "--set", "log.every=1"], cwd=REPO, timeout=300)
    assert states == ["COMPLETED"], job_log(folder)[-3000:]
    return folder / "run"


def test_srun_ranks_win_over_variables_inherited_from_the_submitting_shell():
    from avmae.distributed import environment_from_slurm, launcher_of

    inherited = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}  # what a run in the submitting process left
    task = {"SLURM_PROCID": "1", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0",
            "SLURM_JOB_ID": "7", "MASTER_ADDR": "avmae-n1", "SLURM_JOB_NODELIST": "avmae-n[1-2]"}
    assert launcher_of({**inherited, **task}) == "slurm"
    assert environment_from_slurm({**inherited, **task}) == {
        "RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "avmae-n1", "MASTER_PORT": "20007"}
    batch_script = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_ID": "7"}  # no step: python run directly
    assert launcher_of(batch_script) == "single" and environment_from_slurm(batch_script) == {}
    assert launcher_of({**task, "TORCHELASTIC_RUN_ID": "x", **inherited}) == "torchrun"  # srun ... torchrun
    # a process alone, after an earlier set-up in it (or its parent) left the variables and the mark
    alone = {**inherited, "AVMAE_ALONE": "1"}
    assert launcher_of(alone) == "single" and launcher_of(inherited) == "torchrun"
    assert launcher_of({**alone, **task}) == "slurm" and launcher_of({**alone, "TORCHELASTIC_RUN_ID": "x"}) == "torchrun"


@pytest.fixture(scope="module")
def two_node_run(shards, tmp_path_factory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("two_nodes") / "two"
    return pretrain(folder, shards, TWO_NODES), job_log(folder)


@pytest.mark.slurm
@pytest.mark.slow
@needs_two_nodes
def test_pretraining_on_two_nodes_equals_one_node_with_two_tasks(two_node_run, shards, tmp_path):
    run, log = two_node_run
    assert "2 tasks on 2 node(s), rendezvous avmae-n1:" in log
    # one rank per host, both local rank 0, both meeting at the first host of the node list (avmae-n[1-2])
    assert ranks(log) == {0: (0, "avmae-n1", "avmae-n1"), 1: (0, "avmae-n2", "avmae-n1")}, log[-3000:]
    one = pretrain(tmp_path / "one", shards, ONE_NODE)
    one_log = job_log(tmp_path / "one")
    host = ranks(one_log)[0][1]
    assert host in NODES and ranks(one_log) == {0: (0, host, host), 1: (1, host, host)}
    two_losses = {m["step"]: m["loss"] for m in metrics(run) if "loss" in m}
    one_losses = {m["step"]: m["loss"] for m in metrics(one) if "loss" in m}
    assert sorted(two_losses) == [1, 2, 3, 4]
    # the same ranks read the same samples and gloo sums two numbers in either order alike: equal, not close
    assert two_losses == one_losses
    assert (run / "checkpoints" / "step00000004" / "complete.json").exists()
    from safetensors.torch import load_file  # the header's metadata names the run folder: compare the tensors

    two_weights, one_weights = (load_file(str(r / "export" / "model.safetensors")) for r in (run, one))
    assert two_weights.keys() == one_weights.keys()
    assert all(torch.equal(two_weights[k], one_weights[k]) for k in two_weights)


@pytest.mark.slurm
@pytest.mark.slow
@needs_two_nodes
def test_shard_array_over_two_nodes_is_byte_identical_to_one_process(synth_corpus, tmp_path):
    reference = build_shards(synth_corpus, tmp_path / "one")
    out = tmp_path / "array"
    # two CPUs per task: a whole node each, so the two array tasks run at once, one per node, each with 2 workers
    # (the script's --workers comes last and wins); [1:]: the script itself is `avmae-shard build`
    _, states = submit_and_wait(
        ["--array=0-1", "--cpus-per-task=2", f"--output={tmp_path}/job-%A_%a.out", "slurm/shard_build.sbatch",
         *build_arguments(synth_corpus, out, as_json=False)[1:]], cwd=REPO)
    logs = job_log(tmp_path)
    assert states == ["COMPLETED", "COMPLETED"], logs[-3000:]
    assert {f"on {node}" for node in NODES} <= {m for m in re.findall(r"on avmae-n\d", logs)}
    files = sorted(p.relative_to(reference) for p in reference.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    different = [str(f) for f in files if (reference / f).read_bytes() != (out / f).read_bytes()]
    assert different == []


@pytest.mark.slurm
@pytest.mark.slow
@needs_two_nodes
def test_evaluation_on_two_nodes_equals_one_process(two_node_run, shards, tmp_path):
    from avmae.cli.eval import main as eval_main

    pretrained, _ = two_node_run
    (tmp_path / "finetune").mkdir()
    torchrun(run_config(tmp_path / "finetune", shards, task="finetune", data={"eval_split": "val"},
                        init={"kind": "avmae", "path": str(pretrained)}, finetune={"loss": "ce"},
                        optim={"steps": 4, "lr": 2e-3, "warmup_steps": 1}, checkpoint={"every": 4, "keep": 1}),
             processes=1)
    args = ["--ckpt", str(tmp_path / "finetune" / "run"), "--data", str(shards), "--split", "train", "--task",
            "vggsound", "--workers", "0", "--batch-size", "4", "--json"]
    assert eval_main([*args, "--out", str(tmp_path / "single")]) == 0
    _, states = submit_and_wait([*TWO_NODES, *SMALL, f"--output={tmp_path}/job-%j.out",
                                 "--export=ALL,OMP_NUM_THREADS=1", "slurm/eval.sbatch", *args,
                                 "--out", str(tmp_path / "double")], cwd=REPO)
    log = job_log(tmp_path)
    assert states == ["COMPLETED"], log[-3000:]
    assert {r[1] for r in ranks(log).values()} == set(NODES)
    single, double = (json.loads((tmp_path / x / "report.json").read_text()) for x in ("single", "double"))
    assert double["world_size"] == 2 and double["metrics"] == single["metrics"]
    a, b = (np.load(tmp_path / x / "predictions.npz") for x in ("single", "double"))
    assert a["keys"].tolist() == b["keys"].tolist()  # every sample once, in the same order
    assert np.allclose(a["scores"], b["scores"], atol=1e-6)


@pytest.mark.slurm
@pytest.mark.slow
@needs_two_nodes
def test_losing_a_node_ends_the_job_which_requeues_itself_and_resumes_to_the_end(shards, tmp_path):
    steps = 40
    config = run_config(tmp_path, shards, optim={"steps": steps, "lr": 1e-3, "warmup_steps": 1},
                        checkpoint={"every": 3, "keep": 2})
    job = submit([*TWO_NODES, *SMALL, f"--output={tmp_path}/job-%j.out",
                  # launch.sh gives the other node this long to report once the batch node's tasks left
                  "--export=ALL,OMP_NUM_THREADS=1,AVMAE_STEP_GRACE_S=10,AVMAE_CONFIG=" + str(config),
                  "slurm/pretrain_as2m.sbatch"], cwd=REPO)
    log = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 7):
        time.sleep(0.2)
    assert log.exists(), job_log(tmp_path)[-3000:]
    # the second node dies: its job step daemon and its rank, everything but slurmd (which stays, as when the
    # OOM killer strikes; a node whose slurmd goes too is SLURM's NODE_FAIL, which SLURM requeues by itself)
    slurmd = int(Path(f"/run/slurmd-{NODES[1]}.pid").read_text())
    victims = {pid: name for pid, name in node_processes(NODES[1]).items() if pid != slurmd}
    assert "python3" in victims.values() and "slurmstepd" in victims.values(), victims
    killed = time.time()
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    # The surviving rank's collective fails; it says so and requeues the job (guard.max_requeues), no person needed.
    requeued = ("avmae-train: rank 0: requeued to resume from the newest complete checkpoint (lost-rank restart 1 of "
                "at most 3)")
    while time.time() < killed + 90 and requeued not in job_log(tmp_path):
        time.sleep(0.2)
    assert requeued in job_log(tmp_path), job_log(tmp_path)[-3000:]
    assert time.time() - killed < 60
    assert wait_for(job, timeout=300) == ["COMPLETED"], job_log(tmp_path)[-3000:]
    text = job_log(tmp_path)
    assert "restart 1" in text and "restart 2" not in text
    resumed_at = int(re.search(r"resumed from step (\d+) ", text)[1])
    assert 0 < resumed_at < steps and resumed_at % 3 == 0
    steps_logged = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert steps_logged[-1] == steps and sorted(set(steps_logged)) == list(range(1, steps + 1))
    assert f'{{"step": {steps}, "finished": true, "signal": 0, "best": null}}' in text
