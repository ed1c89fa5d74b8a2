"""Evaluation: metrics equal scikit-learn's, retrieval on known answers, multi-view aggregation, distributed equals
single-process, and avmae-eval end to end on a fine-tuned and a pretrained checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score, top_k_accuracy_score

from avmae.cli.eval import main as eval_main
from avmae.eval.metrics import average_precision, epic_metrics, multilabel_metrics, roc_auc, top_k_accuracy
from avmae.eval.retrieval import ranks_of_true_pairs, recall_metrics, retrieval_metrics
from avmae.models.tokenizers import patchify_audio, patchify_video, unpatchify_audio, unpatchify_video
from tests.helpers import REPO, build_shards, free_port, run_config, torchrun


def test_average_precision_equals_sklearn_with_ties_and_constant_scores():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.random((30, 3)), rng.integers(0, 3, (30, 3)).astype(float), np.ones((30, 1))], 1)
    targets = (rng.random((30, 7)) < 0.3).astype(int)
    targets[:, 6] = 0  # a class without positives
    targets[0, 6] = 0
    ap = average_precision(scores, targets)
    for k in range(6):
        assert ap[k] == pytest.approx(average_precision_score(targets[:, k], scores[:, k]), abs=1e-12)
        assert roc_auc(scores, targets)[k] == pytest.approx(roc_auc_score(targets[:, k], scores[:, k]), abs=1e-12)
    assert np.isnan(ap[6])
    summary = multilabel_metrics(scores, targets)
    assert summary["classes_without_positives"] == 1
    assert summary["mAP"] == pytest.approx(np.mean(ap[:6]))
    assert summary["mAP_sklearn"] == pytest.approx(np.sum(ap[:6]) / 7)  # scikit-learn >= 1.1 scores it 0


def test_constant_scores_give_the_positive_rate():
    targets = np.array([[1], [0], [0], [1]])
    assert average_precision(np.zeros((4, 1)), targets)[0] == pytest.approx(0.5)
    assert average_precision_score(targets[:, 0], np.zeros(4)) == pytest.approx(0.5)


def test_top_k_accuracy_and_epic_action():
    rng = np.random.default_rng(1)
    scores, labels = rng.random((50, 10)), rng.integers(0, 10, 50)
    for k in (1, 5):
        assert top_k_accuracy(scores, labels, k) == pytest.approx(top_k_accuracy_score(labels, scores, k=k))
    verbs, nouns = np.array([0, 1, 2]), np.array([2, 0, 1])
    verb_scores, noun_scores = np.eye(3)[[0, 1, 0]] * 5, np.eye(3)[[2, 0, 1]] * 5
    metrics = epic_metrics(verb_scores, noun_scores, verbs, nouns)
    assert metrics["verb_top1"] == pytest.approx(2 / 3) and metrics["noun_top1"] == 1.0
    assert metrics["action_top1"] == pytest.approx(2 / 3)  # an action is right only when both are


def test_retrieval_recall_on_a_known_case():
    torch.manual_seed(0)
    video = torch.randn(20, 8)
    assert recall_metrics(ranks_of_true_pairs(video.clone(), video)) == {"R@1": 1.0, "R@5": 1.0, "R@10": 1.0, "MR": 1.0}
    # Query i's true partner is beaten by exactly i candidates: candidate j scores higher when j < i.
    angles = torch.linspace(0, 1.5, 12)
    candidates = torch.stack([angles.cos(), angles.sin()], 1)
    queries = torch.tensor([[1.0, 0.0]]).repeat(12, 1)
    ranks = ranks_of_true_pairs(queries, candidates)
    assert ranks.tolist() == list(range(12))
    assert recall_metrics(ranks) == {"R@1": 1 / 12, "R@5": 5 / 12, "R@10": 10 / 12, "MR": 6.5}


def test_retrieval_ties_do_not_favour_the_true_pair_and_non_finite_embeddings_are_refused():
    collapsed = torch.ones(10, 8)  # a collapsed model: every clip embeds the same
    ranks = ranks_of_true_pairs(collapsed, collapsed)
    assert ranks.tolist() == list(range(10))  # a stable sort's order: as good as chance, not perfect
    assert recall_metrics(ranks)["R@1"] == pytest.approx(0.1)
    assert ranks_of_true_pairs(torch.zeros(4, 3), torch.zeros(4, 3)).tolist() == [0, 1, 2, 3]  # all-zero rows too
    video = torch.randn(6, 8)
    audio = video.clone()
    audio[2, 5] = float("nan")
    with pytest.raises(ValueError, match=r"retrieval: 1 of 6 audio embeddings hold inf or NaN"):
        retrieval_metrics(audio, video)
    with pytest.raises(ValueError, match=r"retrieval: 6 of 6 video embeddings hold inf or NaN"):
        retrieval_metrics(video, torch.full((6, 8), float("inf")))


def test_patches_round_trip():
    audio, video = torch.randn(2, 64, 32), torch.randn(2, 4, 3, 32, 48)
    assert torch.equal(unpatchify_audio(patchify_audio(audio, 16), (4, 2), 16), audio)
    assert torch.equal(unpatchify_video(patchify_video(video, 16, 2), (2, 2, 3), 16, 2), video)


@pytest.fixture(scope="module")
def runs(shards, tmp_path_factory):  # noqa: F811
    """A tiny pretraining run and a fine-tuning run from it (single process each)."""
    root = tmp_path_factory.mktemp("evalruns")
    pretrain, finetune = root / "pretrain", root / "finetune"
    pretrain.mkdir()
    finetune.mkdir()
    torchrun(run_config(pretrain, shards), processes=1)
    torchrun(run_config(finetune, shards, task="finetune", data={"eval_split": "val"},
                        init={"kind": "avmae", "path": str(pretrain / "run")}, finetune={"loss": "ce"},
                        optim={"steps": 6, "lr": 2e-3, "warmup_steps": 1}, checkpoint={"every": 6, "keep": 1}),
             processes=1)
    return pretrain / "run", finetune / "run"


def _eval(*args: str) -> dict:
    assert eval_main([*args, "--workers", "0", "--json", "--batch-size", "4"]) == 0
    out = Path(args[args.index("--out") + 1])
    return json.loads((out / "report.json").read_text())


def test_eval_of_a_fine_tuned_checkpoint(runs, shards, tmp_path):  # noqa: F811
    _, finetuned = runs
    report = _eval("--ckpt", str(finetuned), "--data", str(shards), "--split", "train", "--task", "vggsound",
                   "--out", str(tmp_path / "one"))
    assert report["metrics"]["samples"] == 9 and report["metrics"]["classes"] == 4
    assert 0 <= report["metrics"]["top1"] <= 1 and report["views"] == 1
    assert report["features"]["target_frames"] == 208 and len(report["label_set_hash"]) == 16
    saved = np.load(tmp_path / "one" / "predictions.npz")
    assert saved["scores"].shape == (9, 4) and np.allclose(saved["scores"].sum(1), 1.0)  # softmax probabilities
    assert (tmp_path / "one" / "confusions.png").exists()
    # recomputing from the saved predictions gives the same numbers
    result = subprocess.run([sys.executable, "-m", "avmae.cli.eval", "metrics", "--pred",
                             str(tmp_path / "one" / "predictions.npz"), "--task", "vggsound"],
                            capture_output=True, text=True, check=True)
    assert json.loads(result.stdout)["top1"] == report["metrics"]["top1"]


def test_multi_view_scores_are_the_mean_of_the_views(runs, shards, tmp_path):  # noqa: F811
    from avmae.data.loader import Loader
    from avmae.data.spec import load_spec
    from avmae.eval.predict import predict
    from avmae.eval.runner import _data_config, probabilities
    from avmae.export.load import load_model

    _, finetuned = runs
    two = _eval("--ckpt", str(finetuned), "--data", str(shards), "--split", "train", "--task", "vggsound",
                "--views", "2", "--out", str(tmp_path / "two"))
    assert two["views"] == 2 and two["view_aggregation"] == "mean of softmax"
    loaded = load_model(finetuned)
    spec = load_spec(shards, "train")
    per_view = []
    for view in range(2):  # views 0 and 1 read different frames of the 8 stored: 00,02,04,06 and 01,03,05,07
        config = _data_config(loaded, str(shards), "train", 4, 0, "torch", view, 2)
        predictions, skipped = predict(loaded.model, Loader(spec, config, train=False), loaded.heads, "single")
        assert skipped == [] and len(predictions) == 9
        per_view.append(predictions.scores["label"])  # logits
    assert not np.allclose(per_view[0], per_view[1])
    combined = np.load(tmp_path / "two" / "predictions.npz")["scores"]
    mean_of_softmax = (probabilities(per_view[0], "single") + probabilities(per_view[1], "single")) / 2
    assert np.allclose(combined, mean_of_softmax, atol=1e-6)
    logits = _eval("--ckpt", str(finetuned), "--data", str(shards), "--split", "train", "--task", "vggsound",
                   "--views", "2", "--view-average", "logits", "--out", str(tmp_path / "logits"))
    assert logits["view_aggregation"] == "softmax of mean logits"  # Scenic's MBT testing
    combined = np.load(tmp_path / "logits" / "predictions.npz")["scores"]
    assert np.allclose(combined, probabilities((per_view[0] + per_view[1]) / 2, "single"), atol=1e-6)


@pytest.mark.parametrize("label_mode", ["single", "multi"])
def test_views_average_as_probabilities_or_as_logits(label_mode):
    from avmae.eval.predictions import Predictions
    from avmae.eval.runner import _average_views, probabilities

    logits = [np.array([[4.0, 0.0, -2.0], [0.0, 1.0, 0.0]]), np.array([[-3.0, 2.0, 1.0], [0.0, 1.0, 5.0]])]
    targets = np.array([0, 2]) if label_mode == "single" else np.array([[1, 0, 0], [0, 0, 1]])
    views = [Predictions(["a", "b"], {"label": view}, {"label": targets}, label_mode) for view in logits]
    by_probability = _average_views(views, "probabilities").scores["label"]
    by_logit = _average_views(views, "logits").scores["label"]
    assert np.allclose(by_probability, (probabilities(logits[0], label_mode) + probabilities(logits[1], label_mode)) / 2)
    assert np.allclose(by_logit, probabilities((logits[0] + logits[1]) / 2, label_mode))
    assert np.abs(by_probability - by_logit).max() > 0.05


@pytest.mark.slow
def test_distributed_eval_equals_single_process(runs, shards, tmp_path):  # noqa: F811
    _, finetuned = runs
    single = _eval("--ckpt", str(finetuned), "--data", str(shards), "--split", "train", "--task", "vggsound",
                   "--out", str(tmp_path / "single"))
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}", "-m",
               "avmae.cli.eval", "--ckpt", str(finetuned), "--data", str(shards), "--split", "train", "--task",
               "vggsound", "--out", str(tmp_path / "double"), "--workers", "0", "--batch-size", "4", "--json"]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    double = json.loads((tmp_path / "double" / "report.json").read_text())
    assert double["world_size"] == 2
    assert double["metrics"] == single["metrics"]
    a, b = np.load(tmp_path / "single" / "predictions.npz"), np.load(tmp_path / "double" / "predictions.npz")
    assert a["keys"].tolist() == b["keys"].tolist()  # every sample once, in the same order
    assert np.allclose(a["scores"], b["scores"], atol=1e-5)


def test_eval_from_http_and_s3_shards_reports_what_the_local_folder_gives(runs, shards, tmp_path, monkeypatch):  # noqa: F811
    """avmae-eval end to end on remote roots (where the shards live must not change a number): the same metrics,
    predictions in the same order, and the same clip set, whether the shards are a folder, served over HTTP or in an
    S3 bucket."""
    import fsspec

    from tests.servers import apply_env, http_server, s3_server

    _, finetuned = runs
    args = ("--ckpt", str(finetuned), "--split", "train", "--task", "vggsound")
    local = _eval(*args, "--data", str(shards), "--out", str(tmp_path / "local"))
    with http_server(shards.parent) as url:
        over_http = _eval(*args, "--data", f"{url}/{shards.name}", "--out", str(tmp_path / "http"))
    with s3_server() as env:
        apply_env(env, monkeypatch)
        fs = fsspec.filesystem("s3", skip_instance_cache=True)
        fs.mkdir("evalbucket")
        fs.put(f"{shards}/", f"evalbucket/{shards.name}/", recursive=True)
        over_s3 = _eval(*args, "--data", f"s3://evalbucket/{shards.name}", "--out", str(tmp_path / "s3"))
    reference = np.load(tmp_path / "local" / "predictions.npz")
    for name, report in (("http", over_http), ("s3", over_s3)):
        assert report["metrics"] == local["metrics"], name
        assert report["clip_set"]["sha256"] == local["clip_set"]["sha256"], name
        remote = np.load(tmp_path / name / "predictions.npz")
        assert remote["keys"].tolist() == reference["keys"].tolist(), name
        assert np.array_equal(remote["scores"], reference["scores"]), name


def test_retrieval_probe_and_reconstruction_of_a_pretraining_checkpoint(runs, shards, tmp_path):  # noqa: F811
    pretrained, _ = runs
    report = _eval("--ckpt", str(pretrained), "--data", str(shards), "--split", "train", "--task", "retrieval",
                   "--out", str(tmp_path / "retrieval"))
    metrics = report["metrics"]
    assert metrics["samples"] == 9 and metrics["chance"]["R@1"] == pytest.approx(1 / 9)
    for direction in ("audio_to_video", "video_to_audio"):
        assert 0 <= metrics[direction]["R@1"] <= metrics[direction]["R@5"] <= metrics[direction]["R@10"] == 1.0
    probe = _eval("--ckpt", str(pretrained), "--data", str(shards), "--split", "val", "--task", "vggsound",
                  "--linear-probe", "--out", str(tmp_path / "probe"))
    assert probe["metrics"]["train_samples"] == 9 and probe["metrics"]["samples"] == 3
    assert eval_main(["reconstruct", "--ckpt", str(pretrained), "--data", str(shards), "--split", "val", "--num", "2",
                      "--out", str(tmp_path / "figures")]) == 0
    figures = sorted((tmp_path / "figures").glob("*.png"))
    assert len(figures) == 2
    from PIL import Image

    assert Image.open(figures[0]).size[0] > 600


def test_task_and_label_mismatches_are_refused(runs, shards, tmp_path):  # noqa: F811
    pretrained, finetuned = runs
    assert eval_main(["--ckpt", str(finetuned), "--data", str(shards), "--split", "train", "--task", "audioset",
                      "--out", str(tmp_path / "x")]) == 2  # single-label data, multi-label task
    assert eval_main(["--ckpt", str(pretrained), "--data", str(shards), "--split", "train", "--task", "vggsound",
                      "--out", str(tmp_path / "y")]) == 2  # a pretraining checkpoint has no heads


def test_exports_hold_the_log_mel_normalisation_they_trained_with(runs, shards, tmp_path):  # noqa: F811
    """The recipes leave data.audio_mean/std to the training build's manifest; an export writes them in, so that
    evaluating it on another build (an eval-only split with statistics of its own) normalises as training did."""
    from avmae.config import load
    from avmae.export.format import read_export
    from avmae.recipe.config import RunConfig
    from avmae.shard.writing.manifest import read_manifest

    manifest = read_manifest(shards)
    for run in runs:
        assert load(RunConfig, run / "config.yaml").data.audio_mean is None  # what the run was given
        data = read_export(run)[1].config.data
        assert (data.audio_mean, data.audio_std) == (manifest["logmel_mean"], manifest["logmel_std"])
        assert load(RunConfig, run / "export" / "config.yaml").data.audio_mean == manifest["logmel_mean"]


def test_an_export_without_label_names_is_scored_with_the_order_unchecked_and_another_class_count_refused(
        runs, shards, tmp_path, capsys):  # noqa: F811
    """As a CAV-MAE checkpoint converted without --labels: the class count is all that can be checked."""
    import dataclasses

    from avmae.export.format import read_export, write_export
    from avmae.export.load import model_for

    _, finetuned = runs
    state, info, _ = read_export(finetuned)
    nameless = write_export(tmp_path / "nameless.safetensors", state, dataclasses.replace(info, label_names=[]))
    report = _eval("--ckpt", str(nameless), "--data", str(shards), "--split", "train", "--task", "vggsound",
                   "--out", str(tmp_path / "nameless"))
    assert report["label_order"] == "unchecked: the checkpoint holds no label names"
    assert report["metrics"]["samples"] == 9
    checked = _eval("--ckpt", str(finetuned), "--data", str(shards), "--split", "train", "--task", "vggsound",
                    "--out", str(tmp_path / "named"))
    assert checked["label_order"] == "checked" and checked["metrics"] == report["metrics"]
    three = model_for(info.config, "finetune", {"label": 3}).state_dict()
    other = write_export(tmp_path / "three.safetensors", three,
                         dataclasses.replace(info, label_names=[], heads={"label": 3}))
    capsys.readouterr()
    assert eval_main(["--ckpt", str(other), "--data", str(shards), "--split", "train", "--task", "vggsound",
                      "--workers", "0", "--out", str(tmp_path / "three")]) == 2
    error = capsys.readouterr().err.strip()
    assert "three.safetensors has the heads {'label': 3} (classes per head) but" in error
    assert "{'label': 4}: it was trained on another label set" in error


@pytest.fixture(scope="module")
def multilabel_shards(synth_corpus, tmp_path_factory) -> Path:
    """The synthetic corpus with a second label per clip (its class's parity), so data and models are multi-label."""
    root = tmp_path_factory.mktemp("multilabel")
    rows = synth_corpus.read_text().splitlines()
    listing = [rows[0]] + [f"{path},{label};{'even' if int(label[-2:]) % 2 == 0 else 'odd'}"
                           for path, label in (row.split(",") for row in rows[1:])]
    (synth_corpus.parent / "multilabel.csv").write_text("\n".join(listing) + "\n")
    return build_shards(synth_corpus.parent / "multilabel.csv", root / "shards", shard_size=3)


@pytest.mark.slow
def test_multilabel_finetune_and_audioset_eval_end_to_end(multilabel_shards, tmp_path):
    run = tmp_path / "ft"
    run.mkdir()
    result = torchrun(run_config(run, multilabel_shards, task="finetune", data={"eval_split": "val"},
                                 augment={"mixup": 0.5}, finetune={"loss": "auto", "eval_every": 3},
                                 optim={"steps": 6, "lr": 2e-3, "warmup_steps": 1},
                                 checkpoint={"every": 3, "keep": 1}))
    assert "mAP" in result["best"]["metrics"]  # BCE on multi-hot targets, best checkpoint by mAP
    report = _eval("--ckpt", str(run / "run"), "--weights", "best", "--data", str(multilabel_shards), "--split",
                   "train", "--task", "audioset", "--views", "2", "--out", str(tmp_path / "eval"))
    metrics = report["metrics"]
    assert metrics["classes"] == 6 and metrics["samples"] == 9 and report["view_aggregation"] == "mean of sigmoid"
    assert 0 <= metrics["mAP"] <= 1 and "empty_class_handling" in metrics
    per_class = (tmp_path / "eval" / "per_class_ap.csv").read_text().splitlines()
    assert per_class[0] == "index,label,positives,average_precision" and len(per_class) == 7
    saved = np.load(tmp_path / "eval" / "predictions.npz")
    recomputed = multilabel_metrics(saved["scores"], saved["targets"])
    assert recomputed["mAP"] == pytest.approx(metrics["mAP"])
    assert (tmp_path / "eval" / "per_class_ap.png").exists()


@pytest.fixture(scope="module")
def epic_shards(tmp_path_factory, clip_factory) -> Path:
    """Eight narrated actions in two synthetic kitchen videos, in the Epic-Kitchens-100 annotation format."""
    root = tmp_path_factory.mktemp("epic")
    for video in ("P01_01", "P01_02"):
        clip_factory(root / "EPIC" / "P01" / "videos" / f"{video}.MP4", seconds=9, size="96x72")
    header = ("narration_id,participant_id,video_id,narration_timestamp,start_timestamp,stop_timestamp,start_frame,"
              "stop_frame,narration,verb,verb_class,noun,noun_class,all_nouns,all_noun_classes\n")
    rows = []
    for number in range(8):
        video = "P01_01" if number < 4 else "P01_02"
        start = 2 * (number % 4)
        rows.append(f"{video}_{number},P01,{video},00:00:0{start}.00,00:00:0{start}.00,00:00:0{start + 2}.00,0,0,"
                    f"act {number},v,{number % 3},n,{number % 4},[],[]\n")
    (root / "EPIC_100_train.csv").write_text(header + "".join(rows))
    return build_shards(root / "EPIC_100_train.csv", root / "shards", "--src", str(root / "EPIC"), shard_size=4,
                        val_fraction=0)


@pytest.mark.slow
def test_epic_kitchens_finetune_and_eval_end_to_end(epic_shards, tmp_path):
    run = tmp_path / "ft"
    run.mkdir()
    result = torchrun(run_config(run, epic_shards, task="finetune", data={"eval_split": "train"},
                                 augment={"mixup": 0.3}, finetune={"loss": "ce", "label_smoothing": 0.1},
                                 optim={"steps": 4, "lr": 2e-3, "warmup_steps": 1},
                                 checkpoint={"every": 4, "keep": 1}))
    assert {"verb_top1", "noun_top1", "action_top1"} <= set(result["best"]["metrics"])
    from safetensors.torch import load_file

    weights = load_file(str(run / "run" / "export" / "model.safetensors"))
    assert weights["heads.verb.weight"].shape[0] == 97 and weights["heads.noun.weight"].shape[0] == 300
    report = _eval("--ckpt", str(run / "run"), "--data", str(epic_shards), "--split", "train", "--task", "epic",
                   "--out", str(tmp_path / "eval"))
    metrics = report["metrics"]
    assert metrics["samples"] == 8
    assert metrics["action_top1"] <= min(metrics["verb_top1"], metrics["noun_top1"])
    saved = np.load(tmp_path / "eval" / "predictions.npz")
    assert saved["scores_verb"].shape == (8, 97) and saved["scores_noun"].shape == (8, 300)
    assert sorted(saved["targets_noun"].tolist()) == sorted(n % 4 for n in range(8))
    recomputed = epic_metrics(saved["scores_verb"], saved["scores_noun"], saved["targets_verb"], saved["targets_noun"])
    assert recomputed["action_top1"] == pytest.approx(metrics["action_top1"])
