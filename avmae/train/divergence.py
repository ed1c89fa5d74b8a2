"""Divergence is detected, not exported.

Every rank's "is my loss finite" flag is reduced with MIN over the ranks before the backward pass, as a device tensor
(no host read), and each rank multiplies its loss by 1 or by NaN on that flag: when any rank's loss is not finite,
every gradient on every rank is NaN and DeepSpeed's own check discards the update on all ranks at once: ZeRO-1/2/3
skip ``optimizer.step`` when the global gradient norm is not finite (fp32 always, bf16 with
``bf16.check_grad_overflow``, which the trainer turns on; deepspeed/runtime/zero/stage_1_and_2.py ``step``). A step
with a finite loss but a non-finite gradient norm is skipped by the same check. ``engine.was_step_applied()`` (a host
bool DeepSpeed already synchronised for) says which happened.

The flag is read on the host only where the step is a boundary anyway: a skipped step (it is logged, and the guard
needs its cause), and at log and checkpoint steps, where the flags of the applied steps since the last check are
read at once to confirm that DeepSpeed applied no update from a non-finite loss (that would be an error, not a
silent update; it is caught before the next checkpoint is written).

Skipped steps are counted in a row and in total; past ``guard.nonfinite_in_row`` or ``guard.nonfinite_total`` the run
stops with one message naming the step, the last finite losses and the newest good checkpoint.
"""

from __future__ import annotations

import math
from collections import deque

import torch

from avmae.collectives import all_reduce
from avmae.recipe.config import GuardConfig
from avmae.train.stops import Stop


def poison(loss: torch.Tensor) -> torch.Tensor:
    """A loss whose every gradient is NaN: the optimizer step that follows is discarded by DeepSpeed."""
    return loss * float("nan")


def poison_unless_every_rank_finite(loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``loss`` times 1 when every rank's loss is finite, times NaN otherwise, and that agreement as a 0-d device
    tensor (1.0: every rank finite). A collective; nothing is read on the host. The factor is a constant of the
    graph, not a ``torch.where`` over two loss branches: the backward of the unused ``loss * nan`` branch would be
    0 * NaN = NaN and poison every step."""
    finite = all_reduce(torch.isfinite(loss.detach()).to(torch.float32).reshape(()), op="min")
    factor = torch.where(finite > 0, 1.0, float("nan")).to(device=loss.device, dtype=loss.dtype)
    return loss * factor, finite


class NonFiniteGuard:
    def __init__(self, config: GuardConfig, start_step: int = 0, skipped_total: int = 0):
        self.config = config
        self.last_applied = start_step  # the newest step whose update was applied (a resume starts from one)
        self.in_row = 0
        self.total = skipped_total  # carried over a resume in the checkpoint's client state
        # (step, loss) of the newest applied steps; the loss stays a device tensor until a stop message prints it
        self.finite_losses: deque[tuple[int, torch.Tensor | float]] = deque(maxlen=5)
        self.unchecked: list[tuple[int, torch.Tensor]] = []  # applied steps whose finite flag was not read yet
        self.last_cause = ""

    def record(self, step: int, loss: torch.Tensor | float, applied: bool,
               every_loss_finite: torch.Tensor | bool) -> bool:
        """After the optimizer step of ``step``: True when it was skipped. ``applied``: DeepSpeed updated the
        weights; ``every_loss_finite``: every rank's loss was finite (agreed; a device tensor is read here only for
        a skipped step, and for an applied one by ``check``)."""
        if applied:
            self.in_row, self.last_applied = 0, step
            if isinstance(every_loss_finite, torch.Tensor):
                self.unchecked.append((step, every_loss_finite))
            elif not every_loss_finite:
                self._applied_nonfinite(step)
            self.finite_losses.append((step, loss))  # applied: every rank's loss was finite
            return False
        finite = bool(every_loss_finite)  # a skipped step is a boundary: it is logged with its cause
        self.last_cause = "non-finite gradient norm" if finite else "non-finite loss"
        self.in_row += 1
        self.total += 1
        return True

    def check(self) -> None:
        """At a log or checkpoint step: that no applied step since the last check had a non-finite loss (one read)."""
        if not self.unchecked:
            return
        steps, flags = zip(*self.unchecked)
        self.unchecked = []
        flags = torch.stack([flag.reshape(()) for flag in flags]).tolist()
        for step, flag in zip(steps, flags):
            if not flag:
                self._applied_nonfinite(step)

    @staticmethod
    def _applied_nonfinite(step: int) -> None:
        raise RuntimeError(f"step {step}: DeepSpeed applied an update from a non-finite loss; the guard relies "
                           "on its gradient-overflow check (see avmae/train/divergence.py)")

    def over_budget(self) -> str:
        """Which budget the skipped steps have passed ("" when none)."""
        if self.in_row >= self.config.nonfinite_in_row:
            return f"{self.in_row} in a row (guard.nonfinite_in_row {self.config.nonfinite_in_row})"
        if self.total >= self.config.nonfinite_total:
            return f"{self.total} in this run (guard.nonfinite_total {self.config.nonfinite_total})"
        return ""

    def stop(self, step: int, budget: str, newest_good: str) -> Stop:
        finite = [(s, float(v)) for s, v in self.finite_losses]
        losses = ", ".join(f"step {s} {v:.4g}" for s, v in finite if math.isfinite(v)) or "none"
        return Stop("diverged", step, (
            f"training diverged: step {step} had a non-finite loss or gradient norm, skipped steps: {budget}; "
            f"last finite losses: {losses}; newest good checkpoint: {newest_good or 'none'}; "
            "nothing was exported"))
