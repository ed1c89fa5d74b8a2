"""CAV-MAE parity: the independent CAV-MAE of tests/cavmae_reference.py (written from docs/reference/cavmae.md),
filled with random weights, saved as CAV-MAE saves it (``module.`` prefix), converted, loaded strictly into avmae's
cavmae_base models, and compared output by output: encoder tokens, predictions, losses, logits. "g1" in names below
is the checkpoint key table (docs/reference/cavmae.md#checkpoint-keys)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from avmae.config import load
from avmae.models.avmae import AVMAE, pooled_unimodal
from avmae.models.classifier import AVClassifier
from avmae.models.config import ModelConfig
from avmae.models.convert_cavmae import FINETUNED_KEYS, PRETRAINED_KEYS, cavmae_base, convert_cavmae
from avmae.models.counts import classifier_parameters, parameter_counts
from avmae.models.masking import gather_tokens, visible_indices
from avmae.models.tokenizers import patchify_audio, unpatchify_audio
from tests.cavmae_reference import CAVMAE, CAVMAEFT, patchify, randomise, saved_like_cavmae
from tests.tiny_models import tiny_cavmae

# --- shapes and counts (docs/reference/cavmae.md) ----------------------------------------------------------------


def g1_shapes(classes: int | None) -> dict[str, tuple[int, ...]]:
    """The key -> shape table of docs/reference/cavmae.md#checkpoint-keys, written out."""
    shapes = {"modality_a": (1, 1, 768), "modality_v": (1, 1, 768), "pos_embed_a": (1, 512, 768),
              "pos_embed_v": (1, 196, 768), "patch_embed_a.proj.weight": (768, 1, 16, 16),
              "patch_embed_a.proj.bias": (768,), "patch_embed_v.proj.weight": (768, 3, 16, 16),
              "patch_embed_v.proj.bias": (768,)}

    def block(prefix: str, d: int) -> None:
        for norm in ("norm1", "norm1_a", "norm1_v", "norm2", "norm2_a", "norm2_v"):
            shapes[f"{prefix}.{norm}.weight"] = shapes[f"{prefix}.{norm}.bias"] = (d,)
        shapes.update({f"{prefix}.attn.qkv.weight": (3 * d, d), f"{prefix}.attn.qkv.bias": (3 * d,),
                       f"{prefix}.attn.proj.weight": (d, d), f"{prefix}.attn.proj.bias": (d,),
                       f"{prefix}.mlp.fc1.weight": (4 * d, d), f"{prefix}.mlp.fc1.bias": (4 * d,),
                       f"{prefix}.mlp.fc2.weight": (d, 4 * d), f"{prefix}.mlp.fc2.bias": (d,)})

    for i in range(11):
        block(f"blocks_a.{i}", 768)
        block(f"blocks_v.{i}", 768)
    block("blocks_u.0", 768)
    for norm in ("norm_a", "norm_v", "norm"):
        shapes[f"{norm}.weight"] = shapes[f"{norm}.bias"] = (768,)
    if classes is None:
        shapes.update({"decoder_embed.weight": (512, 768), "decoder_embed.bias": (512,), "mask_token": (1, 1, 512),
                       "decoder_modality_a": (1, 1, 512), "decoder_modality_v": (1, 1, 512),
                       "decoder_pos_embed_a": (1, 512, 512), "decoder_pos_embed_v": (1, 196, 512),
                       "decoder_norm.weight": (512,), "decoder_norm.bias": (512,),
                       "decoder_pred_a.weight": (256, 512), "decoder_pred_a.bias": (256,),
                       "decoder_pred_v.weight": (768, 512), "decoder_pred_v.bias": (768,)})
        for i in range(8):
            block(f"decoder_blocks.{i}", 512)
    else:
        shapes.update({"mlp_head.0.weight": (768,), "mlp_head.0.bias": (768,), "mlp_head.1.weight": (classes, 768),
                       "mlp_head.1.bias": (classes,)})
    return shapes


def check_against_g1(state: dict[str, torch.Tensor], classes: int | None) -> None:
    shapes = {k.removeprefix("module."): tuple(v.shape) for k, v in state.items()}
    assert all(k.startswith("module.") for k in state)
    assert len(shapes) == (PRETRAINED_KEYS if classes is None else FINETUNED_KEYS)
    assert shapes == g1_shapes(classes)


# float32 throughout: the two implementations differ by ~1e-6 on outputs of magnitude ~5 (measured)
TOLERANCE = dict(atol=1e-5, rtol=1e-5)


# --- the tests -----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pretrained_pair():
    torch.manual_seed(0)
    reference = CAVMAE()
    randomise(reference, seed=1)
    state = saved_like_cavmae(reference)
    ours = AVMAE(cavmae_base())
    conversion = convert_cavmae(state, expected={k: v.shape for k, v in ours.state_dict().items()})
    ours.load_state_dict(conversion.state, strict=True)
    return reference, ours, state, conversion


def test_pretrained_checkpoint_has_the_g1_keys_and_counts(pretrained_pair):
    reference, ours, state, conversion = pretrained_pair
    check_against_g1(state, classes=None)
    total = sum(p.numel() for p in reference.parameters())
    trainable = sum(p.numel() for p in reference.parameters() if p.requires_grad)
    assert (total, trainable) == (191_036_160, 190_129_920)  # logs: "191.036 million" / "190.130 million"
    assert round(total / 1e6, 3) == 191.036
    # avmae holds the same weights less the never-used norms the converter drops, and counts.py knows it
    counts = parameter_counts(cavmae_base())
    built = sum(p.numel() for p in ours.parameters())
    assert built == counts["total"] == total - conversion.report["dropped_parameters"]
    assert counts["frozen"] == sum(p.numel() for p in ours.parameters() if not p.requires_grad) == 906_240
    assert counts["encoder_total"] == 164_500_224 - 22 * 4 * 1536  # encoder 164.500 M with them
    assert counts["decoder"] == 26_535_936 - 8 * 4 * 1024  # decoder 26.54 M with them


def test_conversion_report_names_every_dropped_key(pretrained_pair):
    _, _, state, conversion = pretrained_pair
    report = conversion.report
    assert report["source"] == "CAVMAE" and report["source_keys"] == 647
    dropped = set(report["dropped"])
    expected = {f"{stack}.{i}.{norm}.{p}" for stack, count in (("blocks_a", 11), ("blocks_v", 11), ("decoder_blocks", 8))
                for i in range(count) for norm in ("norm1_a", "norm1_v", "norm2_a", "norm2_v") for p in ("weight", "bias")}
    assert dropped == expected and len(dropped) == 240
    assert report["mapped"] + len(dropped) == 647  # every key is either loaded or dropped by name
    assert report["layers"] == {"modality_specific": 11, "joint": 1, "decoder": 8}
    assert not any(k.startswith("blocks_u") for k in dropped)  # the joint block's modality norms are used
    assert report["dropped_parameters"] == 22 * 4 * 1536 + 8 * 4 * 1024


def test_pretrained_model_outputs_equal_cavmae(pretrained_pair):
    reference, ours, _, _ = pretrained_pair
    reference.eval(), ours.eval()
    g = torch.Generator().manual_seed(2)
    audio, frame = torch.randn(3, 1024, 128, generator=g), torch.randn(3, 3, 224, 224, generator=g)
    noise_a, noise_v = torch.rand(3, 512, generator=g), torch.rand(3, 196, generator=g)
    with torch.no_grad():
        ref = reference(audio, frame, noise_a, noise_v)
        masks = {"audio": ref["mask_a"].bool(), "video": ref["mask_v"].bool()}
        out = ours(audio, frame.unsqueeze(1), masks=masks)
        # encoder tokens: the joint pass and the two single-modality passes (CAV-MAE keeps tokens in noise order,
        # avmae in position order: the same tokens, sorted)
        tokens = {"audio": ours.tokenizer.audio(audio)[0], "video": ours.tokenizer.video(frame.unsqueeze(1))[0]}
        kept = {m: gather_tokens(tokens[m], visible_indices(masks[m])) for m in tokens}
        fused, alone = ours.encoder(kept, unimodal=True)
    by_position = {m: ref[f"keep_{m[0]}"].argsort(dim=1) for m in ("audio", "video")}
    n_a = ref["keep_a"].shape[1]
    assert n_a == 128 and ref["keep_v"].shape[1] == 49  # 0.75 masking keeps 128 of 512 and 49 of 196
    joint = {"audio": ref["x"][:, :n_a], "video": ref["x"][:, n_a:]}
    single = {"audio": ref["ca"], "video": ref["cv"]}
    for m in ("audio", "video"):
        assert torch.allclose(fused[m], gather_tokens(joint[m], by_position[m]), **TOLERANCE)
        assert torch.allclose(alone[m], gather_tokens(single[m], by_position[m]), **TOLERANCE)
    assert torch.allclose(out["pred_audio"], ref["pred_a"], **TOLERANCE)
    assert torch.allclose(out["pred_video"], ref["pred_v"], **TOLERANCE)
    for ours_key, ref_key in (("loss_audio", "loss_a"), ("loss_video", "loss_v"), ("loss_contrastive", "nce"),
                              ("loss", "loss")):
        assert out[ours_key].item() == pytest.approx(ref[ref_key].item(), rel=1e-5, abs=1e-6), ours_key
    assert ref["nce"].item() > 0.1  # the contrastive term is really part of the comparison
    # avmae's own freq-major targets are CAV-MAE's patchify of the transposed log-mel
    assert torch.equal(ours.targets(audio, frame.unsqueeze(1))["audio"],
                       patchify(audio.unsqueeze(1).transpose(2, 3), 1, 8, 64))


def test_fresh_cavmae_base_has_cavmae_position_tables():
    torch.manual_seed(0)
    model = AVMAE(cavmae_base())
    reference = CAVMAE(decoder_depth=1, depth=2, specific=1)  # only its tables are compared
    pairs = [(model.tokenizer.position.audio, reference.pos_embed_a), (model.tokenizer.position.video, reference.pos_embed_v),
             (model.decoder.position.audio, reference.decoder_pos_embed_a),
             (model.decoder.position.video, reference.decoder_pos_embed_v)]
    for ours, theirs in pairs:
        assert ours.shape == theirs.shape and not ours.requires_grad
        assert torch.allclose(ours, theirs, atol=1e-6)


def finetuned_pair(classes: int):
    torch.manual_seed(0)
    reference = CAVMAEFT(classes=classes)
    randomise(reference, seed=3)
    state = saved_like_cavmae(reference)
    conversion = convert_cavmae(state)
    ours = AVClassifier(cavmae_base(finetune=True), conversion.heads)
    ours.load_state_dict(conversion.state, strict=True)
    return reference, ours, state, conversion


@pytest.mark.parametrize("classes", [527, 309])
def test_finetuned_checkpoint_has_the_g1_keys_and_counts(classes):
    reference, ours, state, conversion = finetuned_pair(classes)
    check_against_g1(state, classes=classes)
    total = sum(p.numel() for p in reference.parameters())
    assert round(total / 1e6, 3) == {527: 164.907, 309: 164.739}[classes]  # logs: "164.907"
    assert conversion.task == "finetune" and conversion.heads == {"label": classes}
    assert sum(p.numel() for p in ours.parameters()) == classifier_parameters(ours.config, conversion.heads) \
        == total - conversion.report["dropped_parameters"]
    assert len(conversion.report["dropped"]) == 22 * 8 and conversion.report["source_keys"] == 478
    assert all(p.requires_grad for p in ours.parameters())  # CAVMAEFT trains its position tables (tr_pos=True)


@pytest.mark.slow
def test_finetuned_model_logits_equal_cavmaeft():
    reference, ours, _, _ = finetuned_pair(527)
    reference.eval(), ours.eval()
    g = torch.Generator().manual_seed(4)
    audio, frame = torch.randn(1, 1024, 128, generator=g), torch.randn(1, 3, 224, 224, generator=g)
    with torch.no_grad():
        logits = {"multimodal": ours(audio, frame.unsqueeze(1))["label"], "audioonly": ours(audio=audio)["label"],
                  "videoonly": ours(video=frame.unsqueeze(1))["label"]}
        ours.alone_norms = "averaged"  # avmae-eval --alone-norms averaged
        logits.update(missingaudioonly=ours(audio=audio)["label"], missingvideoonly=ours(video=frame.unsqueeze(1))["label"])
        ours.alone_norms = "own"
        for mode, value in logits.items():
            assert torch.allclose(value, reference(audio, frame, mode), **TOLERANCE), mode
        # retrieval features are CAV-MAE's single-modality passes (its forward_feat), mean-pooled
        pooled = pooled_unimodal(ours.tokenizer, ours.encoder, audio, frame.unsqueeze(1))
        a, v = reference.specific(*reference.embed(audio, frame))
        assert torch.allclose(pooled["audio"], reference.joint(a, "a").mean(1), **TOLERANCE)
        assert torch.allclose(pooled["video"], reference.joint(v, "v").mean(1), **TOLERANCE)
    assert not torch.allclose(logits["audioonly"], logits["videoonly"], atol=1e-3)


def test_conversion_refuses_what_it_cannot_map():
    reference = CAVMAEFT(classes=5, depth=3, specific=2, width=64, heads=2, frames=64, mel=32, image=32)
    state = saved_like_cavmae(reference)
    with pytest.raises(ValueError, match="cannot hold a CAV-MAE checkpoint"):
        convert_cavmae(state, ModelConfig())  # the AV-MAE default: time-major, no modality norms, ...
    with pytest.raises(ValueError, match="unknown keys"):
        convert_cavmae({**state, "module.extra.weight": torch.zeros(1)}, tiny_cavmae(finetune=True))
    with pytest.raises(ValueError, match="not a CAV-MAE state dict"):
        convert_cavmae({"blocks.0.norm1.weight": torch.zeros(3)})
    ours = AVClassifier(tiny_cavmae(finetune=True), {"label": 5})
    expected = {k: v.shape for k, v in ours.state_dict().items()}
    with pytest.raises(ValueError, match="do not fit"):
        convert_cavmae(state, tiny_cavmae(finetune=True), expected={**expected, "heads.label.weight": (6, 64)})


def test_tiny_cavmae_shaped_model_matches_the_reference_with_gradients():
    """The same parity at test size, also for the gradients of the loss (what pretraining from a CAV-MAE checkpoint
    continues with)."""
    torch.manual_seed(0)
    reference = CAVMAE(decoder_width=32, decoder_depth=2, decoder_heads=2, width=64, depth=3, specific=2, heads=2,
                       frames=64, mel=32, image=32)
    randomise(reference, seed=5)
    ours = AVMAE(tiny_cavmae())
    ours.load_state_dict(convert_cavmae(saved_like_cavmae(reference), tiny_cavmae()).state, strict=True)
    g = torch.Generator().manual_seed(6)
    audio, frame = torch.randn(4, 64, 32, generator=g), torch.randn(4, 3, 32, 32, generator=g)
    noise_a, noise_v = torch.rand(4, 8, generator=g), torch.rand(4, 4, generator=g)
    ref = reference(audio, frame, noise_a, noise_v)
    out = ours(audio, frame.unsqueeze(1), masks={"audio": ref["mask_a"].bool(), "video": ref["mask_v"].bool()})
    assert out["loss"].item() == pytest.approx(ref["loss"].item(), rel=1e-5)
    ref["loss"].backward()
    out["loss"].backward()
    ours_grads = dict(ours.named_parameters())
    for theirs, mine in (("blocks_u.0.norm1_a.weight", "encoder.joint.blocks.0.modality_norm1.audio.weight"),
                         ("blocks_a.0.attn.qkv.weight", "encoder.audio.blocks.0.attn.qkv.weight"),
                         ("decoder_embed.weight", "decoder.embed.weight"), ("mask_token", "decoder.mask_token"),
                         ("patch_embed_a.proj.weight", "tokenizer.audio_embed.weight")):
        assert torch.allclose(ours_grads[mine].grad, dict(reference.named_parameters())[theirs].grad, atol=1e-6), mine
    assert ours.tokenizer.position.audio.grad is None  # frozen in pretraining (tr_pos=False)


def test_freq_major_tokens_round_trip_and_keep_their_positions():
    audio = torch.randn(2, 64, 32)
    patches = patchify_audio(audio, 16, "freq_major")
    assert torch.equal(unpatchify_audio(patches, (4, 2), 16, "freq_major"), audio)
    # token 1 is (mel 0, time 1) in frequency-major order; (time 1, mel 0) = token 2 in time-major order
    assert torch.equal(patches[:, 1], audio[:, 16:32, :16].transpose(1, 2).reshape(2, 256))
    assert torch.equal(patchify_audio(audio, 16)[:, 2].reshape(2, 16, 16), audio[:, 16:32, :16])
    # the same (time, mel) patch gets the same position embedding in both orders
    from avmae.models.tokenizers import sincos_positions

    time_major, freq_major = ModelConfig(), cavmae_base()
    a = sincos_positions("audio", (4, 2), 64, time_major)[0]
    b = sincos_positions("audio", (4, 2), 64, freq_major)[0]
    assert torch.equal(a.reshape(4, 2, 64).transpose(0, 1).reshape(8, 64), b)


def test_model_config_yaml_is_cavmae_base():
    configs = Path(__file__).resolve().parents[1] / "configs"
    assert load(ModelConfig, configs / "model" / "cavmae_base.yaml") == cavmae_base()


@pytest.mark.parametrize("change", [{}, {"fusion": "early"}, {"norm_before_joint": True}, {"shared_input": False},
                                    {"stored": False}])
def test_the_cavmae_options_are_counted_in_closed_form(change):
    config = tiny_cavmae()
    if "fusion" in change:
        config.encoder.fusion = change["fusion"]
    config.encoder.norm_before_joint = change.get("norm_before_joint", config.encoder.norm_before_joint)
    config.decoder.shared_input = change.get("shared_input", config.decoder.shared_input)
    config.pos_embed.stored = change.get("stored", config.pos_embed.stored)
    model = AVMAE(config.validate())
    counts = parameter_counts(config)
    assert sum(p.numel() for p in model.parameters()) == counts["total"]
    assert sum(p.numel() for p in model.tokenizer.parameters()) == counts["tokenizer"]
    assert sum(p.numel() for p in model.decoder.parameters()) == counts["decoder"]
    assert sum(p.numel() for p in model.parameters() if not p.requires_grad) == counts["frozen"]
    model(torch.randn(2, 64, 32), torch.randn(2, 1, 3, 32, 32))["loss"].backward()  # and every variant runs


def test_settings_that_cannot_work_are_refused():
    config = tiny_cavmae()
    config.encoder.fusion = "late"
    with pytest.raises(ValueError, match="modality_norms needs joint layers"):
        config.validate()
    config = tiny_cavmae()
    config.video.frames, config.video.tubelet = 4, 2
    with pytest.raises(ValueError, match="column_row has no time axis"):
        config.validate()
    other_grids = tiny_cavmae()
    other_grids.other_grids = True  # asked for on purpose, still refused: a stored table has one grid
    with pytest.raises(ValueError, match="stores audio position embeddings for a \\(4, 2\\) token grid"):
        AVMAE(other_grids)(torch.randn(2, 96, 32), torch.randn(2, 1, 3, 32, 32))


def test_cavmae_step_schedule_halves_at_each_milestone():
    from avmae.recipe.config import OptimConfig
    from avmae.train.optim import learning_rate

    optim = OptimConfig(lr=1e-4, schedule="step", milestones=(10, 15, 20), gamma=0.5, steps=25)
    assert [learning_rate(s, optim) for s in (0, 9, 10, 14, 15, 20, 24)] == [1e-4, 1e-4, 5e-5, 5e-5, 2.5e-5, 1.25e-5, 1.25e-5]
