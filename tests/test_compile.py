"""The step's fast paths give the losses of the plain one: ``compile: true`` (torch.compile of the transformer
blocks, inductor) and ``optim.fused: true`` (torch's fused AdamW, under DeepSpeed ZeRO-2 on 2 ranks), each against
the same run without it, on the tiny model for 3 steps.

The bounds are relative, per logged loss part, and set just above what was measured here (torch 2.11, CPU): the
fast paths compute the same float32 arithmetic in another order (inductor fuses the blocks' ops and reorders their
reductions; the fused AdamW updates in one kernel), which moves a result by a few units in the last place (float32's
is 1.2e-7 relative) and three steps carry that along. Measured: compile 4.0e-7 (loss_contrastive, step 2), fused
2.1e-7 (loss_contrastive, step 3)."""

from __future__ import annotations

import re

import pytest
import torch

from tests.faults.test_training_faults import result_of, train
from tests.helpers import metrics, run_config

COMPILE_BOUND = 1e-6
FUSED_BOUND = 5e-7


def losses(run) -> dict[tuple[int, str], float]:
    return {(m["step"], k): v for m in metrics(run) for k, v in m.items() if k.startswith("loss")}


def largest_relative_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and len(a) == 3 * 4  # 3 steps of loss, loss_audio, loss_video, loss_contrastive
    return max(abs(a[k] - b[k]) / abs(a[k]) for k in a)


def three_steps(tmp_path, shards, name: str, *overrides: str, processes: int = 0):
    folder = tmp_path / name
    folder.mkdir()
    config = run_config(folder, shards, optim={"steps": 3, "lr": 1e-3, "warmup_steps": 1},
                        checkpoint={"every": 100, "keep": 1, "export": False},
                        log={"every": 1, "progress": False, "tensorboard": False})
    done = train(config, *overrides, processes=processes, timeout=1200)
    assert result_of(done)["finished"]
    return folder / "run", done.stderr


@pytest.mark.slow
def test_compiled_blocks_give_the_eager_losses(shards, tmp_path):
    eager, _ = three_steps(tmp_path, shards, "eager")
    compiled, stderr = three_steps(tmp_path, shards, "compiled", "compile=true")
    said = re.search(r"torch.compile \(inductor\) (\d+) transformer blocks", stderr)
    # the tiny model: 2 audio + 2 video blocks before the joint one (mid fusion, depth 3), and 1 decoder block
    assert said and int(said.group(1)) == 6, stderr[-3000:]
    difference = largest_relative_difference(losses(eager), losses(compiled))
    print(f"compile: largest relative loss difference {difference:.2e}")
    assert difference <= COMPILE_BOUND


@pytest.mark.slow
def test_fused_adamw_under_zero2_on_two_ranks_gives_the_foreach_losses(shards, tmp_path):
    plain, _ = three_steps(tmp_path, shards, "plain", processes=2)
    fused, _ = three_steps(tmp_path, shards, "fused", "optim.fused=true", processes=2)
    state = torch.load(fused / "checkpoints" / "step00000003" / "zero_pp_rank_0_mp_rank_00_optim_states.pt",
                       map_location="cpu", weights_only=False)  # our own checkpoint, just written
    groups = state["optimizer_state_dict"]["base_optimizer_state"]["param_groups"]
    assert groups and all(group["fused"] is True for group in groups)  # ZeRO-2 stepped torch's fused AdamW
    difference = largest_relative_difference(losses(plain), losses(fused))
    print(f"fused AdamW: largest relative loss difference {difference:.2e}")
    assert difference <= FUSED_BOUND
