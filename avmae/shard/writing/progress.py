"""The live progress bar of a shard build: clips done, clips/s, ETA and failures (rich)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class BuildProgress:
    """``advance(ok)`` once per input; a no-op when disabled (``--no-progress``, ``--json``)."""

    def __init__(self, total: int, enabled: bool = True):
        self.failures = 0
        self.enabled = enabled and total > 0
        self._progress = Progress(
            TextColumn("[bold]shards[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("clips"),
            TextColumn("{task.fields[rate]:.1f} clips/s"), TextColumn("[red]{task.fields[failures]} failed"),
            TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=Console(file=sys.stderr), disable=not self.enabled,
        )
        self._task = self._progress.add_task("build", total=total, rate=0.0, failures=0)

    def __enter__(self) -> "BuildProgress":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def advance(self, ok: bool) -> None:
        self.failures += not ok
        task = self._progress.tasks[0]
        elapsed = task.elapsed or 0.0
        rate = (task.completed + 1) / elapsed if elapsed > 0 else 0.0
        self._progress.update(self._task, advance=1, rate=rate, failures=self.failures)
