"""Where each of a rank's training readers stands in its draws, so that a resumed run starts exactly after them.

A reader's batch takes ``batch_size`` good draws plus every bad one it skipped on the way, so after B batches a
reader has made B x batch_size draws only while none was bad. Each training batch says which reader made it and
that reader's draws so far (``batch["drawn"]``, data/faults.py); the trainer keeps the newest count per reader of the
batches it consumed, and every checkpoint records them per rank (``data_rank<r>.json``, beside its random
generators). A resumed run hands them to the loader (``reader_draws``), whose readers skip exactly that many draws
unread. Without a record (a checkpoint written before them, or another number of ranks or readers, for which the
schedule differs anyway) the loader falls back to batches x batch size.
"""

from __future__ import annotations

from typing import Any


class ReaderPositions:
    def __init__(self, readers: int, world: int, recorded: dict[str, Any] | None = None):
        self.readers, self.world = readers, world
        self.draws: dict[int, int] = {}
        if recorded and recorded.get("readers") == readers and recorded.get("world") == world:
            self.draws = {int(reader): int(count) for reader, count in recorded["reader_draws"].items()}

    def saw(self, batch: dict[str, Any]) -> None:
        """A consumed training batch: its reader has now made ``batch["drawn"][1]`` draws."""
        if "drawn" in batch:
            reader, draws = batch["drawn"]
            self.draws[int(reader)] = int(draws)

    def state(self) -> dict[str, Any]:
        """What a checkpoint records for this rank (JSON: reader numbers as strings)."""
        return {"readers": self.readers, "world": self.world,
                "reader_draws": {str(reader): count for reader, count in sorted(self.draws.items())}}
