"""Every sample a rank draws is either used or skipped, and the skipped ones are named in ``metrics.jsonl``.

The loaders put ``batch["skipped"]`` (a list of ``{"shard", "key", "member", "reason", "detail"}``) on a batch for
the samples their reader dropped since its previous batch. One all_reduce per micro-batch sums, over ranks, the
samples used and skipped, together with the count of ranks whose loss is not finite (avmae/train/divergence.py), so
the totals are the same on every rank and can go into the checkpoint; at a logging step the records themselves
are gathered to rank 0. In ``metrics.jsonl``: samples_used + samples_skipped = samples_drawn, run totals.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


class SampleLedger:
    def __init__(self, rank: int, totals: dict[str, int] | None = None):
        self.rank = rank
        self.totals = {"samples_drawn": 0, "samples_used": 0, "samples_skipped": 0, **(totals or {})}
        self.pending: list[dict[str, Any]] = []  # this rank's skipped samples since the last logging step
        self.skipped_since_log = 0  # over all ranks

    def agree(self, batch: dict[str, Any], step: int, loss_finite: bool) -> bool:
        """Count this micro-batch on every rank; True when every rank's loss is finite. A collective."""
        skipped = list(batch.get("skipped", []))
        self.pending += [{**record, "rank": self.rank, "step": step} for record in skipped]
        used = len(batch["key"]) if "key" in batch else int(batch["audio"].shape[0])
        counts = torch.tensor([0 if loss_finite else 1, used, len(skipped)], dtype=torch.float64)
        if dist.is_initialized() and dist.get_world_size() > 1:
            if dist.get_backend() == "nccl":
                counts = counts.cuda()
            dist.all_reduce(counts)
        nonfinite, used, skipped_count = (int(v) for v in counts.tolist())
        self.totals["samples_used"] += used
        self.totals["samples_skipped"] += skipped_count
        self.totals["samples_drawn"] += used + skipped_count
        self.skipped_since_log += skipped_count
        return nonfinite == 0

    def log_values(self) -> dict[str, Any]:
        """The running totals and, when any rank skipped samples since the last call, their records (on rank 0).
        A collective whenever samples were skipped: call it on every rank at the same steps."""
        values: dict[str, Any] = dict(self.totals)
        if self.skipped_since_log:
            gathered: list[Any] = [None] * dist.get_world_size() if self.rank == 0 else None
            if dist.is_initialized() and dist.get_world_size() > 1:
                dist.gather_object(self.pending, gathered, dst=0)  # our own ranks' records, not data from a file
            else:
                gathered = [self.pending]
            if self.rank == 0:
                values["skipped"] = [record for records in gathered for record in records]
        self.pending, self.skipped_since_log = [], 0
        return values
