"""Divergence is detected, not exported (issue 12, item 3).

Every rank tells the others whether its loss is finite before the backward pass (one all_reduce per micro-batch,
which also carries the sample counts of ``avmae.train.samples``). When any rank's loss is not finite, every rank
turns its loss into NaN, so every gradient is NaN and DeepSpeed's own check discards the update on all ranks at
once: ZeRO-1/2/3 skip ``optimizer.step`` when the global gradient norm is not finite (fp32 always, bf16 with
``bf16.check_grad_overflow``, which the trainer turns on; deepspeed/runtime/zero/stage_1_and_2.py ``step``). A step
with a finite loss but a non-finite gradient norm is skipped by the same check. ``engine.was_step_applied()`` says
which happened; a poisoned step that DeepSpeed applied anyway is an error, not a silent update.

Skipped steps are counted in a row and in total; past ``guard.nonfinite_in_row`` or ``guard.nonfinite_total`` the run
stops with one message naming the step, the last finite losses and the newest good checkpoint.
"""

from __future__ import annotations

import math
from collections import deque

import torch

from avmae.recipe.config import GuardConfig
from avmae.train.stops import JobStopped


class TrainingDiverged(JobStopped):
    pass


def poison(loss: torch.Tensor) -> torch.Tensor:
    """A loss whose every gradient is NaN: the optimizer step that follows is discarded by DeepSpeed."""
    return loss * float("nan")


class NonFiniteGuard:
    def __init__(self, config: GuardConfig, start_step: int = 0, skipped_total: int = 0):
        self.config = config
        self.last_applied = start_step  # the newest step whose update was applied (a resume starts from one)
        self.in_row = 0
        self.total = skipped_total  # carried over a resume in the checkpoint's client state
        self.finite_losses: deque[tuple[int, float]] = deque(maxlen=5)

    def record(self, step: int, loss: float, applied: bool, loss_was_finite: bool) -> bool:
        """After the optimizer step of ``step``: True when it was skipped. ``applied``: DeepSpeed updated the
        weights; ``loss_was_finite``: every rank's loss was finite (agreed)."""
        if applied and not loss_was_finite:
            raise RuntimeError(f"step {step}: DeepSpeed applied an update from a non-finite loss; the guard relies "
                               "on its gradient-overflow check (see avmae/train/divergence.py)")
        if applied:
            self.in_row, self.last_applied = 0, step
            if math.isfinite(loss):
                self.finite_losses.append((step, loss))
            return False
        self.in_row += 1
        self.total += 1
        return True

    def over_budget(self) -> str:
        """Which budget the skipped steps have passed ("" when none)."""
        if self.in_row >= self.config.nonfinite_in_row:
            return f"{self.in_row} in a row (guard.nonfinite_in_row {self.config.nonfinite_in_row})"
        if self.total >= self.config.nonfinite_total:
            return f"{self.total} in this run (guard.nonfinite_total {self.config.nonfinite_total})"
        return ""

    def stop(self, step: int, budget: str, newest_good: str) -> TrainingDiverged:
        losses = ", ".join(f"step {s} {v:.4g}" for s, v in self.finite_losses) or "none"
        return TrainingDiverged(
            f"training diverged: step {step} had a non-finite loss or gradient norm, skipped steps: {budget}; "
            f"last finite losses: {losses}; newest good checkpoint: {newest_good or 'none'}; "
            "nothing was exported")
