"""The clip set behind a number (labs hold different subsets of a dataset's clips): ``avmae-shard ids`` lists a
split's clips and hashes them, every report carries the hash of what it scored, and ``avmae-eval --ids`` scores the
intersection with another lab's list. Two labs are two builds of overlapping rows of the synthetic corpus; lab B
also lists a clip it never downloaded."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from avmae.cli.eval import main as eval_main
from avmae.cli.shard import main as shard_main
from avmae.config import load
from avmae.data.spec import load_spec
from avmae.eval.predictions import Predictions
from avmae.export.format import ExportInfo, write_export
from avmae.export.load import model_for
from avmae.recipe.config import RunConfig
from avmae.shard.checking.ids import clip_row, read_ids
from tests.helpers import build_shards, run_config


@pytest.fixture(scope="module")
def labs(synth_corpus, tmp_path_factory) -> dict[str, Path]:
    """Lab A built clips 0-7, lab B clips 4-11 and one row whose file it never had (a 'missing' failure)."""
    root = tmp_path_factory.mktemp("labs")
    header, *rows = synth_corpus.read_text().splitlines()
    lists = {"a": rows[:8], "b": rows[4:] + ["class_00/gone_from_youtube.mp4,class_00"]}
    out = {}
    for lab, chosen in lists.items():
        listing = synth_corpus.parent / f"lab_{lab}.csv"
        listing.write_text("\n".join([header, *chosen]) + "\n")
        out[lab] = build_shards(listing, root / lab, val_fraction=0)
    return out


def ids(folder: Path, target: Path, capsys) -> tuple[list[str], dict]:
    assert shard_main(["ids", str(folder), "--split", "train", "--out", str(target), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    return target.read_text().splitlines(), summary


def sha(lines) -> str:
    return hashlib.sha256("".join(line + "\n" for line in sorted(lines)).encode()).hexdigest()


def test_ids_lists_each_clip_once_sorted_with_its_hash(labs, tmp_path, capsys):
    rows_a, summary_a = ids(labs["a"], tmp_path / "a.ids", capsys)
    rows_b, summary_b = ids(labs["b"], tmp_path / "b.ids", capsys)
    assert len(rows_a) == summary_a["count"] == 8 and len(rows_b) == summary_b["count"] == 8
    assert rows_a == sorted(rows_a) and len(set(rows_a)) == 8
    assert rows_a[0].split("\t") == ["class_00/clip_00000.mp4", "0.000", "2.000"]  # the first 2 s segment
    assert summary_a["sha256"] == hashlib.sha256((tmp_path / "a.ids").read_bytes()).hexdigest()
    assert summary_a["build_losses"] == {"missing": 0, "failed": 0}
    assert summary_b["build_losses"] == {"missing": 1, "failed": 0}
    assert len(set(rows_a) & set(rows_b)) == 4  # clips 4-7
    # The same command twice, and the list on standard output, give the same bytes.
    assert shard_main(["ids", str(labs["a"]), "--split", "train"]) == 0
    captured = capsys.readouterr()
    assert captured.out == (tmp_path / "a.ids").read_text() and summary_a["sha256"] in captured.err


def test_a_row_names_the_youtube_segment_not_the_file():
    """A downloader's cut file is decoded from 0 s; the row keeps the list's segment (AudioSet, VGGSound)."""
    cut = {"video_id": "abc", "ytid": "abc", "start": 0.0, "end": 10.0, "list_start": 30.0, "list_end": 40.0}
    assert clip_row(cut) == "abc\t30.000\t40.000"
    vggsound = {"video_id": "xyz", "ytid": "xyz", "start": 0.0, "end": 9.5, "list_start": 120.0}
    assert clip_row(vggsound) == "xyz\t120.000\t129.500"


def test_a_malformed_ids_file_is_one_line_naming_it(tmp_path):
    path = tmp_path / "theirs.ids"
    path.write_text("abc\t30\t40\nabc 30 40\n")
    with pytest.raises(ValueError, match=r"theirs.ids:2: .* is not '<id>\\t<start seconds>\\t<end seconds>'"):
        read_ids(path)


@pytest.fixture(scope="module")
def export(labs, tmp_path_factory) -> Path:
    """A classifier export of the tiny model for lab A's shards (weights as initialised: the scores are the point)."""
    root = tmp_path_factory.mktemp("export")
    config = load(RunConfig, run_config(root, labs["a"], task="finetune"))
    spec = load_spec(labs["a"], "train")
    heads = {"label": len(spec.label_names)}
    info = ExportInfo(task="finetune", config=config, label_mode=str(spec.label_mode),
                      label_names=list(spec.label_names), heads=heads)
    return write_export(root / "run" / "export" / "model.safetensors", model_for(config, "finetune", heads).state_dict(),
                        info)


def evaluate(export: Path, data: Path, out: Path, *extra: str) -> dict:
    assert eval_main(["--ckpt", str(export), "--data", str(data), "--split", "train", "--task", "vggsound",
                      "--batch-size", "3", "--workers", "0", "--backend", "torch", "--out", str(out),
                      "--json", *extra]) == 0
    return json.loads((out / "report.json").read_text())


def test_reports_hash_what_they_scored_and_ids_scores_the_intersection(labs, export, tmp_path, capsys):
    rows_a, summary_a = ids(labs["a"], tmp_path / "a.ids", capsys)
    rows_b, _ = ids(labs["b"], tmp_path / "b.ids", capsys)
    full = evaluate(export, labs["a"], tmp_path / "full")
    assert full["clip_set"]["sha256"] == full["clip_set"]["split_sha256"] == summary_a["sha256"] == sha(rows_a)
    assert full["clip_set"]["count"] == 8 and full["clip_set"]["build_losses"] == {"missing": 0, "failed": 0}
    assert "ids" not in full["clip_set"]

    both = evaluate(export, labs["a"], tmp_path / "both", "--ids", str(tmp_path / "b.ids"))
    capsys.readouterr()
    clip_set, cover = both["clip_set"], both["coverage"]
    assert clip_set["sha256"] == sha(set(rows_a) & set(rows_b)) and clip_set["count"] == 4
    assert clip_set["split_sha256"] == summary_a["sha256"]
    assert clip_set["ids"] == {"file": str(tmp_path / "b.ids"), "sha256": sha(rows_b), "in_list": 8, "in_shards": 8,
                               "both": 4, "list_not_in_shards": 4, "shards_not_in_list": 4, "scored": 4}
    assert (cover["expected"], cover["scored"], cover["missing"], cover["complete"]) == (4, 4, 0, True)
    # The metrics are those of the four shared clips: the full run's scores of exactly those keys.
    ours = Predictions.load(tmp_path / "both" / "predictions.npz")
    reference = Predictions.load(tmp_path / "full" / "predictions.npz")
    keys = sorted(ours.keys)
    assert len(keys) == 4
    assert np.array_equal(ours.select(keys).scores["label"], reference.select(keys).scores["label"])
