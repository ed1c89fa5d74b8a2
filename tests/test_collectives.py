"""avmae.collectives is the one caller of torch.distributed's collectives, checked two ways: the source (no other
module under avmae/ names one, however it imports it) and a run (evaluation on two ranks under avmae_checked, the
gloo wrapper that refuses a collective that avmae.collectives did not make, as NCCL would refuse a CPU tensor)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from avmae import collectives
from tests.helpers import REPO, free_port, initialised_export, run_config

PACKAGE = REPO / "avmae"
ONE_HOME = PACKAGE / "collectives.py"
# The checking backend names the collectives it wraps; it calls gloo's, not torch.distributed's.
EXEMPT = {PACKAGE / "testing_backend.py"}
COLLECTIVE_PREFIXES = ("all_reduce", "all_gather", "gather", "broadcast", "barrier", "reduce", "scatter",
                       "monitored_barrier", "all_to_all")
COLLECTIVE_NAMES = {"send", "recv", "isend", "irecv"}
DISTRIBUTED_MODULES = ("torch.distributed", "torch.distributed.nn", "torch.distributed.nn.functional")


def _is_collective(name: str) -> bool:
    return name in COLLECTIVE_NAMES or name.startswith(COLLECTIVE_PREFIXES)


def _dotted(node: ast.AST) -> str | None:
    """``a.b.c`` for a chain of attributes on a name, else None."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return ".".join([node.id, *reversed(parts)])
    return None


def collective_calls(source: str, filename: str = "<source>") -> list[str]:
    """``line: name`` of each torch.distributed collective the source calls or imports by name: through an alias of
    the module (``import torch.distributed as dist``; ``dist.all_reduce``), its full path
    (``torch.distributed.barrier``), or an imported name (``from torch.distributed import all_gather``)."""
    tree = ast.parse(source, filename=filename)
    aliases = {"torch.distributed": "torch.distributed"}  # local name -> module it stands for
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("torch.distributed"):
                    aliases[alias.asname or alias.name] = alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "torch" and any(a.name == "distributed" for a in node.names):
                for alias in node.names:
                    if alias.name == "distributed":
                        aliases[alias.asname or "distributed"] = "torch.distributed"
            elif node.module.startswith("torch.distributed"):
                for alias in node.names:
                    if _is_collective(alias.name):
                        found.append(f"{node.lineno}: from {node.module} import {alias.name}")
                    elif node.module in ("torch.distributed", "torch.distributed.nn"):
                        aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_collective(node.attr):
            owner = _dotted(node.value)
            if owner is None:
                continue
            head, _, rest = owner.partition(".")
            module = aliases.get(owner) or (aliases.get(head, "") + ("." + rest if rest else "") if head in aliases
                                            else "")
            if module.startswith(DISTRIBUTED_MODULES):
                found.append(f"{node.lineno}: {owner}.{node.attr}")
    return sorted(set(found), key=lambda entry: int(entry.split(":")[0]))


def test_the_scan_finds_every_way_of_calling_a_collective():
    source = "\n".join([
        "import torch",
        "import torch.distributed as dist",
        "import torch.distributed",
        "from torch import distributed as d2",
        "from torch.distributed import all_gather_object, get_rank",
        "from torch.distributed.nn.functional import all_gather",
        "dist.all_reduce(x)",
        "torch.distributed.barrier()",
        "d2.broadcast_object_list([1])",
        "dist.get_rank(); dist.is_initialized(); torch.gather(x, 1, i)",
        "dist.reduce_scatter_tensor(a, b)",
        "dist.monitored_barrier()",
    ])
    found = collective_calls(source)
    assert [entry.split(": ")[1] for entry in found] == [
        "from torch.distributed import all_gather_object", "from torch.distributed.nn.functional import all_gather",
        "dist.all_reduce", "torch.distributed.barrier", "d2.broadcast_object_list", "dist.reduce_scatter_tensor",
        "dist.monitored_barrier"]


def test_no_module_but_collectives_calls_a_torch_distributed_collective():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == ONE_HOME or path in EXEMPT:
            continue
        calls = collective_calls(path.read_text(), str(path))
        if calls:
            offenders[str(path.relative_to(REPO))] = calls
    assert not offenders, f"call avmae.collectives instead: {offenders}"
    assert collective_calls(ONE_HOME.read_text())  # the scan sees the module's own calls


def test_without_a_process_group_each_collective_returns_its_input_as_a_copy():
    assert not collectives.is_distributed() and collectives.world_size() == 1 and collectives.rank() == 0
    assert collectives.group_device() == torch.device("cpu")
    tensor = torch.tensor([1.0, 5.0, 3.0])
    for op in ("sum", "max", "min"):
        reduced = collectives.all_reduce(tensor, op)
        assert torch.equal(reduced, tensor) and reduced.data_ptr() != tensor.data_ptr()
    gathered = collectives.all_gather_tensor(tensor)
    assert torch.equal(gathered, tensor) and gathered.data_ptr() != tensor.data_ptr()
    assert collectives.all_reduce_values([1, 2.5], "max") == [1.0, 2.5]
    assert collectives.all_gather_object({"a": 1}) == [{"a": 1}]
    assert collectives.gather_object(7) == [7] and collectives.gather_object(7, dst=1) is None
    assert collectives.broadcast_object("x") == "x"
    collectives.barrier()
    with pytest.raises(ValueError, match="'mean' is not one of"):
        collectives.all_reduce(tensor, "mean")


def _two_ranks(rank: int, port: str, backend: str, results) -> None:
    """One rank of the checks below; what it saw goes to ``results`` (a manager dict) under its rank."""
    from avmae import testing_backend

    testing_backend.register()
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group(backend, rank=rank, world_size=2)
    seen = {
        "backend": dist.get_backend(),
        "sum": collectives.all_reduce(torch.tensor([rank + 1.0, 10.0 * rank])).tolist(),
        "max": collectives.all_reduce_values([float(rank), -float(rank)], "max"),
        "min": collectives.all_reduce(torch.tensor([rank + 1], dtype=torch.int64), "min").tolist(),
        "gathered": collectives.all_gather_tensor(torch.tensor([[rank, rank + 0.5]])).tolist(),
        "scalar": collectives.all_gather_tensor(torch.tensor(rank * 3)).tolist(),
        "objects": collectives.all_gather_object({"rank": rank}),
        "gather": collectives.gather_object(f"r{rank}", dst=1),
        "broadcast": collectives.broadcast_object(f"from {rank}", src=1),
    }
    features = torch.full((2, 3), float(rank + 1), requires_grad=True)
    everyone = collectives.all_gather_with_grad(features)
    (everyone[2 * rank:2 * rank + 2].sum() * 2 + everyone.sum()).backward()
    seen["differentiable"] = (list(everyone.shape), features.grad.tolist())
    in_place = torch.tensor([1.0 + rank])
    collectives.all_reduce_(in_place)
    seen["in_place"] = in_place.tolist()
    try:
        dist.all_gather([torch.zeros(1), torch.zeros(1)], torch.ones(1))
        seen["direct"] = "passed"
    except RuntimeError as err:
        seen["direct"] = f"{type(err).__name__}: {err}"
    collectives.barrier()
    results[rank] = seen
    dist.destroy_process_group()


@pytest.mark.parametrize("backend", ["avmae_checked", "gloo"])
def test_collectives_on_two_ranks_and_a_direct_call_refused_by_the_checking_backend(backend):
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_two_ranks, args=(free_port(), backend, results), nprocs=2, join=True)
        results = dict(results)
    for rank in (0, 1):
        seen = results[rank]
        assert seen["backend"] == backend
        assert seen["sum"] == [3.0, 10.0] and seen["max"] == [1.0, 0.0] and seen["min"] == [1]
        assert seen["gathered"] == [[0.0, 0.5], [1.0, 1.5]] and seen["scalar"] == [0, 3]
        assert seen["objects"] == [{"rank": 0}, {"rank": 1}]
        assert seen["gather"] == (["r0", "r1"] if rank == 1 else None)
        assert seen["broadcast"] == "from 1"
        assert seen["in_place"] == [3.0]
        # d/d(own rows) of (2 * own rows + all rows), summed over both ranks' losses: 2 + 2 = 4 per element
        assert seen["differentiable"] == ([4, 3], [[4.0] * 3] * 2)
        if backend == "avmae_checked":
            assert seen["direct"].startswith("CollectiveRefused: avmae_checked: all_gather called from "), seen
            assert "test_collectives.py" in seen["direct"] and "not through avmae.collectives" in seen["direct"]
        else:
            assert seen["direct"] == "passed"


def test_the_checking_backend_refuses_a_tensor_off_its_device():
    from avmae.testing_backend import CollectiveRefused, _check

    meta = torch.empty(2, device="meta")
    with pytest.raises(CollectiveRefused, match="all_reduce from .* got a tensor on meta; the group's device is cpu"):
        _check_from_collectives(_check, "all_reduce", [meta])
    _check_from_collectives(_check, "all_reduce", [torch.zeros(2)])  # on the device, from the one home: allowed
    with pytest.raises(CollectiveRefused, match="barrier called from .*test_collectives.py"):
        _check("barrier")


def _check_from_collectives(check, call, tensors):
    """Run ``check`` as if avmae/collectives.py called the collective: the frame's file is what the check reads."""
    code = compile("check(call, tensors)", str(ONE_HOME), "exec")
    exec(code, {"check": check, "call": call, "tensors": tensors})


@pytest.fixture(scope="module")
def export(shards, tmp_path_factory) -> Path:
    """A classifier export of the tiny model, as initialised (the weights are not under test)."""
    return initialised_export(tmp_path_factory.mktemp("export"), shards)


@pytest.mark.slow
def test_two_rank_evaluation_runs_under_the_checking_backend_and_equals_one_process(export, shards, tmp_path):
    flags = ["--ckpt", str(export), "--data", str(shards), "--split", "train", "--task", "vggsound", "--backend",
             "torch", "--device", "cpu", "--workers", "0", "--batch-size", "4", "--json"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AVMAE_DIST_BACKEND": "avmae_checked"}
    single = subprocess.run([sys.executable, "-m", "avmae.cli.eval", *flags, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "-m", "avmae.cli.eval", *flags, "--out", str(tmp_path / "two")]
    double = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]
    assert double.stderr.count("avmae_checked on cpu") == 2, double.stderr[-3000:]  # each rank's set-up line
    one, two = (json.loads((tmp_path / name / "report.json").read_text()) for name in ("one", "two"))
    assert two["world_size"] == 2
    assert two["metrics"] == one["metrics"]
    a, b = np.load(tmp_path / "one" / "predictions.npz"), np.load(tmp_path / "two" / "predictions.npz")
    assert a["keys"].tolist() == b["keys"].tolist() and len(a["keys"]) > 0
    assert np.allclose(a["scores"], b["scores"], atol=1e-5)


def train_checked(config: Path) -> dict:
    """avmae-train on 2 ranks under avmae_checked: its result line, after checking no collective was refused and
    that both ranks ran on the checking backend."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "-m", "avmae.cli.train", "--config", str(config)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AVMAE_DIST_BACKEND": "avmae_checked"}
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert "CollectiveRefused" not in result.stderr, result.stderr[-3000:]
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr.count("avmae_checked on cpu") == 2
    return json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])


@pytest.mark.slow
def test_two_rank_zero_pretraining_with_the_contrastive_term_runs_under_the_checking_backend(shards, tmp_path):
    # avmae's collectives (loss logging, the global-batch contrastive gather and its backward, stop agreement,
    # checkpoint agreement) are checked; DeepSpeed's ZeRO reductions pass as its own.
    summary = train_checked(run_config(tmp_path, shards, optim={"steps": 4, "lr": 2e-3, "warmup_steps": 2},
                                       checkpoint={"every": 4, "keep": 1}))
    assert summary["step"] == 4 and summary["finished"] is True


@pytest.mark.slow
def test_two_rank_fine_tuning_with_its_evaluations_runs_under_the_checking_backend(shards, tmp_path):
    # The in-training evaluation's gathers (scores, labels, keys, skip records) and the best-score agreement.
    summary = train_checked(run_config(tmp_path, shards, task="finetune", data={"eval_split": "val"},
                                       finetune={"eval_every": 2}, optim={"steps": 4, "lr": 2e-3, "warmup_steps": 1},
                                       checkpoint={"every": 2, "keep": 1}))
    assert summary["step"] == 4 and summary["finished"] is True
    assert summary["best"] is not None and summary["best"]["step"] in (2, 4) and "top1" in summary["best"]["metrics"]
