"""``avmae-bench plan`` from its parsed arguments: load the recipe, get the three measurements, print the plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from avmae.bench.activations import measure_activations
from avmae.bench.plan import PlanInputs, capacity_plan
from avmae.bench.plan_table import plan_table
from avmae.bench.shard_size import shard_bytes_per_sample
from avmae.config import ConfigError, load, to_dict
from avmae.recipe.config import RunConfig


def load_recipe(path: Path, overrides: list[str]) -> RunConfig:
    try:
        # The plan needs no shards: a placeholder keeps validation's "data.shards is not set" out of the way.
        return load(RunConfig, path, ["data.shards=unused-by-plan", *overrides]).validate()
    except ConfigError as err:
        raise ValueError(f"{path}: {err}") from None


def activations_for(config: RunConfig, cache: Path | None) -> dict[str, Any]:
    """Measured activations of ``config.model``, kept in ``cache`` (JSON) and reused while the model is the same."""
    model = to_dict(config.model)
    model.pop("activation_checkpointing", None)  # both settings are measured
    if cache is not None and cache.exists():
        stored = json.loads(cache.read_text())
        if stored.get("model") == model:
            return stored
        raise ValueError(f"{cache} holds the activation measurement of another model; remove it or pick a new path")
    measured = {**measure_activations(config.model), "model": model}
    if cache is not None:
        cache.write_text(json.dumps(measured, indent=1))
    return measured


def run_plan(args) -> dict[str, Any]:
    config = load_recipe(args.config, args.set)
    bytes_per_sample, source = args.bytes_per_sample, PlanInputs.bytes_source
    if args.shards is not None:
        measured = shard_bytes_per_sample(args.shards)
        bytes_per_sample, source = measured["bytes_per_sample"], f"measured: {args.shards} ({measured['samples']} samples)"
    elif args.bytes_per_sample != PlanInputs.bytes_per_sample:
        source = "given (--bytes-per-sample)"
    inputs = PlanInputs(gpus=args.gpus, gpu=args.gpu, zero_stage=args.zero or config.zero_stage,
                        batch_per_gpu=args.batch_per_gpu or config.data.batch_size, mfu=args.mfu,
                        gpus_per_node=args.gpus_per_node, clips=args.clips, bytes_per_sample=bytes_per_sample,
                        bytes_source=source, build_clips_per_core_s=args.build_clips_per_core_s,
                        global_batch=args.global_batch, mfu_batch=args.mfu_batch)
    plan = capacity_plan(config, inputs, activations_for(config, args.activations))
    if args.json:
        print(json.dumps(plan, indent=1))
    else:
        Console(width=160).print(plan_table(plan, f"avmae-bench plan: {args.config}"))
    return plan
