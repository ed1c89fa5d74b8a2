"""CAV-MAE in the avmae commands: a converted fine-tuned checkpoint runs under avmae-eval, a converted pretrained one
starts a fine-tuning run, and a tiny cavmae-shaped model pretrains from an ImageNet-ViT-layout initialisation with
avmae-train (its frozen position tables included in the export)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from avmae.cli.convert import main as convert_main
from avmae.cli.eval import main as eval_main
from avmae.data.spec import DataSpec, load_spec
from avmae.export.load import LoadedModel, load_model
from tests.cavmae_reference import CAVMAE, CAVMAEFT, randomise, saved_like_cavmae
from tests.helpers import REPO, metrics
from tests.tiny_models import timm_vit

# The test shards: 208 log-mel frames (13 x 8 patches), frames stored at 72 px, cropped to 64.
TINY = ["model.encoder.size=custom", "model.encoder.width=64", "model.encoder.depth=3", "model.encoder.heads=2",
        "model.encoder.mlp=256", "model.audio.frames=208", "model.video.size=64", "data.crop_size=64",
        "data.eval_short_side=0"]
TINY_REFERENCE = dict(width=64, depth=3, specific=2, heads=2, frames=208, mel=128, image=64)


def _sets(items: list[str]) -> list[str]:
    """Each override as ``--set KEY=VALUE`` on a command line."""
    return sum((["--set", item] for item in items), [])


def _save_random_finetuned_cavmae(tmp_path: Path, classes: int) -> CAVMAEFT:
    """A tiny CAV-MAE fine-tuned model with random weights, saved as CAV-MAE saves it (cavmae_ft.pth)."""
    torch.manual_seed(0)
    reference = CAVMAEFT(classes=classes, **TINY_REFERENCE).eval()
    randomise(reference, seed=7)
    torch.save(saved_like_cavmae(reference), tmp_path / "cavmae_ft.pth")
    return reference


def _convert_with_label_names_and_mode(spec: DataSpec, tmp_path: Path) -> Path:
    """cavmae_ft.pth converted with the shards' label names and label mode on the command line; its report says
    what was mapped and dropped, and the export's metadata carries the same mapping."""
    labels = tmp_path / "labels.csv"
    labels.write_text("index,mid,display_name\n" + "".join(f'{i},{name},"{name}"\n' for i, name in enumerate(spec.label_names)))
    out = tmp_path / "converted" / "model.safetensors"
    mode = "multi" if spec.label_mode == "multi" else "single"
    assert convert_main(["cavmae", "--src", str(tmp_path / "cavmae_ft.pth"), "--out", str(out), "--labels", str(labels),
                         "--label-mode", mode, *_sets(TINY)]) == 0
    report = json.loads((tmp_path / "converted" / "model.report.json").read_text())
    assert report["source"] == "CAVMAEFT" and len(report["dropped"]) == 2 * 2 * 8  # 2 + 2 specific blocks x 8
    with safe_open(str(out), framework="pt") as handle:
        assert json.loads(handle.metadata()["conversion"])["mapped"] == report["mapped"]
    return out


def _tiny_audio_and_frame() -> tuple[torch.Tensor, torch.Tensor]:
    """Two spectrograms and two frames of the tiny geometry, from a generator of their own."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(2, 208, 128, generator=g), torch.randn(2, 3, 64, 64, generator=g)


def _assert_export_predicts_as_the_reference(out: Path, spec: DataSpec, reference: CAVMAEFT, audio: torch.Tensor,
                                             frame: torch.Tensor) -> None:
    """The export loaded as avmae-eval loads it gives the reference's logits in all three of CAV-MAE's modes."""
    loaded = load_model(out)  # what avmae-eval builds: strict, from the export's own metadata
    assert loaded.task == "finetune" and loaded.heads == {"label": spec.heads["label"]}
    assert loaded.label_names == list(spec.label_names)
    with torch.no_grad():
        for mode_name, kwargs in (("multimodal", dict(audio=audio, video=frame.unsqueeze(1))),
                                  ("audioonly", dict(audio=audio)), ("videoonly", dict(video=frame.unsqueeze(1)))):
            assert torch.allclose(loaded.model(**kwargs)["label"], reference(audio, frame, mode_name), atol=1e-5)


def _convert_through_a_recipe(tmp_path: Path) -> LoadedModel:
    """cavmae_ft.pth converted with a fine-tuning recipe (shrunk as above): its data settings and label mode travel
    with the export."""
    recipe = REPO / "configs" / "cavmae_finetune_vggsound.yaml"
    assert convert_main(["cavmae", "--src", str(tmp_path / "cavmae_ft.pth"), "--out", str(tmp_path / "recipe.safetensors"),
                         "--config", str(recipe), *_sets(TINY)]) == 0
    from_recipe = load_model(tmp_path / "recipe.safetensors")
    assert from_recipe.config.data.balanced_sampling and from_recipe.config.finetune.loss == "ce"
    assert from_recipe.label_mode == "single"  # from the recipe's loss, not from a class count
    return from_recipe


def _assert_refused_without_a_label_mode(tmp_path: Path, capsys) -> None:
    """Neither --label-mode nor a recipe that says it: refused in one line that names the flag, nothing written."""
    capsys.readouterr()
    assert convert_main(["cavmae", "--src", str(tmp_path / "cavmae_ft.pth"), "--out", str(tmp_path / "no.safetensors"),
                         *_sets(TINY)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--label-mode" in error[0] and not (tmp_path / "no.safetensors").exists()


def _evaluate_and_check_the_report(out: Path, shards: Path, spec: DataSpec, tmp_path: Path) -> None:
    """avmae-eval on the converted export: two views, CAV-MAE's token order, predictions written."""
    task = "audioset" if spec.label_mode == "multi" else "vggsound"
    report_dir = tmp_path / "eval"
    assert eval_main(["--ckpt", str(out), "--data", str(shards), "--split", "val", "--task", task, "--views", "2",
                      "--workers", "0", "--batch-size", "2", "--out", str(report_dir), "--json"]) == 0
    result = json.loads((report_dir / "report.json").read_text())
    assert result["views"] == 2 and result["metrics"]["samples"] > 0
    assert result["config"]["model"]["audio"]["token_order"] == "freq_major"
    assert (report_dir / "predictions.npz").exists()


def test_converted_finetuned_checkpoint_runs_under_avmae_eval(shards, tmp_path, capsys):  # noqa: F811
    spec = load_spec(shards, "val")
    reference = _save_random_finetuned_cavmae(tmp_path, spec.heads["label"])
    out = _convert_with_label_names_and_mode(spec, tmp_path)
    audio, frame = _tiny_audio_and_frame()
    _assert_export_predicts_as_the_reference(out, spec, reference, audio, frame)

    from_recipe = _convert_through_a_recipe(tmp_path)
    _assert_refused_without_a_label_mode(tmp_path, capsys)
    with torch.no_grad():
        assert torch.allclose(from_recipe.model(audio=audio)["label"], reference(audio, frame, "audioonly"), atol=1e-5)

    _evaluate_and_check_the_report(out, shards, spec, tmp_path)


def test_converted_pretrained_checkpoint_loads_and_starts_a_finetune(tmp_path):
    torch.manual_seed(0)
    reference = CAVMAE(decoder_width=32, decoder_depth=2, decoder_heads=2, **TINY_REFERENCE)
    randomise(reference, seed=8)
    torch.save(saved_like_cavmae(reference), tmp_path / "cavmae.pth")
    out = tmp_path / "pretrained.safetensors"
    overrides = TINY + ["model.decoder.width=32", "model.decoder.depth=2", "model.decoder.heads=2", "model.decoder.mlp=128"]
    assert convert_main(["cavmae", "--src", str(tmp_path / "cavmae.pth"), "--out", str(out),
                         *_sets(overrides)]) == 0
    loaded = load_model(out)
    assert loaded.task == "pretrain" and not loaded.model.tokenizer.position.audio.requires_grad
    from avmae.models.classifier import AVClassifier

    classifier = AVClassifier(loaded.config.model, {"label": 3})
    report = classifier.load_pretrained(dict(loaded.model.state_dict()))
    assert report["missing"] == [] and report["unexpected"] == []
    assert all(k.startswith("decoder.") for k in report["skipped"])
    # a wrong geometry is refused with the reason, not loaded half
    assert convert_main(["cavmae", "--src", str(tmp_path / "cavmae.pth"), "--out", str(tmp_path / "x.safetensors"),
                         *_sets(overrides + ["model.encoder.joint_layers=2"])]) == 2


def test_tiny_cavmae_pretrains_from_a_vit_initialisation(shards, tmp_path):  # noqa: F811
    vit = {k: v for k, v in timm_vit(decoder_depth=1).items()}
    vit["patch_embed.proj.weight"] = vit["patch_embed.proj.weight"] * 0.05
    torch.save({"model": vit}, tmp_path / "in1k_mae.pth")
    overrides = TINY + [
        "model.encoder.mlp=256", "model.decoder.width=32", "model.decoder.depth=1", "model.decoder.heads=2",
        "model.decoder.mlp=128", f"data.shards={shards}", "data.batch_size=4", "data.workers=0", "data.shuffle_buffer=4",
        "optim.steps=12", "optim.lr=1.0e-3", "optim.milestones=[8]", "checkpoint.every=6", "checkpoint.keep=1",
        "log.every=1", "log.progress=false", "init.kind=vit", f"init.path={tmp_path / 'in1k_mae.pth'}",
        f"workdir={tmp_path / 'run'}"]
    command = [sys.executable, "-m", "avmae.cli.train", "--config", str(REPO / "configs" / "cavmae_pretrain.yaml")]
    for item in overrides:
        command += ["--set", item]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "run"
    init = json.loads((run / "init_report.json").read_text())
    assert init["kind"] == "vit" and init["skipped"]["cls_token"].startswith("avmae has no CLS")
    assert init["loaded"]["encoder.joint.blocks.0.attn.qkv.weight"] == "blocks.2.attn.qkv.weight"
    steps = [m for m in metrics(run) if "loss" in m]
    losses = [m["loss"] for m in steps]
    assert len(losses) == 12 and all(math.isfinite(x) for x in losses)
    assert all("loss_contrastive" in m for m in steps)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # it learns
    assert [m["lr"] for m in steps][7:9] == [1e-3, 5e-4]  # CAV-MAE's step schedule, halved at the milestone
    exported = load_model(run)  # strict: the frozen position tables are in the export
    position = exported.model.tokenizer.position
    assert not position.audio.requires_grad and position.audio.shape == (1, 13 * 8, 64)
    from avmae.models.tokenizers import sincos_positions

    assert torch.allclose(position.audio, sincos_positions("audio", (13, 8), 64, exported.config.model))  # frozen


def test_model_init_takes_a_cavmae_or_avmae_checkpoint(tmp_path):
    from avmae.models.avmae import AVMAE
    from avmae.models.classifier import AVClassifier
    from avmae.recipe.config import ModelInitConfig
    from avmae.export.init import initialise
    from tests.tiny_models import tiny_cavmae

    torch.manual_seed(0)
    reference = CAVMAE(decoder_width=32, decoder_depth=2, decoder_heads=2, width=64, depth=3, specific=2, heads=2,
                       frames=64, mel=32, image=32)
    randomise(reference, seed=9)
    torch.save(saved_like_cavmae(reference), tmp_path / "cavmae.pth")
    pretraining = AVMAE(tiny_cavmae())
    report = initialise(pretraining, ModelInitConfig(kind="cavmae", path=str(tmp_path / "cavmae.pth")))
    assert report["conversion"]["source"] == "CAVMAE" and report["missing"] == [] and report["unexpected"] == []
    assert torch.equal(pretraining.decoder.mask_token, reference.mask_token)  # all of it, decoder included
    classifier_config = tiny_cavmae(finetune=True)
    classifier_config.decoder = type(classifier_config.decoder)()  # a fine-tuning recipe says nothing of a decoder
    classifier = AVClassifier(classifier_config, {"label": 3})
    report = initialise(classifier, ModelInitConfig(kind="cavmae", path=str(tmp_path / "cavmae.pth")))
    assert report["missing"] == [] and report["unexpected"] == [] and report["skipped"] == []
    dropped = report["conversion"]["dropped"]
    assert dropped["decoder_embed.weight"].startswith("the encoder alone") and dropped["mask_token"]
    assert report["conversion"]["mapped"] + len(dropped) == len(saved_like_cavmae(reference))
    assert torch.equal(classifier.encoder.joint.modality_norm["audio"].weight, reference.norm_a.weight)

    from avmae.export.format import ExportInfo, export_path, write_export
    from avmae.recipe.config import RunConfig

    write_export(export_path(tmp_path), pretraining.state_dict(), ExportInfo("pretrain", RunConfig(model=tiny_cavmae())))
    again = AVMAE(tiny_cavmae())
    initialise(again, ModelInitConfig(kind="avmae", path=str(tmp_path)))  # a run folder: export/model.safetensors
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), pretraining.state_dict().values()))
    fine_tuned = CAVMAEFT(classes=3, width=64, depth=3, specific=2, heads=2, frames=64, mel=32, image=32)
    torch.save(saved_like_cavmae(fine_tuned), tmp_path / "cavmae_ft.pth")
    with pytest.raises(ValueError, match="no decoder to pretrain with"):
        initialise(AVMAE(tiny_cavmae()), ModelInitConfig(kind="cavmae", path=str(tmp_path / "cavmae_ft.pth")))
