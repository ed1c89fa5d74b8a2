"""What a run reports: a rich live line on rank 0, ``metrics.jsonl`` and TensorBoard events."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from avmae.files import write_text_atomically
from avmae.recipe.config import LogConfig


def continue_metrics(path: Path, start_step: int) -> int:
    """Keep the records of ``path`` up to ``start_step`` (the step a run resumes from, 0 for a fresh start) and drop
    the rest, atomically: the steps a crashed run logged after its last checkpoint are run again, and logged again.
    Returns how many records were dropped (a line cut short by the crash counts as one)."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            keep = json.loads(line)["step"] <= start_step
        except (ValueError, KeyError, TypeError):
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    if dropped:
        write_text_atomically(path, "".join(line + "\n" for line in kept))
    return dropped


class RunLogger:
    """On a terminal, a live progress line; in a log file (SLURM's slurm-*.out, nohup), one plain line per
    logging step, since a live display there only shows at the end."""

    def __init__(self, workdir: Path, config: LogConfig, total_steps: int, start_step: int, enabled: bool):
        self.enabled = enabled
        self.total_steps = total_steps
        self.console = Console(file=sys.stderr)
        self.plain = config.progress and not self.console.is_terminal
        self.metrics_path = workdir / "metrics.jsonl"
        self.writer = None
        self.progress = None
        if not enabled:
            return
        self.dropped_records = continue_metrics(self.metrics_path, start_step)
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(workdir / "tensorboard"))
        if config.progress and self.console.is_terminal:
            self.progress = Progress(TextColumn("[bold]step"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[line]}"), TextColumn("ETA"), TimeRemainingColumn(),
                                     console=self.console)
            self.task = self.progress.add_task("train", total=total_steps, completed=start_step, line="")
            self.progress.start()

    def step(self, step: int, values: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "time": round(time.time(), 3), **values}
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(name, value, step)
        parts = [f"{k.removeprefix('loss_')} {v:.4f}" for k, v in values.items() if k.startswith("loss")]
        parts += [f"lr {values['lr']:.2e}"] if "lr" in values else []
        parts += [f"{values['samples_per_s']:.1f} samples/s"] if "samples_per_s" in values else []
        parts += [f"MFU {values['mfu']:.1%}"] if "mfu" in values else []
        parts += [f"{k} {v:.4f}" for k, v in values.items() if k.startswith("eval/") and isinstance(v, float)]
        if self.progress is not None:
            self.progress.update(self.task, completed=step, line="  ".join(parts))
        elif self.plain:
            self.console.print(f"step {step}/{self.total_steps}  " + "  ".join(parts), highlight=False)

    def message(self, text: str) -> None:
        if self.enabled:  # one line however long: a message is grepped for in a job's log
            self.console.print(text, soft_wrap=True, highlight=False)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
        if self.writer is not None:
            self.writer.close()
