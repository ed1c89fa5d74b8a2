"""Run a shard build: plan, claim the output (a folder or a URL, output.py), write this task's pending shards on N
processes, finalize.

Parallelism is one shard per worker process, so the bytes of a shard never depend on the worker count. With
``num_tasks > 1`` (SLURM array jobs) task ``i`` writes shards ``i, i + n, i + 2n...``; whichever task finds all
shards done writes the manifest.
"""

from __future__ import annotations

import errno
import multiprocessing
import queue
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torchaudio

import avmae
from avmae.config import to_dict
from avmae.shard.errors import NO_SPACE_ERRNOS, OutOfSpaceError, ParameterError
from avmae.shard.format import FORMAT_VERSION, label_mode
from avmae.shard.inputs.collect import InputSpec, collect_inputs
from avmae.shard.inputs.items import ClipItem
from avmae.shard.inputs.lists import LabelSet
from avmae.shard.inputs.media import ffmpeg_version
from avmae.shard.params import BuildParams, FeatureParams
from avmae.shard.writing.output import open_output
from avmae.shard.writing.plan import ShardPlan, fingerprint, make_plan
from avmae.shard.writing.progress import BuildProgress
from avmae.shard.writing.writer import PARTS_DIR, write_shard
from avmae.storage import is_url


@dataclass
class BuildResult:
    shards_total: int
    shards_written: int  # by this run
    shards_skipped: int  # already done by an earlier run or another task
    items_processed: int
    failures_this_run: int
    seconds: float
    manifest: dict[str, Any] | None  # None while other array tasks still have shards to write


_progress_queue = None


def _init_worker(progress_queue) -> None:
    import torch

    torch.set_num_threads(1)  # one process per shard is the parallelism; threads would oversubscribe the cores
    global _progress_queue
    _progress_queue = progress_queue


def _write_in_worker(output, plan: ShardPlan, features: FeatureParams, build: BuildParams, identity: str):
    return _write_or_clean_up(output, plan, features, build, identity, lambda ok: _progress_queue.put(ok))


def _write_or_clean_up(output, plan: ShardPlan, features: FeatureParams, build: BuildParams, identity: str,
                       on_item) -> dict[str, Any]:
    """write_shard into the output's folder and publish it (a remote output uploads it); when either fails, no
    local file of the shard is left behind (without its part record none holds finished work: a shard is redone
    whole). A full disk becomes one line naming the shard and the folder."""
    out = output.folder
    try:
        record = write_shard(out, plan, features, build, identity, on_item=on_item)
        output.publish_shard(plan.name, record)
        return record
    except BaseException as err:
        _remove_unfinished(out, plan.name)
        if isinstance(err, OSError) and err.errno in NO_SPACE_ERRNOS:
            raise OutOfSpaceError(f"shard {plan.name}: no space left on device in {out} ({errno.errorcode[err.errno]}); "
                                  "shards already finished stay, the same build again resumes") from None
        raise


def _remove_unfinished(out: Path, name: str) -> None:
    """The local files of a shard that failed before it was done (written, and uploaded for a remote output): the
    hidden ones kept under temporary names while it is written (by write_shard and files.py), a tar and index
    already renamed when the record failed, and a staged record whose upload failed."""
    # The record first: a record whose tar is gone would claim a shard that is not there.
    leftovers = [*(out / PARTS_DIR).glob(f"{name}.json"), *out.glob(f".{name}.*partial"),
                 *(out / PARTS_DIR).glob(f".{name}.json.*partial"), *out.glob(f"{name}.*")]
    for path in leftovers:
        path.unlink(missing_ok=True)


def run_build(out: Path | str, items: list[ClipItem], labels: LabelSet, source: dict[str, Any],
              features: FeatureParams, build: BuildParams, *, workers: int = 1, task_index: int = 0,
              num_tasks: int = 1, overwrite: bool = False, show_progress: bool = True,
              stage: Path | None = None) -> BuildResult:
    """Build (or resume) this task's shards into ``out``, a folder or a URL (``stage``: where a remote build
    keeps its shards in flight, see remote_out.py)."""
    if not 0 <= task_index < num_tasks:
        raise ParameterError("task_index", f"{task_index} is not in [0, `num_tasks` {num_tasks})")
    if overwrite and num_tasks > 1:
        raise ParameterError("overwrite", f"cannot be used with array tasks ({num_tasks}): each would delete the "
                             "shards the others write; clear the output once before submitting the array (rm -r, "
                             "or one build with `overwrite` and no array)")
    if workers < 1:
        raise ParameterError("workers", f"must be at least 1, got {workers}")
    output = open_output(out, stage)
    try:
        return _build_into(output, items, labels, source, features, build, workers=workers, task_index=task_index,
                           num_tasks=num_tasks, overwrite=overwrite, show_progress=show_progress)
    finally:
        output.close()


def _build_into(output, items, labels, source, features, build, *, workers, task_index, num_tasks, overwrite,
                show_progress) -> BuildResult:
    started = time.time()
    output.prepare(overwrite)
    plans = make_plan(items, build)
    identity = fingerprint(plans, features, build)
    description = {
        "format_version": FORMAT_VERSION, "fingerprint": identity, "features": to_dict(features),
        "build": to_dict(build), "source": source, "labels": labels.to_json(),
        "tools": {"avmae": avmae.__version__, "ffmpeg": ffmpeg_version(), "torchaudio": torchaudio.__version__},
        "shards": [plan.name for plan in plans], "inputs": sum(len(plan.items) for plan in plans),
    }
    output.claim(description)
    pending = set(output.pending(description))
    mine = [plan for index, plan in enumerate(plans) if index % num_tasks == task_index]
    todo = [plan for plan in mine if plan.name in pending]
    total_items = sum(len(plan.items) for plan in todo)

    if workers == 1 or len(todo) <= 1:
        with BuildProgress(total_items, enabled=show_progress) as progress:
            records = [_write_or_clean_up(output, plan, features, build, identity, progress.advance) for plan in todo]
    else:
        records = _run_pool(output, todo, features, build, identity, workers, total_items, show_progress)
    manifest = output.finalize() if not output.pending(description) else None
    return BuildResult(shards_total=len(plans), shards_written=len(todo), shards_skipped=len(mine) - len(todo),
                       items_processed=sum(record["items"] for record in records),
                       failures_this_run=sum(len(record["failures"]) for record in records), seconds=time.time() - started,
                       manifest=manifest)


def _run_pool(output, todo, features, build, identity, workers, total_items, show_progress) -> list[dict[str, Any]]:
    # fork, not spawn: a spawned worker spends ~1.3 s importing torch again, which is most of a small build's time.
    # The pool forks all its workers at the first submit, before the progress bar starts its refresh thread, so no
    # thread of the parent is ever copied mid-operation.
    context = multiprocessing.get_context("fork")
    progress_queue = context.Queue()
    with ProcessPoolExecutor(max_workers=min(workers, len(todo)), mp_context=context,
                             initializer=_init_worker, initargs=(progress_queue,)) as pool:
        futures = {pool.submit(_write_in_worker, output, plan, features, build, identity) for plan in todo}
        records = []
        with BuildProgress(total_items, enabled=show_progress) as progress:
            try:
                while futures:
                    done, futures = wait(futures, timeout=0.2, return_when=FIRST_COMPLETED)
                    _drain(progress_queue, progress.advance)
                    # A worker that died raises here; its shard has no part record and is redone by the next run.
                    records.extend(future.result() for future in done)
            except BaseException:
                for future in futures:  # shards not started stay for the next run; running ones finish
                    future.cancel()
                raise
            _drain(progress_queue, progress.advance)
    return records


def _drain(progress_queue, on_item) -> None:
    while True:
        try:
            on_item(progress_queue.get_nowait())
        except queue.Empty:
            return


def build_summary(out: Path | str, result: BuildResult, source: dict[str, Any]) -> dict[str, Any]:
    """What a build did, as ``avmae-shard build`` prints it (and ``--json`` gives it): this run's work, and once the
    manifest is written the totals, splits, log-mel statistics and the labels with the fewest samples. A folder
    scan's ignored files (by extension) are part of it: they are inputs that are in neither samples nor failures."""
    summary: dict[str, Any] = {
        "out": str(out).rstrip("/") if is_url(str(out)) else str(out), "shards_total": result.shards_total, "shards_written": result.shards_written,
        "shards_skipped": result.shards_skipped, "items_processed": result.items_processed,
        "failures_this_run": result.failures_this_run, "seconds": round(result.seconds, 2),
        "clips_per_second": round(result.items_processed / result.seconds, 2) if result.seconds else None,
        "ignored_files": dict(source.get("ignored_files", {})),
        "finished": result.manifest is not None,
    }
    if result.manifest is not None:
        manifest = result.manifest
        summary["totals"] = manifest["totals"]
        summary["splits"] = {name: split["samples"] for name, split in manifest["splits"].items()}
        summary["logmel_mean"] = manifest["logmel_mean"]
        summary["logmel_std"] = manifest["logmel_std"]
        coverage = manifest["label_coverage"]
        summary["label_mode"] = str(label_mode(manifest))
        # Inputs of labelled data whose samples carry no label (a blank labels cell, a file at the top of a
        # labels_from_dirs folder). Single-label training skips each such sample as bad (checking/sample_rules.py),
        # so the build says how many there are and verify names them.
        summary["unlabelled_inputs"] = manifest["labels"].get("unlabelled_inputs", 0)
        summary["worst_label_coverage"] = sorted(
            ({"label": label, "rows": c["rows"], "ok": c["ok"]} for label, c in coverage.items() if c["ok"] < c["rows"]),
            key=lambda row: (row["ok"] / row["rows"], row["label"]))[:10]
    return summary


def build_shards(out: Path | str, inputs: InputSpec, features: FeatureParams, build: BuildParams, *,
                 workers: int = 1, task_index: int = 0, num_tasks: int = 1, overwrite: bool = False,
                 show_progress: bool = True, stage: Path | None = None) -> dict[str, Any]:
    """Collect the inputs, build (or resume) this task's shards into a folder or a URL, finalize when all are
    done; returns the summary."""
    items, labels, source = collect_inputs(inputs, segment_seconds=build.segment_seconds)
    result = run_build(out, items, labels, source, features, build, workers=workers, task_index=task_index,
                       num_tasks=num_tasks, overwrite=overwrite, show_progress=show_progress, stage=stage)
    return build_summary(out, result, source)
