"""The DeepSpeed ZeRO engine around the model: its config (``zero_stage``, ``zero_bucket_elements``, ``optim.*``,
``data.batch_size``, ``grad_accum``), the torch optimizer it shards, the compiled blocks, and the learning rate
set on its parameter groups at each step."""

from __future__ import annotations

import sys
from types import SimpleNamespace
from typing import Any

import torch

from avmae.models.vit import Block
from avmae.recipe.config import OptimConfig, RunConfig
from avmae.train.optim import learning_rate, parameter_groups


def deepspeed_config(config: RunConfig, bf16: bool) -> dict[str, Any]:
    bucket = config.zero_bucket_elements
    return {
        "train_micro_batch_size_per_gpu": config.data.batch_size,
        "gradient_accumulation_steps": config.grad_accum,
        "gradient_clipping": config.optim.grad_clip,
        # A non-finite gradient norm discards the step in bf16 too (avmae/train/divergence.py relies on it).
        "bf16": {"enabled": bf16, "check_grad_overflow": True},
        "zero_optimization": {"stage": config.zero_stage, "overlap_comm": bf16, "contiguous_gradients": True,
                              "reduce_bucket_size": bucket, "allgather_bucket_size": bucket,
                              "stage3_max_live_parameters": 2 * bucket, "stage3_prefetch_bucket_size": bucket // 10},
        # ZeRO shards any torch optimizer's state; DeepSpeed only asks to be told when it is not an Adam.
        "zero_allow_untested_optimizer": config.optim.optimizer != "adamw",
        "steps_per_print": 10**9,  # our own logging says what happens
        "wall_clock_breakdown": False,
    }


def deepspeed_args(device: torch.device) -> SimpleNamespace | None:
    """The device DeepSpeed's engine puts itself on. Without ``device_rank`` it takes LOCAL_RANK
    (deepspeed/runtime/engine.py ``_set_distributed_vars``), an index that does not exist when each task sees only
    its own GPU (srun --gpus-per-task=1: every rank's GPU is cuda:0); avmae/distributed.py has chosen the device."""
    return SimpleNamespace(device_rank=device.index) if device.type == "cuda" else None


def compile_blocks(model: torch.nn.Module) -> int:
    """torch.compile (inductor) every transformer block of ``model`` in place (``Module.compile``: the parameter
    names, and so checkpoints and exports, stay those of the eager model); how many. The blocks are where the
    FLOPs are, and each compiles once per input shape and modality."""
    blocks = [module for module in model.modules() if isinstance(module, Block)]
    for block in blocks:
        block.compile()
    return len(blocks)


class LearningRate:
    """Sets the schedule's learning rate for a step on every parameter group, times the group's own scale (layer-wise
    decay, the head's multiplier)."""

    def __init__(self, optimizer: torch.optim.Optimizer, scales: list[float], config: OptimConfig):
        self.optimizer, self.scales, self.config = optimizer, scales, config

    def set_for(self, step: int) -> float:
        lr = learning_rate(step, self.config)
        for group, scale in zip(self.optimizer.param_groups, self.scales):
            group["lr"] = lr * scale
        return lr


def build_engine(model: torch.nn.Module, config: RunConfig, device: torch.device, bf16: bool, say: bool):
    """The DeepSpeed engine over ``model`` (its blocks compiled first when ``config.compile``) and the learning rate
    setter of its optimizer; ``say``: this rank reports the compilation."""
    import deepspeed

    compiled = compile_blocks(model) if config.compile else 0
    groups, scales = parameter_groups(model, config.model, config.optim)
    optim = config.optim
    if optim.optimizer == "sgd":
        optimizer = torch.optim.SGD(groups, lr=optim.lr, momentum=optim.momentum)
    else:  # fused: one kernel over all parameters (OptimConfig.fused says when)
        optimizer = torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas),
                                      fused=optim.fused_on(device.type) or None)
    engine, _, _, _ = deepspeed.initialize(args=deepspeed_args(device), model=model, optimizer=optimizer,
                                           config=deepspeed_config(config, bf16))
    if compiled and say:  # said, so a run's log shows what ran
        print(f"avmae-train: torch.compile (inductor) {compiled} transformer blocks; the first steps compile them",
              file=sys.stderr, flush=True)
    return engine, LearningRate(engine.optimizer, scales, optim)
