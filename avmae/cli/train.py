"""``avmae-train``: pretrain or fine-tune from a YAML config with overrides. Parsing only."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from avmae.cli import say

if TYPE_CHECKING:  # imported where used: --help answers without loading torch
    from avmae.train.stops import Stop
    from avmae.train.trainer import Trainer

DESCRIPTION = """\
Train an AV-MAE (task: pretrain) or fine-tune its encoder (task: finetune) with DeepSpeed ZeRO, in one CPU process,
under torchrun, or as srun tasks of a SLURM job (the process group is set up from the SLURM variables). The run
folder gets config.yaml, metrics.jsonl, tensorboard/, checkpoints/ and export/ (fp32 safetensors). Re-running the
same command resumes from the newest complete checkpoint.
"""

EXAMPLES = """\
examples:
  avmae-train --config configs/demo_pretrain.yaml --workdir runs/demo_pt
  torchrun --nproc_per_node=2 -m avmae.cli.train --config configs/demo_pretrain.yaml --set zero_stage=3
  avmae-train --config configs/finetune_as20k.yaml --set init.path=runs/as2m_pt --set optim.lr=5e-5
  sbatch -N 8 slurm/pretrain_as2m.sbatch --set data.shards=/data/as2m
"""


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())  # whatever the library or a storage client wrote


def _stopped(stop: Stop, trainer: Trainer) -> int:
    """Say why the run stopped, in one line, and how it ends."""
    say(f"avmae-train: {stop.message}")
    if stop.group_broken:  # tearing down a process group with a dead peer waits on it: leave at once
        said = trainer.requeue.after_stop(stop)  # said after the stop line: requeuing may end this job first
        if said:
            say(f"avmae-train: {said}")
        sys.stdout.flush()
        os._exit(stop.exit_code)
    return stop.exit_code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="avmae-train", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True,
                        help="run YAML: a path, or a shipped recipe's name (pretrain_as2m: avmae/configs)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. optim.lr=1e-4 or model.encoder.size=base (repeatable); a "
                             "mapping merges into its section: optim={lr: 1e-4, warmup_steps: 100}")
    parser.add_argument("--workdir", help="run folder (overrides the config's workdir)")
    args = parser.parse_args(argv)

    from avmae.config import ConfigError, load
    from avmae.recipe.config import RunConfig

    overrides = list(args.set) + ([f"workdir={args.workdir}"] if args.workdir else [])
    try:
        config = load(RunConfig, args.config, overrides).validate()
    except (ConfigError, ValueError, FileNotFoundError) as err:
        say(f"avmae-train: {_one_line(err)}")
        return 2
    from avmae.eval.during_training import SplitEvaluator
    from avmae.eval.report import best_checkpoint_score
    from avmae.storage import StorageError
    from avmae.train.run_start import start_run
    from avmae.train.trainer import Trainer

    try:
        trainer = Trainer(start_run(config), evaluator=SplitEvaluator(config) if config.task == "finetune" else None,
                          best_score=best_checkpoint_score)
    except (ValueError, FileNotFoundError, StorageError) as err:  # shards missing, unreachable or made for another
        say(f"avmae-train: {_one_line(err)}")  # model: say which
        return 2
    from avmae.train.stops import JobStopped

    try:
        result = trainer.run()
    except (StorageError, ValueError) as err:  # the store failed past a loader's retries, or a shard's index or
        say(f"avmae-train: {_one_line(err)}")  # sidecar is damaged: the file and
        return 2  # what is wrong, no trace
    except JobStopped as err:  # divergence, a failed checkpoint or export, a loader past its budget, a dead rank
        return _stopped(err.stop, trainer)
    if trainer.is_main:  # one line from one rank: several ranks writing at once interleave on a shared pipe
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
