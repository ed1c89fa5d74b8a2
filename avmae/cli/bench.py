"""``avmae-bench``: throughput numbers for docs/performance.md (shard build, loaders, model, capacity plan)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import typing
from pathlib import Path

from avmae.cli.flags import DefaultsInHelp, add_fields, from_args
from avmae.cli.shard import flag
from avmae.data.config import Backend
from avmae.shard.errors import ParameterError
from avmae.shard.params import BuildParams, FeatureParams


_SHARD_FEATURES, _SHARD_BUILD = ("num_frames", "short_side"), ("segment_seconds",)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avmae-bench", description="Measure avmae's throughput; prints JSON.")
    commands = parser.add_subparsers(dest="command", required=True)
    _shard_parser(commands)
    _loader_parser(commands)
    _model_parser(commands)
    _plan_parser(commands)
    _gpu_check_parser(commands)
    _feed_parser(commands)
    return parser


def _shard_parser(commands) -> None:
    shard = commands.add_parser(
        "shard", help="shard build clips/s and its ratio to ffmpeg's plain decode of the same clips",
        formatter_class=DefaultsInHelp,
        description="Builds shards from --src (or from --make-clips N generated 10 s 360p H.264/AAC clips) and "
                    "times `ffmpeg -i clip -f null -` on the same clips with the same process count: that decode "
                    "is the floor any frame extractor pays.")
    shard.add_argument("--src", type=Path, help="folder of clips")
    shard.add_argument("--make-clips", type=int, default=0, help="generate this many 10 s 640x360 clips instead")
    shard.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    add_fields(shard, FeatureParams, only=_SHARD_FEATURES)  # the build's own flags, defaults and help
    add_fields(shard, BuildParams, only=_SHARD_BUILD)


def _loader_parser(commands) -> None:
    loader = commands.add_parser(
        "loader", help="samples/s and frames/s of each loader backend, and of a CAV-MAE-style loader as baseline",
        formatter_class=DefaultsInHelp)
    loader.add_argument("--data", required=True, help="a shard folder (avmae-shard build), or a URL (s3://, gs://, "
                        "https://) or pipe: command (then without the CAV-MAE-style baseline, which needs local tars)")
    loader.add_argument("--remote", action="append", default=[],
                        help="the same shards at a URL or pipe: root, measured beside --data; repeat for several")
    loader.add_argument("--split", default="train")
    loader.add_argument("--backend", action="append", choices=[b for b in typing.get_args(Backend) if b != "auto"],
                        help="repeat for several (default: torch, and dali when it is installed; webdataset is "
                             "torch's older name)")
    loader.add_argument("--workers", type=int, action="append", help="repeat for several (default: 0 and all cores)")
    loader.add_argument("--batch-size", type=int, default=16)
    loader.add_argument("--batches", type=int, default=20, help="timed batches per run")
    loader.add_argument("--num-frames", type=int, default=16)
    loader.add_argument("--crop", type=int, default=224)
    loader.add_argument("--eval", action="store_true", help="eval transforms (centre crop) instead of training ones")
    loader.add_argument("--threads", type=int, default=1,
                        help="intra-op threads of the process that receives the batches, for every loader alike (a GPU "
                             "trainer's main process leaves the CPU to the loader workers; DataLoader workers use 1)")


def _model_parser(commands) -> None:
    model = commands.add_parser(
        "model", help="parameter counts, FLOPs per sample and the CPU time of one pretraining step",
        formatter_class=DefaultsInHelp)
    model.add_argument("--config", type=Path, required=True,
                       help="a model YAML or a run config with a 'model' section; a path or a shipped name "
                            "(model/tiny)")
    model.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. encoder.size=base")
    model.add_argument("--batch-size", type=int, default=2)
    model.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")


def _feed_parser(commands) -> None:
    feed = commands.add_parser(
        "feed", help="samples/s of DALI's training external source alone (no decode), serial and in worker "
                     "processes, and the CPU it takes from the training process",
        formatter_class=DefaultsInHelp)
    feed.add_argument("--data", type=Path, required=True, help="a shard folder (avmae-shard build)")
    feed.add_argument("--split", default="train")
    feed.add_argument("--workers", type=int, action="append",
                      help="data.workers, repeat for several; 0 = the serial source (default: 0, 1, 2)")
    feed.add_argument("--batch-size", type=int, default=8, help="per GPU (configs/pretrain_as2m.yaml)")
    feed.add_argument("--num-frames", type=int, default=16)
    feed.add_argument("--iterations", type=int, default=50, help="pipeline runs per timed window")
    feed.add_argument("--repeats", type=int, default=3, help="timed windows per run (median, min, max)")


def _gpu_check_parser(commands) -> None:
    gpu = commands.add_parser(
        "gpu-check", help="the GPU acceptance check of pipelines/gpu_check.sh (tiny sizes on a CPU)",
        description="Shards from ffmpeg-made clips, DALI decode rate, the ViT-L recipe's step time / MFU / memory, "
                    "NCCL bandwidth, a stopped-and-resumed training run and avmae-eval through both loaders; prints "
                    "a table and writes OUT/gpu_check.json; exit 1 when a check fails (avmae/bench/gpu_check.py).")
    gpu.add_argument("--out", type=Path, required=True, help="work folder (clips, shards, runs, logs, the JSON)")
    gpu.add_argument("--mode", choices=["auto", "cuda", "cpu"], default="auto", help="auto: cuda when available")


def _plan_parser(commands) -> None:
    from avmae.bench.plan import AUDIOSET_2M_CLIPS, BUILD_CLIPS_PER_CORE_S, GPUS, RECIPE_GPUS, PlanInputs

    plan = commands.add_parser(
        "plan", help="capacity plan of a pretraining recipe: memory per GPU, samples/s, loader, storage, shard build",
        formatter_class=DefaultsInHelp,
        description="Prints a table (or --json) of what the recipe needs on N GPUs; every line says whether it is "
                    "measured here or computed, and from what.")
    plan.add_argument("--config", type=Path, required=True,
                      help="a run recipe: a path or a shipped name (pretrain_as2m)")
    plan.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe key")
    plan.add_argument("--gpus", type=int, required=True)
    plan.add_argument("--gpu", choices=sorted(GPUS), default="h100")
    plan.add_argument("--zero", type=int, choices=[1, 2, 3], help="ZeRO stage (default: the recipe's)")
    plan.add_argument("--batch-per-gpu", type=int, help="samples per GPU (default: the recipe's data.batch_size)")
    plan.add_argument("--mfu", "--target-mfu", dest="mfu", type=float, default=PlanInputs.mfu,
                      help="model FLOPs utilisation, 0..1: the throughput lines assume it, the batch plan aims for it")
    plan.add_argument("--global-batch", type=int,
                      help=f"global batch to keep (default: the recipe's data.batch_size x {RECIPE_GPUS} GPUs x grad_accum)")
    plan.add_argument("--mfu-batch", type=int,
                      help="smallest per-GPU batch known to reach the MFU, e.g. the GPU check's recommended batch "
                           "(default: the recipe's data.batch_size)")
    plan.add_argument("--gpus-per-node", type=int, default=PlanInputs.gpus_per_node)
    plan.add_argument("--clips", type=int, default=AUDIOSET_2M_CLIPS, help="clips per epoch (AudioSet-2M)")
    plan.add_argument("--bytes-per-sample", type=float, default=PlanInputs.bytes_per_sample,
                      help="shard bytes per sample (default: measured here, see avmae/bench/plan.py)")
    plan.add_argument("--shards", type=Path, help="measure bytes per sample from this shard folder instead")
    plan.add_argument("--build-clips-per-core-s", type=float, default=BUILD_CLIPS_PER_CORE_S,
                      help="shard build rate per core (docs/performance.md: avmae-bench shard, 1 worker)")
    plan.add_argument("--activations", type=Path,
                      help="JSON of the activation measurement: read if it exists (same model), else measured and "
                           "written there (the measurement takes a minute or two on CPU)")
    plan.add_argument("--json", action="store_true", help="print JSON instead of the table")


def _model_config(path: Path, overrides: list[str]):
    from avmae.config import ConfigError, apply_overrides, from_dict, read
    from avmae.models.config import ModelConfig

    try:
        data = read(path)  # a model file or a recipe, with the bases they name
        data = data.get("model", data)
        apply_overrides(data, overrides)
        return from_dict(ModelConfig, data).validate()
    except (ConfigError, ValueError) as err:
        raise SystemExit(f"avmae-bench model: {path}: {err}") from None


def _has_dali() -> bool:
    import importlib.util

    return importlib.util.find_spec("nvidia.dali") is not None


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except ParameterError as err:  # the shard library names its parameters; say the flags
        print(f"avmae-bench {args.command}: {err.worded(flag)}", file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError) as err:  # bad input: one line, not a traceback
        print(f"avmae-bench {args.command}: {err}", file=sys.stderr)
        return 2


def _run(args) -> int:
    if args.command == "shard":
        from avmae.bench.shard import bench_shard, make_bench_clips

        features = from_args(FeatureParams, args, only=_SHARD_FEATURES)
        build = from_args(BuildParams, args, only=_SHARD_BUILD)
        with tempfile.TemporaryDirectory(prefix="avmae-clips-") as scratch:
            if args.src is None and not args.make_clips:
                print("avmae-bench shard: give --src DIR or --make-clips N", file=sys.stderr)
                return 2
            src = args.src or make_bench_clips(Path(scratch), args.make_clips, workers=args.workers)
            result = bench_shard(src, workers=args.workers, features=features, build=build)
        print(json.dumps(result, indent=1))
    elif args.command == "loader":
        from avmae.bench.loader import bench_loader

        backends = args.backend or ["torch"] + (["dali"] if _has_dali() else [])
        workers = args.workers or [0, os.cpu_count() or 1]
        with tempfile.TemporaryDirectory(prefix="avmae-cavmae-") as scratch:
            result = bench_loader(args.data, args.split, backends, workers, batch_size=args.batch_size,
                                  batches=args.batches, num_frames=args.num_frames, crop=args.crop,
                                  train=not args.eval, scratch=Path(scratch), threads=args.threads,
                                  remote=args.remote)
        print(json.dumps(result, indent=1))
    elif args.command == "model":
        from avmae.bench.model import bench_model

        config = _model_config(args.config, args.set)
        print(json.dumps(bench_model(config, args.batch_size, args.steps), indent=1))
    elif args.command == "feed":
        from avmae.bench.feed import bench_feed

        print(json.dumps(bench_feed(args.data, args.split, args.workers or [0, 1, 2], batch_size=args.batch_size,
                                    num_frames=args.num_frames, iterations=args.iterations, repeats=args.repeats),
                         indent=1))
    elif args.command == "plan":
        from avmae.bench.plan_run import run_plan

        run_plan(args)
    elif args.command == "gpu-check":
        from avmae.bench.gpu_check import run_check
        from avmae.bench.gpu_check_mode import CPU, GPU
        from avmae.bench.gpu_check_table import check_table

        result = run_check(args.out, {"auto": None, "cuda": GPU, "cpu": CPU}[args.mode],
                           log=lambda line: print(line, file=sys.stderr, flush=True))
        print(check_table(result))
        return 0 if result["passed"] else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
