"""Every sample a rank draws is either used or skipped, and the skipped ones are named in ``metrics.jsonl``.

The loaders put ``batch["skipped"]`` (a list of ``{"shard", "key", "member", "reason", "detail"}``) on a batch for
the samples their reader dropped since its previous batch. Each rank counts its samples used and skipped on the
host (they are known from the batch, no device value is read) and the counts are summed over the ranks only at log
and checkpoint steps (``sync``, one all_reduce), so the totals a checkpoint holds are exact and the same on every
rank, and a micro-step makes no collective for them. At a logging step the records themselves are gathered to
rank 0. In ``metrics.jsonl``: samples_used + samples_skipped = samples_drawn, run totals.
"""

from __future__ import annotations

from typing import Any

from avmae.collectives import all_reduce_values, gather_object


class SampleLedger:
    def __init__(self, rank: int, totals: dict[str, int] | None = None):
        self.rank = rank
        self.totals = {"samples_drawn": 0, "samples_used": 0, "samples_skipped": 0, **(totals or {})}
        self.pending: list[dict[str, Any]] = []  # this rank's skipped samples since the last logging step
        self.unsynced_used = self.unsynced_skipped = 0  # this rank's counts since the last sync
        self.skipped_since_log = 0  # over all ranks

    def count(self, batch: dict[str, Any], step: int) -> None:
        """Count this micro-batch on this rank (no collective, nothing read from the device)."""
        skipped = list(batch.get("skipped", []))
        self.pending += [{**record, "rank": self.rank, "step": step} for record in skipped]
        self.unsynced_used += len(batch["key"]) if "key" in batch else batch["audio"].shape[0]
        self.unsynced_skipped += len(skipped)

    def sync(self) -> dict[str, int]:
        """Add every rank's counts since the last sync to the run totals, which it returns (the same on every
        rank). A collective: call it on every rank at the same steps."""
        used, skipped = (int(v) for v in all_reduce_values([float(self.unsynced_used),
                                                            float(self.unsynced_skipped)], op="sum"))
        self.unsynced_used = self.unsynced_skipped = 0
        self.totals["samples_used"] += used
        self.totals["samples_skipped"] += skipped
        self.totals["samples_drawn"] += used + skipped
        self.skipped_since_log += skipped
        return dict(self.totals)

    def log_values(self) -> dict[str, Any]:
        """The running totals and, when any rank skipped samples since the last call, their records (on rank 0).
        A collective: call it on every rank at the same steps."""
        values: dict[str, Any] = self.sync()
        if self.skipped_since_log:
            gathered = gather_object(self.pending, dst=0)  # our own ranks' records, not data from a file
            if self.rank == 0:
                values["skipped"] = [record for records in gathered for record in records]
        self.pending, self.skipped_since_log = [], 0
        return values
