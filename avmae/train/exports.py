"""A finished run's exports (``checkpoint.export``, ``checkpoint.average_last``): consolidated fp32 weights of the final
step, and for fine-tuning of the best evaluated step and the mean of the last regular checkpoints, each with the run's
config as its exports hold it. Rank 0 writes them; a failure stops every rank with one line."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

from avmae import collectives
from avmae.config import dump
from avmae.data.spec import DataSpec
from avmae.export.format import ExportInfo, export_path, write_export
from avmae.recipe.config import RunConfig
from avmae.train.best import BestStep
from avmae.train.checkpoint import Checkpoints, all_ranks_ok
from avmae.train.stops import JobStopped, Stop


def exported_config(config: RunConfig, spec: DataSpec) -> RunConfig:
    """The run's config as its exports hold it, with the log-mel normalisation it trained with written in (the
    training build's statistics, where the config left them to the manifest): evaluated on another build (an
    eval-only test split), the model then sees its inputs normalised as in training, not by that build's own
    statistics."""
    data = config.data
    mean = data.audio_mean if data.audio_mean is not None else spec.logmel_mean
    std = data.audio_std if data.audio_std is not None else spec.logmel_std
    return dataclasses.replace(config, data=dataclasses.replace(data, audio_mean=mean, audio_std=std))


class Exports:
    def __init__(self, config: RunConfig, spec: DataSpec, heads: dict[str, int], checkpoints: Checkpoints,
                 is_main: bool):
        """``heads``: fine-tuning's heads ({} for pretraining)."""
        self.config, self.spec, self.heads, self.checkpoints, self.is_main = config, spec, heads, checkpoints, is_main
        self.workdir = Path(config.workdir)

    def write(self, step: int, best: BestStep) -> None:
        """Every rank calls this after the last step (``step``); ``best``: the best evaluated step (none: no best
        export)."""
        if not self.config.checkpoint.export:
            return
        collectives.barrier()
        error: Exception | None = None
        if self.is_main:
            try:
                self._write_all(best)
            except (OSError, RuntimeError) as err:  # a full disk: safetensors raises either
                error = err
        # Not a barrier: rank 0's failure must reach every rank, or the others wait in the barrier for the
        # collective timeout while rank 0 leaves.
        if not all_ranks_ok(error is None):
            reason = f": {' '.join(str(error).split())}" if error else " on rank 0"
            raise JobStopped(Stop("export", step, (
                f"the export to {export_path(self.workdir).parent} could not be written{reason}; the run's "
                "checkpoints are complete: the same command again writes it")))

    def _write_all(self, best: BestStep) -> None:
        complete = self.checkpoints.complete()
        config = exported_config(self.config, self.spec)
        _, last = complete[-1]
        self._export(config, "model", self.checkpoints.fp32_state_dict(last), {"tag": last})
        best_tag = best.checkpoint_tag()
        if best_tag is not None and any(tag == best_tag for _, tag in complete):
            self._export(config, "best", self.checkpoints.fp32_state_dict(best_tag), {"best": json.dumps(best.value)})
        average = self.config.checkpoint.average_last
        if average > 1:  # of the checkpoint.every cycle's checkpoints (the epochs), not of a signal's
            averaged = self.checkpoints.regular()[-average:]
            states = [self.checkpoints.fp32_state_dict(tag) for _, tag in averaged]
            mean = {k: torch.stack([s[k] for s in states]).mean(0) for k in states[0]}
            self._export(config, "averaged", mean, {"averaged": ",".join(tag for _, tag in averaged)})
        dump(config, export_path(self.workdir).with_name("config.yaml"))

    def _export(self, config: RunConfig, weights: str, state: dict[str, torch.Tensor], extra: dict[str, str]) -> None:
        info = ExportInfo(task=self.config.task, config=config, label_mode=self.spec.label_mode,
                          label_names=list(self.spec.label_names), heads=self.heads, extra=extra)
        write_export(export_path(self.workdir, weights), state, info)

