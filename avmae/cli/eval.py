"""``avmae-eval``: metrics of a checkpoint on a sharded split, recomputation from saved predictions, and
reconstruction figures. Parsing and printing only: each command calls one function of avmae.eval."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import traceback
from pathlib import Path
from typing import NoReturn

from avmae.cli import say
from avmae.cli.flags import add_fields, dashed, from_args
from avmae.eval.request import EvalRequest

DESCRIPTION = """\
Evaluate an avmae checkpoint (an export/*.safetensors file or a run folder) on a shard split:
  audioset   mAP (classes without positives are excluded and counted; mAP_sklearn scores them 0), mAUC, d-prime
  vggsound   top-1 / top-5 accuracy (any single-label set)
  epic       verb, noun and action top-1 / top-5 (action = argmax of the verb x noun softmax product)
  retrieval  audio->video and video->audio R@1/5/10 and median rank from a pretraining checkpoint
Runs in one process or under torchrun / srun (every sample counted once). Writes report.json, predictions.npz
(recompute with `avmae-eval metrics`), per-class AP CSV and PNG plots to --out.
Every sample of the split is scored or listed in report.json with the reason; a split with samples that could
not be scored ends with exit code 2 unless --allow-missing is given. Under torchrun / srun, a rank that cannot
score its share (a reader past its skip budget, unreadable storage) prints one line and exits at once, so the
launcher ends the job; its peers do not wait --collective-timeout-s for it.
"""

EXAMPLES = """\
examples:
  avmae-eval --ckpt runs/finetune_as20k --data /data/as_eval --split test --task audioset --views 4
  avmae-eval --ckpt runs/pretrain --data shards --split val --task retrieval
  avmae-eval --ckpt runs/pretrain --data shards --split val --task vggsound --linear-probe
  avmae-eval metrics --pred out/predictions.npz
  avmae-eval reconstruct --ckpt runs/pretrain --data shards --split val --num 4 --out figures/
"""


def _eval_parser() -> argparse.ArgumentParser:
    """The main command: a flag for each field of EvalRequest (its help, type, choices and default), and --json."""
    parser = argparse.ArgumentParser(prog="avmae-eval", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_fields(parser, EvalRequest)
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    return parser


def _request(args: argparse.Namespace) -> EvalRequest:
    """The request the main command's flags ask for (--json is how it is printed, not part of it)."""
    return from_args(EvalRequest, args)


def _run_eval(args) -> int:
    from avmae.eval import report as reports
    from avmae.eval.evaluate import evaluate

    result = evaluate(_request(args))
    if not result.is_main:
        return 0
    if args.json:
        print(json.dumps(result.report, indent=1, sort_keys=True, default=str))
    else:
        reports.print_table(result.report, f"{args.task} on {args.data} [{args.split}] → {result.out}")
    return 0


def _run_metrics(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="avmae-eval metrics", description="Recompute metrics from predictions.npz")
    parser.add_argument("--pred", type=Path, required=True)
    parser.add_argument("--task", choices=["audioset", "vggsound", "epic"],
                        help="needed only for files that do not store their label mode (written before it was)")
    args = parser.parse_args(argv)
    from avmae.eval.evaluate import recompute_metrics

    print(json.dumps(recompute_metrics(args.pred, args.task), indent=1, sort_keys=True))
    return 0


def _run_reconstruct(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="avmae-eval reconstruct",
                                     description="PNG figures: original / masked / reconstructed frames and log-mel")
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--num", type=int, default=4, help="samples")
    parser.add_argument("--seed", type=int, default=0, help="mask draw")
    parser.add_argument("--out", type=Path, default=Path("reconstructions"))
    args = parser.parse_args(argv)
    from avmae.eval.reconstruct import write_reconstructions

    for path in write_reconstructions(args.ckpt, args.data, args.split, args.num, args.seed, args.out):
        print(path)
    return 0


def as_flags(message: str) -> str:
    """A library message in the CLI's terms: request fields (allow_missing) become flags (--allow-missing). Only
    the fields of two or more words: a one-word field (data, split) is also an ordinary word of a message."""
    names = "|".join(sorted((f for f in EvalRequest.__dataclass_fields__ if "_" in f), key=len, reverse=True))
    return re.sub(rf"(?<![\w./-])({names})(?![\w./-])", lambda m: dashed(m.group(1)), message)


def _input_errors() -> tuple[type[BaseException], ...]:
    """What bad input or unreadable data raises: printed as one line, exit code 2."""
    from avmae.config import ConfigError
    from avmae.data.faults import SkipBudgetExceeded
    from avmae.eval.predictions import PredictionsError
    from avmae.storage import StorageError

    return ValueError, FileNotFoundError, ConfigError, PredictionsError, StorageError, SkipBudgetExceeded


def _leave_rank(failed) -> NoReturn:
    """A rank that failed while scoring (avmae.eval.evaluate.RankFailed): its line, then ``os._exit``, not a
    return: its peers may be inside a collective waiting for it, and an orderly exit would tear the process group
    down, which waits on them. Once it is gone, torchrun / srun end the job and the peers' collective fails. A
    failure that is not bad input nor a lost peer (a bug) also gets its traceback."""
    from avmae.train.stops import is_collective_failure

    cause = failed.__cause__
    expected = isinstance(cause, _input_errors())
    if not (expected or is_collective_failure(cause)):
        traceback.print_exception(cause)
    say(f"avmae-eval: {as_flags(str(failed))}")
    sys.stdout.flush()
    os._exit(2 if expected else 1)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "metrics":
            return _run_metrics(argv[1:])
        if argv and argv[0] == "reconstruct":
            return _run_reconstruct(argv[1:])
        return _run_eval(_eval_parser().parse_args(argv))
    except Exception as err:
        from avmae.eval.evaluate import RankFailed  # here, not above: --help does not load torch

        if isinstance(err, RankFailed):
            _leave_rank(err)
        if not isinstance(err, _input_errors()):
            raise
        message = " ".join(str(err).split())  # one line, whatever the library wrote
        say(f"avmae-eval: {as_flags(message)}")
        return 2


if __name__ == "__main__":
    sys.exit(main())
