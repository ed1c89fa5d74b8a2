"""Which steps are boundaries, where the host may read device values and the ranks meet in collectives: a logging
step (every ``log.every``, the last, and every skipped step), a checkpoint step (every ``checkpoint.every``, the last,
a fine-tuning evaluation, and the step ``stop_after`` ends this process at), and a signal check (every
``guard.signal_check_every``, and at each of the others). Every rank computes the same answers from the same
step numbers and the same agreed facts (DeepSpeed's skipped step is decided over all ranks), so their collectives
line up."""

from __future__ import annotations

from dataclasses import dataclass

from avmae.recipe.config import RunConfig


@dataclass(frozen=True)
class Boundaries:
    config: RunConfig
    finetune_evaluates: bool  # a fine-tuning run with an evaluator: its evaluations come with checkpoints

    def log(self, step: int, skipped: bool) -> bool:
        return step % self.config.log.every == 0 or step == self.config.optim.steps or skipped

    def regular_checkpoint(self, step: int) -> bool:
        return step % self.config.checkpoint.every == 0 or step == self.config.optim.steps

    def evaluation(self, step: int) -> bool:
        """Fine-tuning evaluates every ``eval_every`` steps and at the end; each evaluation comes with a checkpoint,
        so the best weights can always be exported."""
        every = self.config.finetune.eval_every
        return self.finetune_evaluates and (bool(every) and step % every == 0 or step == self.config.optim.steps)

    def process_ends(self, ran: int) -> bool:
        return bool(self.config.stop_after) and ran >= self.config.stop_after

    def checkpoint(self, step: int, ran: int) -> bool:
        """A checkpoint is due whatever the signals say (a signal can add one)."""
        return self.regular_checkpoint(step) or self.evaluation(step) or self.process_ends(ran)

    def signal_check(self, step: int, ran: int, skipped: bool) -> bool:
        return (step % self.config.guard.signal_check_every == 0 or self.log(step, skipped)
                or self.checkpoint(step, ran))
