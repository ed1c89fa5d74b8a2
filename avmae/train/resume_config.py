"""A resumed run trains the model its checkpoint was made for: the run config may change only in what a resume
may change. Anything else (model, data, optimiser, seed, precision...) is refused, naming the changed keys, since
the checkpoint's weights, optimizer state and loader position were made under the saved config.

What a resume may change, and why it is safe:
- ``optim.steps``: train further (or stop sooner); the schedule is a function of the step and the new total.
- ``stop_after``: how long this process runs.
- ``log.*``, ``checkpoint.every``, ``checkpoint.keep``, ``checkpoint.export``, ``finetune.eval_every``: what is
  written and when, not what is learned.
- ``guard.*``: how many faults are tolerated before the job ends.
- ``peak_tflops``: the MFU estimate.
- ``workdir``: where the run folder is (a moved run folder resumes).
- ``data.storage_timeout_s``, ``data.storage_retries``: how patiently shards are read.
- ``zero_bucket_elements``, ``compile``, ``optim.fused``: how the same update is computed (bucket sizes, compiled
  blocks, the fused AdamW kernel), which moves results by rounding only; a run started with 5e8 buckets resumes.

``data.workers`` is not among them, although it looks like a speed setting: it is the number of readers per rank,
and the shards are dealt to the rank's readers and each reader's shuffle is seeded by its number (data/schedule.py),
so another count would repeat or skip part of the epoch, and the readers' recorded positions would not apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from avmae.config import ConfigError, dotted_values
from avmae.recipe.config import RunConfig
from avmae.recipe.saved import read_saved_run_config

RESUMABLE = ("optim.steps", "stop_after", "log.", "checkpoint.every", "checkpoint.keep", "checkpoint.export",
             "finetune.eval_every", "guard.", "peak_tflops", "workdir", "data.storage_timeout_s",
             "data.storage_retries", "zero_bucket_elements", "compile", "optim.fused")


def changed_keys(saved: RunConfig, current: RunConfig) -> list[str]:
    """Dotted keys whose values differ and that a resume may not change."""
    return _changes(dotted_values(saved), dotted_values(current))


def _changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    return sorted(key for key in old.keys() | new.keys() if old.get(key) != new.get(key) and not may_change(key))


def may_change(key: str) -> bool:
    return any(key.startswith(r) if r.endswith(".") else key == r for r in RESUMABLE)


def check_resumable(saved_path: Path, current: RunConfig) -> None:
    """Raise ValueError naming the keys that differ from the run's saved config.yaml (nothing when it is absent)."""
    if not saved_path.exists():
        return
    try:
        saved = read_saved_run_config(yaml.safe_load(saved_path.read_text()) or {})
    except (ConfigError, yaml.YAMLError) as err:
        raise ValueError(f"{saved_path} cannot be read as a run config ({err}); move the run folder aside or fix it")
    old, new = dotted_values(saved), dotted_values(current)
    changed = _changes(old, new)
    if changed:
        detail = ", ".join(f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
        raise ValueError(f"the run in {saved_path.parent} has checkpoints made with another config; a resume may "
                         f"not change {detail} (start a new workdir, or see avmae/train/resume_config.py)")
