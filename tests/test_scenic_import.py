"""Importing Google's AV-MAE checkpoints (Scenic, Flax msgpack): the fixtures of tests/data/scenic_avmae were written
by Scenic's own code, with Scenic's outputs on fixed inputs and masks. Each is converted with ``avmae-convert
scenic``, built from its export as ``avmae-eval`` builds it, and compared with Scenic output by output, within bounds
fixed in advance: encoder tokens and MBT logits 1e-5, reconstructions 3e-5, losses 1e-5 relative, targets exactly."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch

from avmae.cli.convert import main as convert_main
from avmae.config import apply_overrides, from_dict
from avmae.export.format import read_export
from avmae.export.init import initialise
from avmae.export.load import load_model, model_for
from avmae.export.scenic import ScenicLayoutError, ScenicOptions, convert_scenic_params, read_label_file
from avmae.export.scenic_msgpack import ScenicCheckpointError, read_scenic_params
from avmae.recipe.config import ModelInitConfig, RunConfig
from avmae.train.losses import finetune_loss

FIXTURES = Path(__file__).resolve().parent / "data" / "scenic_avmae"
GEOMETRY = ["model.audio.frames=100", "model.video.frames=4", "model.video.size=64"]  # config.json geometry
MODALITIES = {"audio": "spectrogram", "video": "rgb"}  # avmae name -> Scenic name
TOKENS, RECONSTRUCTION, LOSS_RELATIVE = 1e-5, 3e-5, 1e-5


def _convert(out: Path, checkpoint: Path, *extra: str) -> dict:
    code = convert_main(["scenic", str(checkpoint), "--out", str(out), "--json",
                         *[a for o in GEOMETRY for a in ("--set", o)], *extra])
    assert code == 0
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def pretrain_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scenic") / "pretrain"
    _convert(out, FIXTURES / "pretrain" / "checkpoint")
    return out


@pytest.fixture(scope="module")
def mbt_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("scenic") / "mbt"
    _convert(out, FIXTURES / "mbt" / "checkpoint", "--fusion-layer", "2", "--label-mode", "multi")
    return out


@pytest.fixture(scope="module")
def inputs() -> dict:
    """Scenic's layouts to avmae's: video (B, T, H, W, 3) -> (B, T, 3, H, W); spectrogram (B, time, mel, 1) ->
    (B, time, mel); token masks (1 = masked) -> bool."""
    arrays = np.load(FIXTURES / "inputs.npz")
    return {"video": torch.from_numpy(arrays["video"]).permute(0, 1, 4, 2, 3).contiguous(),
            "audio": torch.from_numpy(arrays["spectrogram"])[..., 0],
            "labels": torch.from_numpy(arrays["labels"]).float(),
            "masks": {m: torch.from_numpy(arrays[f"token_mask_{s}"]).bool() for m, s in MODALITIES.items()},
            "unmasked": {m: arrays[f"unmasked_indices_{s}"] for m, s in MODALITIES.items()}}


def _close(ours: torch.Tensor, scenic: np.ndarray, bound: float, what: str) -> None:
    ours = ours.detach().numpy()
    assert ours.shape == scenic.shape, f"{what}: shape {ours.shape} vs Scenic {scenic.shape}"
    diff = float(np.abs(ours - scenic).max())
    assert diff <= bound, f"{what}: max abs diff {diff:.2e} > {bound:.0e}"


def _relative(ours: torch.Tensor, scenic: np.ndarray, what: str) -> None:
    ours_value, scenic_value = float(ours), float(scenic)
    bound = LOSS_RELATIVE * abs(scenic_value)
    assert abs(ours_value - scenic_value) <= bound, f"{what}: {ours_value} vs Scenic {scenic_value}"


def _sorted_rows(rows: np.ndarray, unmasked: np.ndarray) -> np.ndarray:
    """Scenic's rows follow its random unmasked_indices; avmae keeps visible tokens in token order."""
    return np.take_along_axis(rows, np.argsort(unmasked, axis=1)[..., None], axis=1)


# --- the reader ---------------------------------------------------------------------------------------------------

def test_both_trainstate_layouts_give_only_the_params():
    pretrain = read_scenic_params(FIXTURES / "pretrain" / "checkpoint")
    mbt = read_scenic_params(FIXTURES / "mbt" / "checkpoint")
    assert (pretrain.layout, len(pretrain.params)) == ("optimizer/target", 150)
    assert (mbt.layout, len(mbt.params)) == ("params", 137)
    assert pretrain.ignored == ["accum_train_time", "global_step", "model_state", "optimizer/state", "rng"]
    assert mbt.ignored == ["global_step", "metadata", "model_state", "opt_state", "rng"]
    # the optimiser states mirror the parameter names: none of their leaves may come through
    for read in (pretrain, mbt):
        assert not any(part in key for key in read.params for part in ("grad_ema", "grad_sq_ema", "trace", "count"))
    assert pretrain.params["embedding_rgb/kernel"].shape == (2, 16, 16, 3, 32)
    assert mbt.params["Transformer/encoderblock_3_spec/MultiHeadDotProductAttention_0/out/kernel"].shape == (4, 8, 32)


def _ext(array: np.ndarray, code: int = 1) -> msgpack.ExtType:
    """Flax's encoding of an array (code 1) or a numpy scalar (code 3)."""
    payload = msgpack.packb([list(array.shape), array.dtype.name, np.ascontiguousarray(array).tobytes()])
    return msgpack.ExtType(code, payload)


def test_pre_linen_tree_chunked_arrays_scalars_and_complex(tmp_path):
    big = np.arange(10, dtype=np.float32).reshape(2, 5)
    chunks = big.reshape(-1)
    chunked = {"__msgpack_chunked_array__": True, "shape": {"0": 2, "1": 5},
               "chunks": {"0": _ext(chunks[:4]), "1": _ext(chunks[4:8]), "2": _ext(chunks[8:])}}
    tree = {"optimizer": {"target": {"params": {"Dense_0": {"kernel": chunked}, "LayerNorm_1": {"scale": _ext(big[0])},
                                                "Dense_2": {"kernel": _ext(big[1])}, "empty": {}}},
                          "state": {"step": _ext(np.array(3, dtype=np.int32), 3)}},
            "rng": msgpack.ExtType(2, msgpack.packb([1.0, -2.0])), "global_step": 7}
    path = tmp_path / "checkpoint"
    path.write_bytes(msgpack.packb(tree))
    read = read_scenic_params(path)
    assert read.pre_linen and read.layout == "optimizer/target"
    # flax convert_pre_linen numbers each class on its own: Dense_0, Dense_2 -> Dense_0, Dense_1; LayerNorm_1 -> _0
    assert sorted(read.params) == ["Dense_0/kernel", "Dense_1/kernel", "LayerNorm_0/scale"]
    np.testing.assert_array_equal(read.params["Dense_0/kernel"], big)
    np.testing.assert_array_equal(read.params["Dense_1/kernel"], big[1])


@pytest.mark.parametrize("damage", ["truncated", "not_msgpack", "torch_zip", "directory", "no_params"])
def test_damaged_or_foreign_files_are_refused_in_one_line(tmp_path, capsys, damage):
    path = tmp_path / "checkpoint"
    data = (FIXTURES / "mbt" / "checkpoint").read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "not_msgpack":
        path.write_text("model:\n  encoder: large\n")
    elif damage == "torch_zip":
        torch.save({"w": torch.zeros(2)}, path)
    elif damage == "directory":
        path.mkdir()
        (path / "_METADATA").write_text("{}")
    else:
        path.write_bytes(msgpack.packb({"global_step": 1, "opt_state": {"count": 1}}))
    with pytest.raises(ScenicCheckpointError, match=str(path)):
        read_scenic_params(path)
    assert convert_main(["scenic", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err
    expected = {"truncated": "truncated", "not_msgpack": "not a Flax msgpack", "torch_zip": "not a Flax msgpack",
                "directory": "Orbax", "no_params": "no params found"}[damage]
    assert expected in err
    assert not (tmp_path / "out" / "export").exists()


# --- parity with Scenic: pretraining ------------------------------------------------------------------------------

def test_pretraining_matches_scenic(pretrain_dir, inputs):
    scenic = np.load(FIXTURES / "pretrain" / "outputs.npz")
    loaded = load_model(pretrain_dir)
    model, audio, video, masks = loaded.model, inputs["audio"], inputs["video"], inputs["masks"]
    assert loaded.task == "pretrain" and loaded.config.model.encoder.fusion == "mid"
    with torch.no_grad():
        out = model(audio, video, masks=masks)
        tokens, grids, _, _, kept = model.visible_tokens(audio, video, masks)
        fused, _ = model.encoder(kept)
        embedded = {"audio": model.tokenizer.audio_embed(audio.unsqueeze(1)),
                    "video": model.tokenizer.video_embed(video.transpose(1, 2))}
        targets = model.targets(audio, video)
        for m, s in MODALITIES.items():
            patch = embedded[m].flatten(2).transpose(1, 2)
            _close(patch, scenic[f"patch_embed_{s}"], TOKENS, f"patch embedding {s}")
            _close((tokens[m] - patch)[0], scenic[f"pos_encoder_{s}"], TOKENS, f"encoder positions {s}")
            _close(model.decoder.position(m, grids[m], patch)[0], scenic[f"pos_decoder_{s}"], TOKENS,
                   f"decoder positions {s}")
            alone = getattr(model.encoder, m)(kept[m])
            _close(alone, _sorted_rows(scenic[f"separate_encoder_{s}"], inputs["unmasked"][m]), TOKENS,
                   f"modality stack {s}")
            _close(fused[m], scenic[f"encoded_sorted_{s}"], TOKENS, f"encoder output {s}")
            _close(out[f"pred_{m}"], scenic[f"pred_{s}"], RECONSTRUCTION, f"reconstruction {s}")
            assert np.array_equal(targets[m].numpy(), scenic[f"target_{s}"]), f"targets {s}"
            _relative(out[f"loss_{m}"], scenic[f"loss_{s}"], f"loss {s}")
    _relative(out["loss"], scenic["loss"], "total loss")


def test_pretraining_export_describes_scenic(pretrain_dir):
    state, info, _ = read_export(pretrain_dir)
    model = info.config.model
    assert info.task == "pretrain"
    assert (model.encoder.dims(), model.encoder.joint_layers) == ((32, 4, 4, 128), 2)
    assert (model.decoder.kind, model.decoder.width, model.decoder.depth, model.decoder.heads) == ("shared", 16, 2, 2)
    assert (model.pos_embed.kind, model.gelu, model.encoder.drop_path_rescale, model.modality_embeddings) == \
        ("flat_1d", "tanh", False, False)
    assert (model.audio.patch, model.video.patch, model.video.tubelet) == (16, 16, 2)
    assert len(state) == 118 and all(v.dtype == torch.float32 for v in state.values())
    scenic = json.loads((pretrain_dir / "scenic_config.json").read_text())
    assert scenic["model"]["encoder_strategy"] == "separate_encoders_and_concat"
    assert scenic["model"]["patches"]["size"] == [16, 16, 2]
    assert (pretrain_dir / "run_config.yaml").exists()


# --- parity with Scenic: MBT --------------------------------------------------------------------------------------

def test_mbt_matches_scenic(mbt_dir, inputs):
    scenic = np.load(FIXTURES / "mbt" / "outputs.npz")
    loaded = load_model(mbt_dir)
    model, audio, video = loaded.model, inputs["audio"], inputs["video"]
    assert loaded.heads == {"label": 5} and loaded.label_mode == "multi"
    assert loaded.config.finetune.bottleneck.shared_norm  # Scenic's one encoder_norm over both modalities
    with torch.no_grad():
        logits = model(audio, video)["label"]
        per_modality = model(audio, video, per_modality=True)  # evaluation mode: stochastic depth off, as Scenic's
        encoded = model._encode(model._inputs(audio, video))
    _close(logits, scenic["logits_eval"], TOKENS, "MBT evaluation logits")
    for m, s in MODALITIES.items():
        _close(per_modality[m]["label"], scenic[f"logits_train_{s}"], TOKENS, f"MBT logits {s}")
    _close(torch.cat([encoded["video"], encoded["audio"]], dim=1), scenic["encoded_eval"], TOKENS, "MBT encoder")
    labels = {"label": inputs["labels"]}
    train = torch.stack([finetune_loss(per_modality[m], labels, "bce_sum", 0.3) for m in MODALITIES]).mean()
    _relative(train, scenic["loss_train"], "MBT training loss")
    _relative(finetune_loss({"label": logits}, labels, "bce_sum", 0.3), scenic["loss_eval"], "MBT evaluation loss")


def test_pretrained_export_starts_mbt_as_scenic_does(pretrain_dir, mbt_dir):
    """Every MBT weight that Scenic's own initialisation copies from the pretraining checkpoint (transfer_map.json)
    is the same in avmae's classifier after it loads the pretrained export. Where Scenic keeps the init (bottleneck,
    head), so does avmae; Scenic's audio patch embedding also keeps its init (a name mismatch in its converter),
    avmae's default keeps the pretrained one."""
    transfer = json.loads((FIXTURES / "transfer_map.json").read_text())
    pretrain = read_scenic_params(FIXTURES / "pretrain" / "checkpoint").params
    mbt = read_scenic_params(FIXTURES / "mbt" / "checkpoint").params
    assert set(transfer) == set(mbt)
    kept_init = sorted(name for name, source in transfer.items() if source is None)
    assert kept_init == ["ProjectionHeadAndClassifier_0/output_projection/bias",
                         "ProjectionHeadAndClassifier_0/output_projection/kernel", "bottleneck",
                         "embedding_spectrogram/bias", "embedding_spectrogram/kernel"]
    # Scenic's result, in avmae's names: the MBT params with every transferred one replaced by its source
    scenic_start = {name: pretrain[source[0]] if source else mbt[name] for name, source in transfer.items()}
    expected = convert_scenic_params(scenic_start, ScenicOptions(fusion_layer=2, label_mode="multi")).state

    config = read_export(mbt_dir)[1].config
    torch.manual_seed(0)
    classifier = model_for(config, "finetune", {"label": 5})
    report = initialise(classifier, ModelInitConfig(kind="avmae", path=str(pretrain_dir)))  # what avmae-train does
    ours = classifier.state_dict()
    audio_embedding = {"tokenizer.audio_embed.weight", "tokenizer.audio_embed.bias"}
    not_transferred = {"bottleneck", "heads.label.weight", "heads.label.bias"}
    compared = sorted(set(expected) - audio_embedding - not_transferred)
    assert len(compared) == 100  # 2 x 4 blocks x 12 tensors, the shared norm, the video embedding
    for key in compared:
        assert torch.equal(ours[key], expected[key]), key
    pretrained = read_export(pretrain_dir)[0]
    for key in audio_embedding:
        assert torch.equal(ours[key], pretrained[key]), key
    assert not not_transferred & set(report["loaded"])


# --- other layouts and what a checkpoint does not record ---------------------------------------------------------

def _renamed(params: dict, rename) -> dict:
    out = {}
    for key, value in params.items():
        new = rename(key)
        if new is not None:
            out[new] = value
    return out


@pytest.mark.parametrize("variant", ["separate_encoders", "concat_and_encode", "same_encoder", "separate_decoders"])
def test_other_fusion_and_decoder_layouts_load_strictly(variant):
    """Scenic's other strategies, their names made from the fixture's tensors: each maps onto an avmae model of the
    strategy avmae calls it, every key and shape."""
    params = read_scenic_params(FIXTURES / "pretrain" / "checkpoint").params
    strategy = {}
    if variant == "separate_encoders":
        params = _renamed(params, lambda k: None if k.startswith("Transformer_concat/") else k)
        fusion, depth = "late", 2
    elif variant in ("concat_and_encode", "same_encoder"):
        params = _renamed(params, lambda k: k.replace("Transformer_rgb/", "Transformer/")
                          if not k.startswith(("Transformer_concat/", "Transformer_spectrogram/")) else None)
        fusion, depth = {"concat_and_encode": "early", "same_encoder": "shared"}[variant], 2
        with pytest.raises(ScenicLayoutError, match="concat_and_encode or same_encoder"):
            convert_scenic_params(params)
        strategy = {"encoder_strategy": variant}
    else:
        params = {**{k: v for k, v in params.items() if not k.startswith("Decoder/")},
                  **{k.replace("Decoder/", f"Decoder_{s}/"): v for k, v in params.items() if k.startswith("Decoder/")
                     for s in ("rgb", "spectrogram")}}
        fusion, depth = "mid", 4
    conversion = convert_scenic_params(params, ScenicOptions(**strategy))
    config = from_dict(RunConfig, apply_overrides(conversion.run, list(GEOMETRY)))
    assert (config.model.encoder.fusion, config.model.encoder.dims()[1]) == (fusion, depth)
    assert config.model.decoder.kind == ("separate" if variant == "separate_decoders" else "shared")
    model = model_for(config, "pretrain", {})
    assert model.load_state_dict(conversion.state, strict=True)


def test_inpainting_pretraining_takes_scenic_layout():
    """use_inpainting is not in the parameters: --inpainting says it, and the model computes Scenic's decoder input
    (the other modality's fused tokens first, then mask tokens; the loss on the mask-token slots)."""
    params = read_scenic_params(FIXTURES / "pretrain" / "checkpoint").params
    conversion = convert_scenic_params(params, ScenicOptions(inpainting=True))
    config = from_dict(RunConfig, apply_overrides(conversion.run, list(GEOMETRY)))
    assert (config.model.objective, config.model.inpainting_layout) == ("inpainting", "scenic")
    assert conversion.scenic_config["model"]["use_inpainting"]
    model = model_for(config, "pretrain", {}).eval()
    assert model.load_state_dict(conversion.state, strict=True)
    arrays = np.load(FIXTURES / "inputs.npz")
    masks = {m: torch.from_numpy(arrays[f"token_mask_{s}"]).bool() for m, s in MODALITIES.items()}
    with torch.no_grad():
        out = model(torch.from_numpy(arrays["spectrogram"])[..., 0],
                    torch.from_numpy(arrays["video"]).permute(0, 1, 4, 2, 3), masks=masks)
    assert out["pred_audio"].shape == (2, 48, 256) and out["pred_video"].shape == (2, 32, 1536)
    assert torch.isfinite(out["loss"])


def _pack(params: dict[str, np.ndarray]) -> bytes:
    """Params as Flax writes them: a map nested by module path, arrays as ExtType 1, in an optax TrainState."""
    tree: dict = {}
    for key, value in params.items():
        *path, leaf = key.split("/")
        node = tree
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = _ext(np.asarray(value))
    return msgpack.packb({"params": tree, "opt_state": {}, "global_step": 1})


def test_single_modality_mbt_takes_the_bare_stack_as_its_modality(tmp_path):
    """An audio-only fine-tune names its only stack encoderblock_i (no _spec suffix) and has no video embedding."""
    params = read_scenic_params(FIXTURES / "mbt" / "checkpoint").params
    def audio_name(key: str) -> str | None:
        if key.startswith("embedding/") or (key.startswith("Transformer/encoderblock_") and "_spec/" not in key):
            return None  # the video embedding and the video blocks
        return key.replace("_spec/", "/")

    audio_only = _renamed(params, audio_name)
    path = tmp_path / "checkpoint"
    path.write_bytes(_pack(audio_only))
    report = _convert(tmp_path / "out", path, "--label-mode", "multi")
    assert report["modalities"] == ["audio"] and report["fusion_layer"] == 4  # no bottleneck at any layer
    state, info, _ = read_export(tmp_path / "out")
    assert info.config.finetune.modality == "audio"
    source = params["Transformer/encoderblock_1_spec/MlpBlock_0/Dense_0/kernel"]
    assert torch.equal(state["encoder.audio.blocks.1.mlp.fc1.weight"], torch.from_numpy(source).T)
    video_keys = [k for k in state if k.startswith(("encoder.video.", "tokenizer.video_"))]
    assert report["kept_at_init"]["keys"] == len(video_keys) == 4 * 12 + 2


def test_fusion_layer_and_label_mode_defaults_follow_the_class_count(tmp_path, capsys):
    checkpoint = FIXTURES / "mbt" / "checkpoint"
    assert convert_main(["scenic", str(checkpoint), "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "--fusion-layer" in err and str(checkpoint) in err and err.count("\n") == 1
    params = dict(read_scenic_params(checkpoint).params)
    params[f"ProjectionHeadAndClassifier_0/output_projection/kernel"] = np.zeros((32, 527), np.float32)
    params[f"ProjectionHeadAndClassifier_0/output_projection/bias"] = np.zeros(527, np.float32)
    with pytest.raises(ScenicLayoutError, match="fusion layer 18 is outside 0..3"):  # AudioSet's 18 of 24
        convert_scenic_params(params)
    conversion = convert_scenic_params(params, ScenicOptions(fusion_layer=3))
    assert conversion.report["label_mode"] == "multi" and conversion.run["finetune"]["loss"] == "bce_sum"


def test_label_names_fill_the_export_in_index_order(tmp_path):
    labels = tmp_path / "class_labels_indices.csv"
    rows = [(3, "/m/d", "D"), (0, "/m/a", "A"), (4, "/m/e", "E, with comma"), (1, "/m/b", "B"), (2, "/m/c", "C")]
    labels.write_text("index,mid,display_name\n" + "".join(f'{i},{mid},"{name}"\n' for i, mid, name in rows))
    _convert(tmp_path / "out", FIXTURES / "mbt" / "checkpoint", "--fusion-layer", "2", "--label-mode", "multi",
             "--labels", str(labels))
    _, info, _ = read_export(tmp_path / "out")
    assert info.label_names == ["/m/a", "/m/b", "/m/c", "/m/d", "/m/e"]
    assert info.label_mode == "multi" and info.heads == {"label": 5}


def test_vggsound_label_names_are_the_sorted_class_names(tmp_path):
    """A single-label head takes the class names sorted (avmae's VGGSound shards number them so too)."""
    listing = tmp_path / "vggsound.csv"
    listing.write_text('a1,30,"people eating, noodle",train\nb2,10,dog barking,test\nc3,0,airplane,train\n'
                       'd4,5,dog barking,train\n')
    assert read_label_file(listing, single_label=True) == ["airplane", "dog barking", "people eating, noodle"]
    names = tmp_path / "names.txt"
    names.write_text("zebra\nant\n\nbee, honey\n")
    assert read_label_file(names, single_label=True) == ["ant", "bee, honey", "zebra"]
    assert read_label_file(names, single_label=False) == ["zebra", "ant", "bee, honey"]


def test_help_explains_the_scenic_import(capsys):
    with pytest.raises(SystemExit) as exit_info:
        convert_main(["scenic", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "Flax msgpack" in text and "--fusion-layer" in text and "class_labels_indices.csv" in text


def test_converted_mbt_runs_under_avmae_eval(shards, tmp_path, capsys):
    """The MBT export as a run folder for avmae-eval: the fixture's tensors with its head cut to the test shards'
    classes, at the shards' geometry (208 log-mel frames, 8 frames cropped to 64 px)."""
    from avmae.cli.eval import main as eval_main
    from avmae.data.spec import load_spec

    spec = load_spec(shards, "val")
    classes = spec.heads["label"]
    params = dict(read_scenic_params(FIXTURES / "mbt" / "checkpoint").params)
    head = "ProjectionHeadAndClassifier_0/output_projection"
    params[f"{head}/kernel"] = params[f"{head}/kernel"][:, :classes]
    params[f"{head}/bias"] = params[f"{head}/bias"][:classes]
    path = tmp_path / "checkpoint"
    path.write_bytes(_pack(params))
    mode = "multi" if spec.label_mode == "multi" else "single"
    geometry = ["model.audio.frames=208", "model.video.frames=8", "model.video.size=64", "data.crop_size=64",
                "data.eval_short_side=0", "model.audio.frontend=cavmae"]  # the test shards' front end
    out = tmp_path / "run"
    assert convert_main(["scenic", str(path), "--out", str(out), "--fusion-layer", "2", "--label-mode", mode,
                         *[a for o in geometry for a in ("--set", o)]]) == 0
    task = "audioset" if mode == "multi" else "vggsound"
    assert eval_main(["--ckpt", str(out), "--data", str(shards), "--split", "val", "--task", task, "--workers", "0",
                      "--batch-size", "2", "--out", str(tmp_path / "eval"), "--json"]) == 0
    result = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert result["metrics"]["samples"] == 3  # the val split of the 12-clip corpus (val_fraction 0.25)
    scenic_input = tmp_path / "scenic_input"  # as converted, the export expects Scenic's log-mels
    assert convert_main(["scenic", str(path), "--out", str(scenic_input), "--fusion-layer", "2", "--label-mode", mode,
                         *[a for o in geometry[:-1] for a in ("--set", o)]]) == 0
    assert eval_main(["--ckpt", str(scenic_input), "--data", str(shards), "--split", "val", "--task", task,
                      "--workers", "0", "--out", str(tmp_path / "refused")]) == 2
    assert "shards were built with audio_frontend='cavmae' but the run expects 'scenic'" in capsys.readouterr().err
    assert result["config"]["model"]["pos_embed"]["kind"] == "flat_1d"
