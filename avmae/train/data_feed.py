"""A rank's training batches: the loader (``data``, ``augment``) positioned after the batches a resume already
consumed, each batch's reader position recorded for the next checkpoint (avmae/train/reader_positions.py) and its
samples counted, used or skipped (avmae/train/samples.py). A loader that gives up ends the job as one ``Stop``."""

from __future__ import annotations

from typing import Any

from avmae.data.config import AugmentConfig, DataConfig
from avmae.data.loader import Loader
from avmae.data.spec import DataSpec
from avmae.distributed import DistInfo
from avmae.train.reader_positions import ReaderPositions
from avmae.train.samples import SampleLedger
from avmae.train.stops import JobStopped, Stop


class TrainingData:
    def __init__(self, spec: DataSpec, data: DataConfig, augment: AugmentConfig, dist: DistInfo, start_batch: int,
                 resumed: dict[str, Any]):
        """``start_batch``: the micro-batches this rank consumed before; ``resumed``: the checkpoint's client state
        (``samples``: the run's counts; ``rank_data``: this rank's reader positions), empty for a fresh start."""
        self.rank = dist.rank
        self.ledger = SampleLedger(dist.rank, resumed.get("samples"))
        self.positions = ReaderPositions(max(1, data.workers), dist.world, resumed.get("rank_data"))
        self.batches = iter(Loader(spec, data, train=True, rank=dist.rank, world=dist.world, device=dist.device,
                                   start_batch=start_batch, augment=augment, reader_draws=self.positions.draws))

    def next_batch(self, step: int) -> dict[str, Any]:
        """The next micro-batch of ``step``, recorded."""
        batch = self._drawn(step)
        self.positions.saw(batch)
        self.ledger.count(batch, step)
        return batch

    def _drawn(self, step: int) -> dict[str, Any]:
        """The loader's next batch; a loader that gives up (``SkipBudgetExceeded`` when too many samples are bad, or
        any other failure) ends the job with its own line, and this rank leaves, so the others are not left waiting
        in a collective (torchrun / srun end them, or their collective fails)."""
        try:
            return next(self.batches)
        except Exception as err:  # noqa: BLE001 -- whatever it is, this rank cannot go on: one line, then leave
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            stop = Stop("loader", step, f"rank {self.rank}: the loader stopped at step {step}: {first}")
            raise JobStopped(stop) from err
