"""Run configs written before a key moved (an export's metadata, a run folder's config.yaml), read in today's keys.

Exports and run folders outlive the code that wrote them: ``avmae-eval`` reads a months-old export, a resume reads
the config.yaml its checkpoints were made under. Each move of a key is one entry here, so that what was saved still
describes the same run."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

from avmae.config import from_dict
from avmae.data.config import AugmentConfig
from avmae.recipe.config import RunConfig

# Run configs saved by earlier releases hold the augmentation settings in ``data``; today's code reads them from
# the ``augment`` section, so a saved config is moved there before it is compared or resumed.
AUGMENT_KEYS = tuple(f.name for f in dataclasses.fields(AugmentConfig))


def in_todays_keys(saved: dict[str, Any]) -> dict[str, Any]:
    """A copy of a saved run config (a plain mapping) with every moved key at its place today."""
    saved = copy.deepcopy(saved)
    data = saved.get("data")
    if isinstance(data, dict):
        moved = {key: data.pop(key) for key in AUGMENT_KEYS if key in data}
        if moved:
            saved["augment"] = {**moved, **(saved.get("augment") or {})}
    # Earlier releases named the starting weights with one of two keys: model_init (today init) and finetune.init,
    # an avmae export or run folder (today init.kind avmae). Those releases refused both at once, so at most one
    # is set and the move below never has to choose.
    if "model_init" in saved:
        saved["init"] = saved.pop("model_init")
    finetune = saved.get("finetune")
    if isinstance(finetune, dict) and "init" in finetune:
        path = finetune.pop("init")
        if path:
            saved["init"] = {**(saved.get("init") or {}), "kind": "avmae", "path": path}
    return saved


def read_saved_run_config(saved: dict[str, Any]) -> RunConfig:
    """A saved run config as a ``RunConfig``; unknown keys are still errors (avmae.config.from_dict)."""
    return from_dict(RunConfig, in_todays_keys(saved))
