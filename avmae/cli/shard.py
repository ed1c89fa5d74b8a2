"""``avmae-shard``: raw clips -> WebDataset shards (build, finalize, verify, inspect, synth). Parsing only."""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from avmae.cli.flags import DefaultsInHelp, add_fields, dashed, field_values, from_args
from avmae.shard.errors import ParameterError
from avmae.shard.format import LabelMode
from avmae.shard.inputs.cavmae_prepared import CAVMAE_FRAME_SIZE, CAVMAE_FRAMES
from avmae.shard.inputs.collect import InputSpec
from avmae.shard.params import AUDIO_FRONTENDS, BuildParams, FeatureParams

_FLAGS = {"list_path": "--list", "num_classes": "--classes"}  # library parameters whose flag is not "--name-dashed"


def flag(parameter: str) -> str:
    """The flag of a shard-library parameter (``task_index`` -> ``--task-index``)."""
    return _FLAGS.get(parameter, dashed(parameter))


def _folder_or_url(text: str) -> Path | str:
    """A build output or a shard folder to read: a URL (``s3://bucket/prefix``, any fsspec URL) or a pipe: command
    stays text, anything else is a folder (storage.root_of)."""
    from avmae.storage import root_of

    return root_of(text)


DESCRIPTION = """\
Turn raw video clips into WebDataset shards for avmae: per sample N JPEG frames spread over the segment, the
log-mel of its first audio channel (CAV-MAE's Kaldi fbank, or with --audio-frontend scenic the 25 ms Hamming
front end Scenic's AV-MAE checkpoints expect; float16 or float32 .npy) and metadata JSON; a DALI index beside every tar,
manifest.json (features, labels, per-shard counts and checksums, log-mel mean/std) and failures.jsonl (every input
that gave no sample, with the reason). Re-running the same command resumes an interrupted build.
"""

EXAMPLES = """\
examples:
  avmae-shard synth --out corpus --num 200 --classes 8
  avmae-shard build --list corpus/corpus.csv --out shards --segment-seconds 4 --val-fraction 0.2 --workers 2
  avmae-shard build --src videos/ --out shards                      # every clip in a folder, first 10 s
  avmae-shard build --src videos/ --out s3://bucket/shards          # straight to object storage (any fsspec URL)
  avmae-shard build --list balanced_train_segments.csv --class-labels class_labels_indices.csv \\
                    --src audioset_videos/ --out as20k
  avmae-shard build --list vggsound.csv --src vggsound_videos/ --out vggsound
  avmae-shard build --list EPIC_100_train.csv --src EPIC-KITCHENS/ --out epic_train
  avmae-shard build --src 'downloads/{00000..00099}.tar' --out v2d    # video2dataset output, read in place
  avmae-shard build --src 's3://bucket/v2d/{00000..00099}.tar' --list balanced_train_segments.csv \
                    --class-labels class_labels_indices.csv --out as20k
  avmae-shard build --list audioset_eval_cavmae.json --list-format cavmae --out as_eval   # CAV-MAE's frames + wavs
  avmae-shard verify shards && avmae-shard inspect shards --sample 0 --png-dir shards_preview
  avmae-shard ids as_eval --split test --out as_eval_test.ids      # the clip set behind a number, and its sha256
"""


@dataclass(frozen=True)
class BuildRun:
    """How this command runs a build: where it writes, in how many processes and tasks, what it prints. None of it
    changes the shards."""

    out: Path | str = field(metadata={
        "parse": _folder_or_url,
        "help": "output folder, or a URL such as s3://bucket/prefix (credentials and endpoint from the standard "
                "AWS_* / FSSPEC_S3_* variables or ~/.aws); re-run to resume"})
    stage: Path | None = field(default=None, metadata={
        "help": "with a URL `out`: the local folder under which shards are staged before upload (a fresh subfolder "
                "per run, holding only the shards in flight, removed at the end); default: the system temp folder"})
    workers: int = field(default_factory=lambda: os.cpu_count() or 1, metadata={
        "help": "processes (one shard each)"})
    task_index: int = field(default_factory=lambda: int(os.environ.get("SLURM_ARRAY_TASK_ID", 0)), metadata={
        "help": "this task's index when the build is split over array tasks"})
    num_tasks: int = field(default_factory=lambda: int(os.environ.get("SLURM_ARRAY_TASK_COUNT", 1)), metadata={
        "help": "number of array tasks sharing the build"})
    overwrite: bool = field(default=False, metadata={"help": "delete `out` first instead of resuming"})
    json: bool = field(default=False, metadata={"help": "print the summary as JSON (no progress bar)"})
    no_progress: bool = field(default=False, metadata={"help": "no progress bar"})


# Feature defaults the build works out from other flags: CAV-MAE's prepared frames keep their count and size, and the
# log-mel length follows the front end.
_LATER_DEFAULTS = {
    "num_frames": f"{FeatureParams.num_frames}; {CAVMAE_FRAMES} with {flag('list_format')} cavmae",
    "short_side": f"{FeatureParams.short_side}; {CAVMAE_FRAME_SIZE} with {flag('list_format')} cavmae, which keeps "
                  "its frames byte for byte",
    "target_frames": ", ".join(f"{FeatureParams.for_frontend(name).target_frames} with {name}"
                               for name in AUDIO_FRONTENDS),
}
_BUILD_GROUPS = (
    ("inputs", InputSpec),
    ("features (recorded in the manifest; loaders check them)", FeatureParams),
    ("segments, bad input, shards and splits (recorded in the manifest; a resumed build must match them)",
     BuildParams),
    ("output and parallelism", BuildRun),
)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avmae-shard", description=DESCRIPTION, epilog=EXAMPLES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="make shards from a folder of clips or a dataset list")
    for title, params in _BUILD_GROUPS:
        add_fields(build.add_argument_group(title), params, spell=flag, defaults_shown=_LATER_DEFAULTS)
    _add_reading_commands(commands)
    _add_synth_command(commands)
    return parser


def _add_reading_commands(commands) -> None:
    """The commands that read a finished shard folder (or finish one)."""
    finalize = commands.add_parser("finalize", help="write manifest.json once every array task has finished")
    finalize.add_argument("out", type=_folder_or_url, help="the build's folder or URL")
    finalize.add_argument("--json", action="store_true")

    verify = commands.add_parser("verify", help="check tars, indexes, counts and checksums against the manifest, "
                                     "and every sample by the checks the loaders run")
    verify.add_argument("out", type=_folder_or_url, help="shard folder, URL (s3://, gs://, https://) or pipe:... {} command")
    verify.add_argument("--quick", action="store_true", help="skip opening every sample (the frames' JPEG "
                        "markers and size, the log-mel's shape and finiteness, the JSON's labels)")
    verify.add_argument("--json", action="store_true")

    inspect = commands.add_parser("inspect", help="summary, label histogram, PNGs of one sample")
    inspect.add_argument("out", type=_folder_or_url, help="shard folder, URL or pipe: command")
    inspect.add_argument("--sample", help="key or position of a sample to render (PNG contact sheet + spectrogram)")
    inspect.add_argument("--png-dir", type=Path, help="where the PNGs go (default: <out>/inspect)")
    inspect.add_argument("--json", action="store_true")

    ids = commands.add_parser("ids", help="the sorted clip list (id, start, end) of a split and its sha256, to "
                                          "compare with another lab's copy")
    ids.add_argument("out", type=_folder_or_url, help="shard folder, URL or pipe: command")
    ids.add_argument("--split", required=True)
    ids.add_argument("--list-out", "--out", dest="list_out", type=Path,
                     help="write the list here (default: standard output; the hash goes to standard error)")
    ids.add_argument("--json", action="store_true", help="print {sha256, count, build losses, file} as JSON")


def _add_synth_command(commands) -> None:
    synth = commands.add_parser("synth", help="make a synthetic labelled corpus with ffmpeg (demo, tests)",
                                formatter_class=DefaultsInHelp)
    synth.add_argument("--out", type=Path, required=True)
    synth.add_argument("--num", type=int, default=200, help="clips")
    synth.add_argument("--classes", type=int, default=8)
    synth.add_argument("--seconds", type=float, default=4.0, help="shortest clip length (clips vary up to +25%%)")
    synth.add_argument("--size", default="160x120", help="WIDTHxHEIGHT")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--workers", type=int, default=os.cpu_count() or 1)


def _print_json(data) -> None:
    print(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False))


def _cmd_build(args) -> int:
    from avmae.shard.inputs.collect import reads_cavmae_prepared
    from avmae.shard.writing.build import build_shards

    inputs, build, run = from_args(InputSpec, args), from_args(BuildParams, args), from_args(BuildRun, args)
    features = _feature_params(args, reads_cavmae_prepared(inputs))
    report = build_shards(run.out, inputs, features, build, workers=run.workers, task_index=run.task_index,
                          num_tasks=run.num_tasks, overwrite=run.overwrite,
                          show_progress=not (run.json or run.no_progress), stage=run.stage)
    if run.json:
        _print_json(report)
    else:
        _print_build_report(report)
    return 0


def _feature_params(args, cavmae_prepared: bool) -> FeatureParams:
    """The features asked for; flags left unset take the defaults of the source (CAV-MAE's prepared frames) and of
    the audio front end (FeatureParams.for_frontend)."""
    values = field_values(FeatureParams, args)
    if cavmae_prepared:
        values = {"num_frames": CAVMAE_FRAMES, "short_side": CAVMAE_FRAME_SIZE,
                  **{name: value for name, value in values.items() if value is not None}}
    return FeatureParams.for_frontend(**values)


def _print_build_report(report) -> None:
    console = Console()
    table = Table(title=f"avmae-shard build → {report['out']}", show_header=False)
    table.add_row("shards", f"{report['shards_written']} written, {report['shards_skipped']} already done, "
                            f"{report['shards_total']} planned")
    table.add_row("this run", f"{report['items_processed']} inputs in {report['seconds']} s "
                              f"({report['clips_per_second']} clips/s), {report['failures_this_run']} failed")
    if report["ignored_files"]:
        table.add_row("ignored", "not taken as video: " + ", ".join(f"{ext}: {n}" for ext, n in report["ignored_files"].items()))
    if report["finished"]:
        totals = report["totals"]
        table.add_row("totals", f"{totals['inputs']} inputs = {totals['inputs_ok']} with samples + "
                                f"{totals['failures']} failures; {totals['samples']} samples")
        table.add_row("splits", ", ".join(f"{name}: {count}" for name, count in report["splits"].items()))
        if report["logmel_mean"] is not None:
            table.add_row("log-mel", f"mean {report['logmel_mean']:.4f}, std {report['logmel_std']:.4f}")
        if totals["failure_reasons"]:
            table.add_row("failures", ", ".join(f"{r}: {n}" for r, n in totals["failure_reasons"].items())
                          + f"  (details: {report['out']}/failures.jsonl)")
        if report["unlabelled_inputs"] and report["label_mode"] == LabelMode.SINGLE:
            table.add_row("[yellow]unlabelled[/]", f"{report['unlabelled_inputs']} inputs have samples but no label: "
                          "single-label training and evaluation skip those samples as bad (`avmae-shard verify` "
                          "names them)")
        for row in report["worst_label_coverage"]:
            table.add_row("coverage", f"{row['label']}: {row['ok']}/{row['rows']} rows have a sample")
    else:
        table.add_row("status", "other array tasks still have shards to write; the last one writes manifest.json")
    console.print(table)


def _cmd_finalize(args) -> int:
    from avmae.shard.writing.output import finalize_output

    manifest = finalize_output(args.out)
    if args.json:
        _print_json(manifest["totals"])
    else:
        Console().print(f"manifest written: {str(args.out).rstrip('/')}/manifest.json ({manifest['totals']['samples']} samples)")
    return 0


def _cmd_verify(args) -> int:
    from avmae.shard.checking.verify import verify

    result = verify(args.out, deep=not args.quick)
    if args.json:
        _print_json(result)
    else:
        console = Console()
        for problem in result["problems"]:
            console.print(f"[red]✗[/] {problem}")
        if result["checksums"] == "unchecked":
            console.print("format version 1: no member checksums recorded, member bytes unchecked (rebuild to check)")
        status = "[green]OK[/]" if result["ok"] else f"[red]{len(result['problems'])} problems[/]"
        console.print(f"{status}: {result['shards']} shards, {result['samples']} samples, {result['failures']} failures")
    return 0 if result["ok"] else 1


def _cmd_inspect(args) -> int:
    from avmae.shard.checking.inspect import render_sample, summary

    info = summary(args.out)
    if args.sample is not None:
        wanted = int(args.sample) if args.sample.isdigit() else args.sample
        default = args.out / "inspect" if isinstance(args.out, Path) else Path("inspect")  # a URL: here
        info["sample"] = render_sample(args.out, wanted, args.png_dir or default)
    if args.json:
        _print_json(info)
        return 0
    console = Console()
    splits = Table(title=f"{args.out}")
    for column in ("split", "samples", "shards", "failures", "log-mel mean", "log-mel std"):
        splits.add_column(column)
    for name, split in info["splits"].items():
        mean, std = split["logmel_mean"], split["logmel_std"]
        splits.add_row(name, str(split["samples"]), str(split["shards"]), str(split["failures"]),
                       "-" if mean is None else f"{mean:.3f}", "-" if std is None else f"{std:.3f}")
    console.print(splits)
    histogram = info["label_histogram"]
    if histogram:
        table = Table(title="labels (inputs with samples)")
        table.add_column("label")
        table.add_column("count", justify="right")
        table.add_column("")
        peak = max(histogram.values()) or 1
        for label, count in sorted(histogram.items(), key=lambda kv: (-kv[1], kv[0])):
            table.add_row(label, str(count), "█" * max(1, round(30 * count / peak)) if count else "")
        console.print(table)
    if "sample" in info:
        sample = info["sample"]
        if sample.get("unsafe_key"):
            console.print(f"sample key {sample['key']!r} is not a safe file name; its files are named after a "
                          "sanitised copy", markup=False, soft_wrap=True)
        console.print(f"sample {sample['key']}: {sample['frames_png']}, {sample['spectrogram_png']}", markup=False,
                      soft_wrap=True)
    return 0


def _cmd_ids(args) -> int:
    from avmae.files import write_text_atomically
    from avmae.shard.checking.ids import build_losses, ids_sha256, ids_text, split_rows

    found, unreadable = split_rows(args.out, args.split)
    if unreadable:  # a list that silently lacks clips would name the wrong set
        key, why = next(iter(unreadable.items()))
        raise ValueError(f"{len(unreadable)} samples of split {args.split!r} have unreadable metadata, e.g. {key}: "
                         f"{why}; avmae-shard verify {args.out} names the damage")
    rows = list(found.values())
    summary = {"split": args.split, "count": len(rows), "sha256": ids_sha256(rows),
               "build_losses": build_losses(args.out, args.split), "file": str(args.list_out or "-")}
    if args.list_out:
        write_text_atomically(args.list_out, ids_text(rows))
    else:
        sys.stdout.write(ids_text(rows))
    if args.json:
        print(json.dumps(summary, sort_keys=True), file=sys.stdout if args.list_out else sys.stderr)
    else:
        losses = summary["build_losses"]
        print(f"{summary['sha256']}  {len(rows)} clips of split {args.split}  ({losses['missing']} rows missing, "
              f"{losses['failed']} failed at build time)  {summary['file']}",
              file=sys.stdout if args.list_out else sys.stderr)
    return 0


def _cmd_synth(args) -> int:
    from avmae.shard.inputs.synth import make_corpus

    width, height = (int(v) for v in args.size.lower().split("x"))
    path = make_corpus(args.out, args.num, args.classes, seed=args.seed, seconds=args.seconds, width=width,
                       height=height, workers=args.workers)
    print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    handlers = {"build": _cmd_build, "finalize": _cmd_finalize, "verify": _cmd_verify, "inspect": _cmd_inspect,
                "synth": _cmd_synth, "ids": _cmd_ids}
    try:
        return handlers[args.command](args)
    except ParameterError as err:  # the library names its parameters; say the flags
        print(f"avmae-shard {args.command}: {err.worded(flag)}", file=sys.stderr)
        return 2
    except (ValueError, OSError, RuntimeError) as err:
        # print, not rich: one line whatever the terminal width, and brackets in the message are not markup
        print(f"avmae-shard {args.command}: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
