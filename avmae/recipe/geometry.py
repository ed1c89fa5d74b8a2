"""The clip geometry of a run, checked against a shard folder in one place.

The model config is the home of the geometry (frames and crop the encoder's grid is built for, log-mel length, mel
bins and the log-mel's front end). The shards must have been built for it: the log-mel length, mel bins and front
end exactly, and at least as many
stored frames as the model takes (the loader picks an evenly spread subset). Training, fine-tuning's periodic
evaluation, ``avmae-eval`` and the reconstruction figures all open their shards through ``load_run_spec``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from avmae.data.spec import DataMismatchError, DataSpec, load_spec
from avmae.recipe.config import RunConfig
from avmae.storage import set_storage_limits


def shard_expectations(config: RunConfig) -> dict[str, Any]:
    """The shard feature parameters the model's input sizes rely on, which must be equal."""
    return {"target_frames": config.model.audio.frames, "num_mel_bins": config.model.audio.mel_bins,
            "audio_frontend": config.model.audio.frontend}


def load_run_spec(config: RunConfig, split: str, shards: str | Path | None = None) -> DataSpec:
    """The shards of ``split`` (``shards`` or ``data.shards``), refused with a message naming the folder, the
    parameter and both values when they were built for another geometry than ``config``'s."""
    root = shards if shards is not None else config.data.shards
    expect = shard_expectations(config)
    # The run's limits on remote reads, from its first one (the manifest) on; forked readers inherit them.
    set_storage_limits(config.data.storage_timeout_s, config.data.storage_retries)
    spec = load_spec(root, split, expect)
    wanted = config.data.num_frames if config.data.num_frames is not None else config.model.video.frames
    stored = spec.features["num_frames"]
    if wanted > stored and not config.data.frame_stride:  # a window wraps, as Scenic's (data/frame_windows.py)
        raise DataMismatchError(f"{root}: shards hold {stored} frames per sample but data.num_frames is {wanted}; "
                                "rebuild the shards with more frames or lower data.num_frames")
    return spec
