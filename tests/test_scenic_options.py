"""The model options that compute what Scenic's AV-MAE computes (google-research/scenic, scenic/projects/av_mae,
vivit, mbt), each against a reference written here from the formula, and the fixed 1-D tables against the tables
Scenic's own code wrote into tests/data/scenic_avmae."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from avmae.models.avmae import AVMAE
from avmae.models.bottleneck import BottleneckClassifier
from avmae.models.config import BottleneckConfig, DecoderConfig, EncoderConfig, PosEmbedConfig
from avmae.models.counts import token_counts
from avmae.models.encoder import FusionEncoder
from avmae.models.losses import masked_mse, normalise_patches
from avmae.models.masking import (audio_structured_mask, injected_visible_count, random_mask, tube_mask,
                                  visible_count)
from avmae.models.pos_embed import flat_1d_table
from avmae.models.tokenizers import patchify_audio, patchify_video
from avmae.models.vit import Block, Mlp, drop_path
from tests.tiny_models import late_scenic, scenic_like

FIXTURES = Path(__file__).parent / "data" / "scenic_avmae"


def reference_1d_table(tokens: int, width: int) -> np.ndarray:
    """The formula, channel by channel, in float64."""
    table = np.zeros((tokens, width))
    for n in range(tokens):
        for i in range(width // 2):
            w = math.exp(-(2 * i) * math.log(10000) / width)
            table[n, 2 * i], table[n, 2 * i + 1] = math.sin(n * w), math.cos(n * w)
    return table


def test_flat_1d_table_is_the_formula_interleaved():
    for tokens, width in ((48, 32), (7, 16), (496, 64)):
        ours = flat_1d_table(tokens, width)
        assert ours.shape == (1, tokens, width) and ours.dtype == torch.float32
        np.testing.assert_allclose(ours[0].numpy(), reference_1d_table(tokens, width), rtol=0, atol=1e-7)
    assert flat_1d_table(3, 4)[0, 1].tolist() == pytest.approx([math.sin(1), math.cos(1), math.sin(0.01),
                                                                 math.cos(0.01)], abs=1e-7)
    with pytest.raises(ValueError, match="even width"):
        flat_1d_table(4, 5)


def test_flat_1d_tables_match_the_ones_scenic_wrote():
    pretrain = np.load(FIXTURES / "pretrain" / "outputs.npz")
    mbt = np.load(FIXTURES / "mbt" / "outputs.npz")
    config = scenic_like()
    for scenic_name, ours in (("rgb", "video"), ("spectrogram", "audio")):
        tokens = token_counts(config)[ours]
        assert pretrain[f"pos_encoder_{scenic_name}"].shape == (tokens, 32)
        for table, width in ((pretrain[f"pos_encoder_{scenic_name}"], 32), (pretrain[f"pos_decoder_{scenic_name}"], 16),
                             (mbt[f"pos_{scenic_name}"].reshape(tokens, 32), 32)):
            assert np.abs(flat_1d_table(tokens, width)[0].numpy() - table).max() <= 1e-7


def test_tokenizer_adds_the_flat_table_of_each_modality_from_zero():
    model = AVMAE(scenic_like()).eval()
    audio, video = torch.randn(2, 100, 128), torch.randn(2, 4, 3, 64, 64)
    tokens, grid = model.tokenizer.audio(audio)
    conv = model.tokenizer.audio_embed(audio.unsqueeze(1)).flatten(2).transpose(1, 2)
    assert grid == (6, 8) and tokens.shape == (2, 48, 32)
    torch.testing.assert_close(tokens - conv, flat_1d_table(48, 32).expand(2, -1, -1), rtol=0, atol=1e-6)
    tokens, grid = model.tokenizer.video(video)
    conv = model.tokenizer.video_embed(video.transpose(1, 2)).flatten(2).transpose(1, 2)
    assert grid == (2, 4, 4)
    torch.testing.assert_close(tokens - conv, flat_1d_table(32, 32).expand(2, -1, -1), rtol=0, atol=1e-6)


def test_flat_1d_refuses_an_odd_width_and_grid_only_options():
    with pytest.raises(ValueError, match="even widths"):
        scenic_like(decoder_width=15, decoder=DecoderConfig(width=15, heads=1, depth=1, mlp=8)).validate()
    with pytest.raises(ValueError, match="video_axes"):
        scenic_like(pos_embed=PosEmbedConfig(kind="flat_1d", video_axes="column_row")).validate()


def test_tanh_gelu_is_the_tanh_formula_and_exact_is_erf():
    torch.manual_seed(0)
    mlp = Mlp(8, 32, gelu="tanh")
    x = torch.randn(5, 8) * 3
    h = mlp.fc1(x)
    tanh = 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
    torch.testing.assert_close(mlp(x), mlp.fc2(tanh), rtol=0, atol=1e-6)
    exact = Mlp(8, 32)
    exact.load_state_dict(mlp.state_dict())
    erf = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    torch.testing.assert_close(exact(x), exact.fc2(erf), rtol=0, atol=1e-6)
    assert (exact(x) - mlp(x)).abs().max() > 1e-5  # the two are different functions
    encoder = FusionEncoder(scenic_like())
    assert {b.mlp.approximate for s in (encoder.audio, encoder.video, encoder.joint) for b in s.blocks} == {"tanh"}
    assert {b.mlp.approximate for b in AVMAE(scenic_like()).decoder.blocks.blocks} == {"tanh"}


def test_drop_path_without_rescale_keeps_or_zeroes_and_averages_one_minus_p():
    torch.manual_seed(0)
    x = torch.ones(40000, 3, 2)
    out = drop_path(x, 0.3, training=True, rescale=False)
    assert set(out.unique().tolist()) == {0.0, 1.0}
    assert (out == out[:, :1, :1]).all()  # one draw per clip
    assert out.mean().item() == pytest.approx(0.7, abs=0.01)
    assert torch.equal(drop_path(x, 0.3, training=False, rescale=False), x)
    rescaled = drop_path(x, 0.3, training=True)
    assert rescaled.unique().tolist() == [0.0, pytest.approx(1 / 0.7)]


def test_attention_and_mlp_branches_drop_independently():
    torch.manual_seed(0)
    block = Block(8, 2, 16, drop_path_rate=0.5, drop_path_rescale=False).train()
    x = torch.randn(4000, 3, 8)
    with torch.no_grad():
        out = block(x)
        a = block.attn(block.norm1(x))
        combos = {}
        for keep_a in (0, 1):
            y = x + keep_a * a
            for keep_m in (0, 1):
                combos[keep_a, keep_m] = y + keep_m * block.mlp(block.norm2(y))
    which = torch.full((4000,), -1)
    for index, candidate in enumerate(combos.values()):
        which[((out - candidate).abs().amax(dim=(1, 2)) < 1e-5)] = index
    assert (which >= 0).all()
    shares = torch.bincount(which, minlength=4) / 4000
    assert torch.allclose(shares, torch.full((4,), 0.25), atol=0.03)  # 4 combinations equally likely at p = 0.5


def test_stochastic_depth_rates_and_rescale_reach_every_encoder_block():
    config = scenic_like(depth=5)
    config.encoder.drop_path = 0.3
    encoder = FusionEncoder(config)
    blocks = list(encoder.audio.blocks) + list(encoder.joint.blocks)
    assert [b.drop_path_rate for b in blocks] == pytest.approx([0.3 * i / 4 for i in range(5)])
    assert not any(b.drop_path_rescale for b in blocks)


def test_biased_patch_variance_is_the_population_variance_with_eps_inside_the_root():
    torch.manual_seed(0)
    target = torch.randn(2, 5, 16) * 2 + 1
    t = target.numpy().astype(np.float64)
    expected = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(normalise_patches(target, variance="biased").numpy(), expected, atol=1e-5)
    unbiased = (t - t.mean(-1, keepdims=True)) / np.sqrt(t.var(-1, ddof=1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(normalise_patches(target).numpy(), unbiased, atol=1e-5)
    pred, mask = torch.zeros_like(target), torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 0, 1]], dtype=torch.bool)
    loss = masked_mse(pred, target, mask, norm_pix=True, variance="biased")
    assert loss.item() == pytest.approx(float((expected ** 2).mean(-1)[mask.numpy()].mean()), rel=1e-5)


def init_stats_model() -> AVMAE:
    torch.manual_seed(0)
    config = scenic_like(width=512, depth=2, decoder_width=256, frames=32,
                         encoder=EncoderConfig(size="custom", width=512, depth=2, heads=8, mlp=2048, fusion="mid",
                                               joint_layers=1),
                         decoder=DecoderConfig(width=256, depth=1, heads=4, mlp=1024))
    return AVMAE(config)


def test_scenic_init_has_the_stated_distributions():
    model = init_stats_model()
    width = 512
    for conv, fan_in in ((model.tokenizer.audio_embed, 16 * 16), (model.tokenizer.video_embed, 2 * 16 * 16 * 3)):
        w = conv.weight
        assert w.std().item() == pytest.approx(1 / math.sqrt(fan_in), rel=0.02)  # LeCun normal
        # truncated at 2 standard deviations of the underlying normal (flax's truncated_normal)
        assert w.abs().max().item() <= 2 / math.sqrt(fan_in) / 0.87962566103423978 + 1e-6
        assert not conv.bias.any()
    block = model.encoder.audio.blocks[0]
    bound = math.sqrt(6 / (2 * width))  # xavier-uniform of one (width, width) projection
    for part in block.attn.qkv.weight.chunk(3):
        assert part.abs().max().item() <= bound and part.abs().max().item() > 0.98 * bound
        assert part.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    for bias in (block.mlp.fc1.bias, block.mlp.fc2.bias):
        assert bias.std().item() == pytest.approx(1e-6, rel=0.15) and bias.abs().max().item() < 1e-5
    fc1_bound = math.sqrt(6 / (width + 2048))
    assert block.mlp.fc1.weight.abs().max().item() == pytest.approx(fc1_bound, rel=0.02)
    assert not block.attn.qkv.bias.any() and not block.attn.proj.bias.any()
    for token in model.decoder.mask_token.values():
        assert not token.any()  # vivit_multimodal.py: mask_token_<m> initialised to zeros
    for head in model.decoder.head.values():
        assert not head.weight.any() and not head.bias.any()
    embed = model.decoder.embed["audio"].weight
    assert embed.abs().max().item() == pytest.approx(math.sqrt(6 / (512 + 256)), rel=0.02)


def test_mae_init_is_unchanged_by_default():
    torch.manual_seed(0)
    model = AVMAE(scenic_like(init="mae", width=64, decoder_width=32))
    qkv = model.encoder.audio.blocks[0].attn.qkv.weight
    assert qkv.abs().max().item() <= math.sqrt(6 / (64 + 192))  # the fused (3D, D) matrix
    assert not model.encoder.audio.blocks[0].mlp.fc1.bias.any()


def test_1000_frames_give_62_by_8_tokens_and_frames_992_on_change_nothing():
    config = scenic_like(frames=1000, depth=2, width=16, decoder_width=8,
                         encoder=EncoderConfig(size="custom", width=16, depth=2, heads=2, mlp=32, fusion="mid",
                                               joint_layers=1, drop_path_rescale=False),
                         decoder=DecoderConfig(width=8, depth=1, heads=2, mlp=16)).validate()
    assert token_counts(config)["audio"] == 496
    torch.manual_seed(0)
    model = AVMAE(config).eval()
    for head in model.decoder.head.values():
        torch.nn.init.normal_(head.weight, std=0.1)
    audio, video = torch.randn(2, 1000, 128), torch.randn(2, 4, 3, 64, 64)
    assert model.tokenizer.audio(audio)[1] == (62, 8)
    masks = model.make_masks(2, {"audio": (62, 8), "video": (2, 4, 4)}, torch.Generator().manual_seed(1))
    out = model(audio, video, masks=masks)
    changed = audio.clone()
    changed[:, 992:] = torch.randn(2, 8, 128) * 100
    again = model(changed, video, masks=masks)
    assert out["pred_audio"].shape == (2, 496, 256)
    for key in ("loss", "loss_audio", "loss_video", "pred_audio", "pred_video"):
        assert torch.equal(out[key], again[key]), key
    assert torch.equal(model.targets(audio, video)["audio"], model.targets(changed, video)["audio"])
    changed[:, 991] += 1  # the last frame that is used does change them
    assert not torch.equal(model(changed, video, masks=masks)["loss_audio"], out["loss_audio"])


def test_scenic_inpainting_layout_is_the_hand_built_sequence():
    config = scenic_like(objective="inpainting", inpainting_layout="scenic")
    torch.manual_seed(0)
    model = AVMAE(config).eval()
    for head in model.decoder.head.values():
        torch.nn.init.normal_(head.weight, std=0.1)
    for token in model.decoder.mask_token.values():
        torch.nn.init.normal_(token, std=0.5)
    audio, video = torch.randn(2, 100, 128), torch.randn(2, 4, 3, 64, 64)
    g = torch.Generator().manual_seed(3)
    visible = {"audio": torch.stack([torch.randperm(48, generator=g)[:15] for _ in range(2)]),
               "video": torch.stack([torch.randperm(32, generator=g)[:4] for _ in range(2)])}
    out = model(audio, video, visible=visible)
    with torch.no_grad():
        tokens = {"audio": model.tokenizer.audio(audio)[0], "video": model.tokenizer.video(video)[0]}
        kept = {m: torch.stack([tokens[m][b, visible[m][b]] for b in range(2)]) for m in tokens}
        fused = model.encoder(kept)[0]
        targets = {"audio": patchify_audio(audio, 16), "video": patchify_video(video, 16, 2)}
        for m, other, n_tokens in (("audio", "video", 48), ("video", "audio", 32)):
            context = fused[other] @ model.decoder.embed[other].weight.T + model.decoder.embed[other].bias
            n = context.shape[1]
            sequence = torch.cat([context, model.decoder.mask_token[m].expand(2, n_tokens - n, -1)], dim=1)
            sequence = sequence + torch.from_numpy(reference_1d_table(n_tokens, 16)).float()
            pred = model.decoder.head[m](model.decoder.blocks(sequence))
            torch.testing.assert_close(out[f"pred_{m}"], pred, rtol=0, atol=1e-5)
            slot_mask = torch.arange(n_tokens) >= n
            assert torch.equal(out[f"loss_mask_{m}"], slot_mask.expand(2, -1))
            loss = ((pred - targets[m]) ** 2).mean(-1)[:, slot_mask].mean()
            assert out[f"loss_{m}"].item() == pytest.approx(loss.item(), rel=1e-5)
        assert out["mask_audio"].sum().item() == 2 * 33 and not out["mask_audio"].gather(1, visible["audio"]).any()


def test_scenic_inpainting_feeds_visible_tokens_in_a_random_order():
    model = AVMAE(scenic_like(objective="inpainting", inpainting_layout="scenic"))
    grids = {"audio": (6, 8), "video": (2, 4, 4)}
    _, _, masks, visible, _ = model.visible_tokens(torch.randn(4, 100, 128), torch.randn(4, 4, 3, 64, 64),
                                                   generator=torch.Generator().manual_seed(0))
    assert visible["audio"].shape == (4, 15) and visible["video"].shape == (4, 4)
    assert any(not torch.equal(row, row.sort().values) for row in visible["audio"])
    for m in grids:  # the same tokens as the mask's visible ones
        for b in range(4):
            assert set(visible[m][b].tolist()) == set((~masks[m][b]).nonzero().flatten().tolist())


@pytest.mark.parametrize("mode,grid", [("random", (6, 8)), ("time", (6, 8)), ("freq", (6, 8)), ("time_freq", (7, 8)),
                                       ("tube", (2, 4, 4)), ("random", (2, 4, 4))])
def test_visible_count_from_the_grid_is_what_the_masks_keep(mode, grid):
    g = torch.Generator().manual_seed(0)
    ratio = 0.7
    if mode == "tube":
        mask = tube_mask(5, grid, ratio, g)
    elif mode == "random":
        mask = random_mask(5, math.prod(grid), ratio, g)
    else:
        mask = audio_structured_mask(5, grid, ratio, mode, g)
    assert ((~mask).sum(1) == visible_count(grid, ratio, mode)).all()


def test_an_injected_mask_with_uneven_counts_is_refused_by_name():
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, :3] = True
    with pytest.raises(ValueError, match="the audio mask keeps a different number"):
        injected_visible_count(mask, 5, "audio")
    mask[1, 4:7] = True
    assert injected_visible_count(mask, 99, "audio") == 5  # a CPU mask is read: its own count


def test_mbt_shared_norm_equals_one_norm_over_the_concatenation():
    torch.manual_seed(0)
    shared = BottleneckClassifier(late_scenic(), {"label": 5}, bottleneck=BottleneckConfig(4, 2, shared_norm=True))
    for head in shared.heads.values():
        torch.nn.init.normal_(head.weight, std=0.1)
    torch.nn.init.normal_(shared.encoder_norm.weight)
    torch.nn.init.normal_(shared.encoder_norm.bias)
    assert "encoder.audio.norm.weight" not in shared.state_dict() and "encoder_norm.weight" in shared.state_dict()
    shared.eval()
    audio, video = torch.randn(2, 100, 128), torch.randn(2, 4, 3, 64, 64)
    tokens = shared._inputs(audio, video)
    # Scenic: one encoder_norm over [rgb ; spectrogram], then each modality's mean token
    per = shared._encode(tokens)
    stacks = {m: getattr(shared.encoder, m) for m in tokens}
    with torch.no_grad():
        unnormed = {m: x for m, x in tokens.items()}
        bottleneck = shared.bottleneck.expand(2, -1, -1)
        for layer in range(4):
            if layer < 2:
                unnormed = {m: stacks[m].blocks[layer](x) for m, x in unnormed.items()}
                continue
            outs = {m: stacks[m].blocks[layer](torch.cat([x, bottleneck], 1)) for m, x in unnormed.items()}
            unnormed = {m: o[:, : unnormed[m].shape[1]] for m, o in outs.items()}
            bottleneck = torch.stack([o[:, unnormed[m].shape[1]:] for m, o in outs.items()]).mean(0)
        joint = shared.encoder_norm(torch.cat([unnormed["video"], unnormed["audio"]], dim=1))
    torch.testing.assert_close(torch.cat([per["video"], per["audio"]], 1), joint, rtol=0, atol=1e-6)
    logits = shared(audio, video)["label"]
    heads = shared.heads["label"]
    expected = (heads(joint[:, :32].mean(1)) + heads(joint[:, 32:].mean(1))) / 2
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-6)
    # the same as two separate norms holding the same parameters
    separate = BottleneckClassifier(late_scenic(), {"label": 5}, bottleneck=BottleneckConfig(4, 2))
    state = {k: v for k, v in shared.state_dict().items() if not k.startswith("encoder_norm.")}
    for m in ("audio", "video"):
        state.update({f"encoder.{m}.norm.{p}": v for p, v in shared.encoder_norm.state_dict().items()})
    separate.load_state_dict(state)
    torch.testing.assert_close(separate.eval()(audio, video)["label"], logits, rtol=0, atol=1e-6)


def test_mbt_shared_norm_takes_the_joint_norm_of_a_mid_fusion_run():
    torch.manual_seed(0)
    pretrained = AVMAE(scenic_like())
    torch.nn.init.normal_(pretrained.encoder.joint.norm.weight)
    model = BottleneckClassifier(late_scenic(), {"label": 5}, bottleneck=BottleneckConfig(4, 2, shared_norm=True))
    report = model.load_pretrained(pretrained.state_dict())
    assert torch.equal(model.encoder_norm.weight, pretrained.encoder.joint.norm.weight)
    assert "encoder_norm.weight" in report["loaded"] and report["missing"] == []
    late_run = AVMAE(late_scenic())
    report = model.load_pretrained(late_run.state_dict())
    assert "encoder.audio.norm.weight" in report["skipped"]  # Scenic keeps encoder_norm at init for these


def test_every_scenic_option_reaches_the_mbt_model():
    config = late_scenic()
    config.encoder.drop_path = 0.3
    model = BottleneckClassifier(config, {"label": 5}, bottleneck=BottleneckConfig(4, 2, shared_norm=True))
    blocks = [b for m in ("audio", "video") for b in getattr(model.encoder, m).blocks]
    assert {b.mlp.approximate for b in blocks} == {"tanh"} and not any(b.drop_path_rescale for b in blocks)
    assert [b.drop_path_rate for b in model.encoder.audio.blocks] == pytest.approx([0, 0.1, 0.2, 0.3])
    assert not model.heads["label"].weight.any() and not model.heads["label"].bias.any()
    assert model.tokenizer.position.config.pos_embed.kind == "flat_1d" and not hasattr(model.tokenizer, "audio_type")
    fan_in = 16 * 16
    assert model.tokenizer.audio_embed.weight.std().item() == pytest.approx(1 / math.sqrt(fan_in), rel=0.1)
