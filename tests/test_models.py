"""The AV-MAE model family: shapes, masks, objectives, losses, counts, the fine-tuning model."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from avmae.models.avmae import AVMAE
from avmae.models.classifier import AVClassifier
from avmae.models.config import AudioInput, EncoderConfig, ModelConfig, VideoInput
from avmae.models.counts import parameter_counts, pretraining_flops, visible_counts
from avmae.models.losses import info_nce, masked_mse
from avmae.models.masking import audio_structured_mask, masked_count, random_mask, tube_mask, visible_indices
from tests.tiny_models import inputs, tiny


def randomise_heads(model: AVMAE) -> None:
    """AV-MAE zero-initialises the output heads, which blocks every gradient upstream at step 0."""
    for head in model.decoder.head.values():
        nn.init.normal_(head.weight, std=0.02)


COMBINATIONS = [(f, d, o, am, vm) for f, d, o, am, vm in itertools.product(
    ["early", "mid", "late", "shared"], ["separate", "shared", "joint"], ["reconstruction", "inpainting"],
    ["random", "time", "freq", "time_freq"], ["random", "tube"]) if not (o == "inpainting" and d == "joint")]


@pytest.mark.parametrize("fusion,decoder,objective,audio_mode,video_mode", COMBINATIONS)
def test_shapes_of_every_combination(fusion, decoder, objective, audio_mode, video_mode):
    config = tiny(fusion, decoder, objective, audio_mode, video_mode, contrastive=0.1)
    model = AVMAE(config)
    out = model(*inputs())
    assert out["pred_audio"].shape == (2, 4 * 2, 256)  # 64x32 log-mel in 16x16 patches
    assert out["pred_video"].shape == (2, 2 * 2 * 2, 2 * 16 * 16 * 3)  # 4 frames x 32 px in 2x16x16 tubelets
    visible = visible_counts(config)
    assert int((~out["mask_audio"]).sum(1).unique()) == visible["audio"]
    assert int((~out["mask_video"]).sum(1).unique()) == visible["video"]
    for key in ("loss", "loss_audio", "loss_video", "loss_contrastive"):
        assert out[key].dim() == 0 and torch.isfinite(out[key])


def test_invalid_combinations_are_refused():
    with pytest.raises(ValueError, match="inpainting cannot use a joint decoder"):
        AVMAE(tiny(decoder="joint", objective="inpainting"))
    with pytest.raises(ValueError, match="joint_layers"):
        AVMAE(ModelConfig(encoder=EncoderConfig(size="tiny", fusion="mid", joint_layers=12)))


def test_exact_masked_counts():
    assert masked_count(512, 0.7) == 358 and masked_count(1568, 0.9) == 1411  # AV-MAE: int(ratio * N)
    assert random_mask(3, 512, 0.7).sum(1).tolist() == [358] * 3
    assert tube_mask(3, (8, 14, 14), 0.9).sum(1).tolist() == [8 * 176] * 3
    assert audio_structured_mask(2, (64, 8), 0.5, "time").sum(1).tolist() == [32 * 8] * 2
    assert audio_structured_mask(2, (64, 8), 0.5, "freq").sum(1).tolist() == [4 * 64] * 2
    columns, rows = masked_count(64, 0.35), masked_count(8, 0.35)
    assert audio_structured_mask(2, (64, 8), 0.5, "time_freq").sum(1).tolist() == [columns * 8 + rows * 64 - columns * rows] * 2


def test_structured_masks_have_their_structure():
    grid = torch.Generator().manual_seed(1)
    tube = tube_mask(2, (4, 3, 5), 0.6, grid).reshape(2, 4, 15)
    assert torch.equal(tube, tube[:, :1].expand_as(tube))  # identical at every time step
    time_mask = audio_structured_mask(2, (6, 4), 0.5, "time", grid).reshape(2, 6, 4)
    assert torch.equal(time_mask, time_mask[:, :, :1].expand_as(time_mask))  # whole time columns
    freq_mask = audio_structured_mask(2, (6, 4), 0.5, "freq", grid).reshape(2, 6, 4)
    assert torch.equal(freq_mask, freq_mask[:, :1, :].expand_as(freq_mask))  # whole mel rows
    mask = random_mask(2, 10, 0.5, grid)
    indices = visible_indices(mask)
    assert torch.equal(torch.gather(mask, 1, indices), torch.zeros_like(indices, dtype=torch.bool))
    assert torch.equal(indices, indices.sort(dim=1).values)  # original order kept


def test_loss_ignores_targets_of_visible_tokens():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 10, 8, generator=g), torch.randn(2, 10, 8, generator=g)
    mask = random_mask(2, 10, 0.6, g)
    changed = target.clone()
    changed[~mask] = 1000.0
    for norm_pix in (False, True):
        assert torch.equal(masked_mse(pred, target, mask, norm_pix), masked_mse(pred, changed, mask, norm_pix))
    manual = ((pred - target) ** 2).mean(-1)[mask].mean()
    assert torch.allclose(masked_mse(pred, target, mask, False), manual)


def test_model_loss_uses_masked_tokens_only():
    model = AVMAE(tiny())
    randomise_heads(model)
    audio, video = inputs()
    out = model(audio, video, generator=torch.Generator().manual_seed(3))
    targets = model.targets(audio, video)
    expected = masked_mse(out["pred_audio"], targets["audio"], out["mask_audio"], False)
    assert torch.allclose(out["loss_audio"], expected)
    expected_total = 0.5 * out["loss_audio"] + 0.5 * out["loss_video"]
    assert torch.allclose(out["loss"], expected_total)


@pytest.mark.parametrize("fusion", ["early", "mid", "late", "shared"])
def test_inpainting_decoder_sees_nothing_of_its_own_modality(fusion):
    torch.manual_seed(0)
    model = AVMAE(tiny(fusion=fusion, decoder="separate", objective="inpainting")).eval()
    randomise_heads(model)
    audio, video = inputs()
    masks = model.make_masks(2, {"audio": (4, 2), "video": (2, 2, 2)}, torch.Generator().manual_seed(5))
    base = model(audio, video, masks=masks)
    other_audio = model(audio * -3 + 1, video, masks=masks)
    other_video = model(audio, video * 2 - 1, masks=masks)
    assert torch.allclose(base["pred_audio"], other_audio["pred_audio"], atol=1e-6)  # audio reconstructed from video
    assert torch.allclose(base["pred_video"], other_video["pred_video"], atol=1e-6)
    assert not torch.allclose(base["pred_audio"], other_video["pred_audio"])  # ...which does matter
    assert bool(base["mask_audio"].any())
    # the whole modality is the target: the loss covers every token
    targets = model.targets(audio, video)
    assert torch.allclose(base["loss_audio"], ((base["pred_audio"] - targets["audio"]) ** 2).mean())


@pytest.mark.parametrize("fusion,decoder,objective", [("early", "joint", "reconstruction"), ("mid", "shared", "reconstruction"),
                                                      ("late", "separate", "inpainting"), ("shared", "shared", "inpainting")])
def test_every_trainable_parameter_gets_a_gradient(fusion, decoder, objective):
    torch.manual_seed(0)
    model = AVMAE(tiny(fusion=fusion, decoder=decoder, objective=objective, contrastive=0.1))
    randomise_heads(model)
    model(*inputs())["loss"].backward()
    starved = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert starved == []


def test_contrastive_loss_equals_a_direct_computation():
    g = torch.Generator().manual_seed(0)
    audio, video = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    tau = 0.07
    a = audio / audio.norm(dim=1, keepdim=True)
    v = video / video.norm(dim=1, keepdim=True)
    v2a = a2v = 0.0
    for i in range(5):
        logits_v = [float(v[i] @ a[j]) / tau for j in range(5)]
        logits_a = [float(a[i] @ v[j]) / tau for j in range(5)]
        v2a += -(logits_v[i] - torch.logsumexp(torch.tensor(logits_v), 0)) / 5
        a2v += -(logits_a[i] - torch.logsumexp(torch.tensor(logits_a), 0)) / 5
    assert info_nce(audio, video, tau, bidirectional=False) == pytest.approx(float(v2a), rel=1e-5)
    assert info_nce(audio, video, tau, bidirectional=True) == pytest.approx(float(v2a + a2v) / 2, rel=1e-5)


@pytest.mark.parametrize("config", [tiny(), tiny("early", "joint"), tiny("late", "separate"), tiny("shared"),
                                    tiny(modality_embeddings=False)])
def test_parameter_counts_equal_the_closed_form(config):
    model = AVMAE(config)
    assert sum(p.numel() for p in model.parameters()) == parameter_counts(config)["total"]
    assert sum(p.numel() for p in model.tokenizer.parameters()) == parameter_counts(config)["tokenizer"]
    assert sum(p.numel() for p in model.decoder.parameters()) == parameter_counts(config)["decoder"]


def test_vit_large_audioset_model_has_596_million_parameters():
    config = ModelConfig()  # the AV-MAE AudioSet recipe
    with torch.device("meta"):
        model = AVMAE(config)
    total = sum(p.numel() for p in model.parameters())
    assert total == parameter_counts(config)["total"] == 595_853_056
    assert parameter_counts(config)["encoder_total"] == 581_271_552  # AV-MAE ViT-L: encoders + embeddings ~581 M


@pytest.mark.parametrize("config", [tiny("mid", "joint"), tiny("early", "separate", "inpainting"),
                                    tiny("mid", "shared", "inpainting", inpainting_layout="scenic"),
                                    tiny("late", "shared", audio_mode="time_freq", video_mode="tube", contrastive=0.1)])
def test_flop_count_equals_torch_flop_counter(config):
    model = AVMAE(config)
    with FlopCounterMode(display=False) as counter:
        model(*inputs(batch=1))
    # On CPU torch counts no FLOPs inside scaled_dot_product_attention; neither does this form of the count.
    assert counter.get_total_flops() == pretraining_flops(config, attention_scores=False)["forward"]


def test_same_seed_same_outputs():
    outs = []
    for _ in range(2):
        torch.manual_seed(42)
        model = AVMAE(tiny(contrastive=0.1))
        outs.append(model(*inputs(), generator=torch.Generator().manual_seed(7)))
    for key in ("loss", "pred_audio", "pred_video", "mask_audio", "mask_video"):
        assert torch.equal(outs[0][key], outs[1][key])


def test_other_clip_lengths_need_no_retraining_when_asked_for():
    longer = inputs(frames=96, video_frames=8, size=48)  # longer audio, more and larger frames
    out = AVMAE(tiny(other_grids=True))(*longer)
    assert out["pred_audio"].shape == (2, 6 * 2, 256) and out["pred_video"].shape == (2, 4 * 3 * 3, 1536)


@pytest.mark.parametrize("frames, video_frames, size, message", [
    (96, 4, 32, "model.audio is 64 frames x 32 mel bins but the input is 96 frames x 32 mel bins"),
    (64, 8, 32, "model.video is 4 frames at 32x32 px but the input is 8 frames at 32x32 px"),
    (64, 4, 48, "model.video is 4 frames at 32x32 px but the input is 4 frames at 48x48 px")])
def test_a_model_refuses_another_grid_than_its_config(frames, video_frames, size, message):
    """A loader set for other clips than the model config would otherwise train another model than it names."""
    audio, video = inputs(frames=frames, video_frames=video_frames, size=size)
    for model in (AVMAE(tiny()), AVClassifier(tiny(), {"label": 3})):
        with pytest.raises(ValueError, match=f"^{message}.*model.other_grids"):
            model(audio, video)


def test_activation_checkpointing_gives_the_same_loss_and_gradients():
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = AVMAE(tiny(activation_checkpointing=checkpointing, contrastive=0.1))
        randomise_heads(model)
        out = model(*inputs(), generator=torch.Generator().manual_seed(1))
        out["loss"].backward()
        results.append((out["loss"].detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.allclose(results[0][0], results[1][0])
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(results[0][1], results[1][1]))


def test_bf16_autocast_runs_and_stays_close():
    torch.manual_seed(0)
    model = AVMAE(tiny(contrastive=0.1))
    randomise_heads(model)
    audio, video = inputs()
    reference = model(audio, video, generator=torch.Generator().manual_seed(1))["loss"].detach()
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        low = model(audio, video, generator=torch.Generator().manual_seed(1))
    assert low["loss"].dtype == torch.float32  # losses are computed in float32
    assert low["loss"].item() == pytest.approx(reference.item(), rel=0.05)


def test_classifier_loads_a_pretraining_checkpoint_and_matches_its_encoder():
    config = tiny(fusion="mid", contrastive=0.1)
    torch.manual_seed(0)
    pretrained = AVMAE(config).eval()
    state = {f"module.{k}": v for k, v in pretrained.state_dict().items()}  # as saved by a wrapped model
    classifier = AVClassifier(config, {"verb": 5, "noun": 7}).eval()
    report = classifier.load_pretrained(state)
    assert report["missing"] == [] and report["unexpected"] == []
    assert any(k.startswith("encoder.joint.") for k in report["loaded"])  # mid-fusion joint layers included
    assert report["skipped"] and all(k.startswith("decoder.") for k in report["skipped"])
    audio, video = inputs()
    with torch.no_grad():
        tokens = {"audio": pretrained.tokenizer.audio(audio)[0], "video": pretrained.tokenizer.video(video)[0]}
        fused, _ = pretrained.encoder(tokens)
        pooled = (fused["audio"].mean(1) + fused["video"].mean(1)) / 2
        assert torch.allclose(classifier.features(audio, video), classifier.head_norm(pooled), atol=1e-5)
        logits = classifier(audio, video)
    assert logits["verb"].shape == (2, 5) and logits["noun"].shape == (2, 7)


def test_classifier_refuses_weights_of_another_shape():
    classifier = AVClassifier(tiny(), {"labels": 3})
    other = AVMAE(ModelConfig(encoder=EncoderConfig(size="custom", width=64, depth=3, heads=2, mlp=64,
                                                    fusion="mid", joint_layers=1),
                              audio=AudioInput(frames=64, mel_bins=32), video=VideoInput(frames=4, size=32)))
    with pytest.raises(ValueError, match="do not fit"):
        classifier.load_pretrained(other.state_dict())


def test_audio_visual_classifier_predicts_with_one_modality_missing():
    classifier = AVClassifier(tiny(), {"labels": 4}, modality="av", modality_dropout=0.5).eval()
    audio, video = inputs()
    both = classifier(audio, video)["labels"]
    audio_only = classifier(audio=audio)["labels"]
    video_only = classifier(video=video)["labels"]
    assert both.shape == audio_only.shape == video_only.shape == (2, 4)
    assert not torch.allclose(audio_only, video_only)
    with pytest.raises(ValueError, match="no usable input"):
        AVClassifier(tiny(), {"labels": 4}, modality="audio")(video=video)


def test_reconstructions_are_denormalised_with_the_models_own_variance():
    """norm_pix targets are (x - mean) / sqrt(var + 1e-6): a drawn reconstruction multiplies back by the same std."""
    from avmae.eval.reconstruct import _denormalise_predictions

    target = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(0))
    normalised = torch.randn(2, 3, 16, generator=torch.Generator().manual_seed(1))
    for unbiased, ddof in ((True, 1), (False, 0)):
        t = target.double().numpy()
        std = (t.var(axis=-1, ddof=ddof, keepdims=True) + 1e-6) ** 0.5
        expected = normalised.double().numpy() * std + t.mean(axis=-1, keepdims=True)
        got = _denormalise_predictions(normalised, target, norm_pix=True, unbiased=unbiased)
        assert torch.allclose(got.double(), torch.from_numpy(expected), atol=1e-5)
    assert torch.equal(_denormalise_predictions(normalised, target, norm_pix=False), normalised)
