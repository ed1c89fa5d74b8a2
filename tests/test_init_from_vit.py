"""Initialisation from an ImageNet ViT / MAE checkpoint in the timm layout (CAV-MAE's adapt_vmae_weights): every
value lands where it should, the audio kernel is the RGB kernel summed, the video kernel is inflated, and a block
computes what the ViT's block computes by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from avmae.models.avmae import AVMAE
from avmae.models.classifier import AVClassifier
from avmae.models.config import AudioInput, DecoderConfig, EncoderConfig, ModelConfig, VideoInput
from avmae.models.init_from_vit import init_from_vit
from avmae.models.state_dicts import read_state_dict
from tests.tiny_models import VIT_DEPTH as DEPTH, VIT_MLP as MLP, VIT_WIDTH as WIDTH, timm_vit, tiny_cavmae


def by_hand(x: torch.Tensor, vit: dict, i: int, eps: float) -> torch.Tensor:
    """ViT block i of ``vit`` applied to x, written out: pre-norm attention then pre-norm MLP, 2 heads."""
    def norm(y, name):
        return F.layer_norm(y, (WIDTH,), vit[f"blocks.{i}.{name}.weight"], vit[f"blocks.{i}.{name}.bias"], eps)

    h = norm(x, "norm1") @ vit[f"blocks.{i}.attn.qkv.weight"].T + vit[f"blocks.{i}.attn.qkv.bias"]
    q, k, v = h.split(WIDTH, dim=-1)
    heads = []
    for head in range(2):
        part = slice(head * 32, head * 32 + 32)
        weights = torch.softmax(q[..., part] @ k[..., part].transpose(-2, -1) / 32 ** 0.5, dim=-1)
        heads.append(weights @ v[..., part])
    x = x + torch.cat(heads, dim=-1) @ vit[f"blocks.{i}.attn.proj.weight"].T + vit[f"blocks.{i}.attn.proj.bias"]
    hidden = F.gelu(norm(x, "norm2") @ vit[f"blocks.{i}.mlp.fc1.weight"].T + vit[f"blocks.{i}.mlp.fc1.bias"])
    return x + hidden @ vit[f"blocks.{i}.mlp.fc2.weight"].T + vit[f"blocks.{i}.mlp.fc2.bias"]


@pytest.fixture
def vit_file(tmp_path):
    path = tmp_path / "mae_pretrain_vit_full.pth"
    torch.save({"model": timm_vit()}, path)  # MAE releases {'model': state_dict}
    return path


def test_cavmae_shaped_model_takes_every_value_where_it_belongs(vit_file):
    vit = read_state_dict(vit_file)
    assert "blocks.0.attn.qkv.weight" in vit and "model" not in vit
    torch.manual_seed(0)
    model = AVMAE(tiny_cavmae())
    report = init_from_vit(model, vit)
    state = model.state_dict()
    # blocks 0..1 into both modality stacks, block 2 into the joint stack (CAV-MAE: 0..10 and 11)
    for i in range(2):
        for stack in ("audio", "video"):
            assert torch.equal(state[f"encoder.{stack}.blocks.{i}.attn.qkv.weight"], vit[f"blocks.{i}.attn.qkv.weight"])
            assert torch.equal(state[f"encoder.{stack}.blocks.{i}.mlp.fc2.bias"], vit[f"blocks.{i}.mlp.fc2.bias"])
            assert torch.equal(state[f"encoder.{stack}.blocks.{i}.norm2.weight"], vit[f"blocks.{i}.norm2.weight"])
    assert torch.equal(state["encoder.joint.blocks.0.attn.proj.weight"], vit["blocks.2.attn.proj.weight"])
    for m in ("audio", "video"):  # norms copied to the modality norms, norm to norm_a / norm_v
        assert torch.equal(state[f"encoder.joint.blocks.0.modality_norm1.{m}.weight"], vit["blocks.2.norm1.weight"])
        assert torch.equal(state[f"encoder.joint.blocks.0.modality_norm2.{m}.bias"], vit["blocks.2.norm2.bias"])
        assert torch.equal(state[f"encoder.joint.modality_norm.{m}.weight"], vit["norm.weight"])
    assert torch.equal(state["encoder.joint.norm.bias"], vit["norm.bias"])
    # audio kernel = RGB kernel summed over the 3 channels; CAV-MAE's (mel x time) orientation is kept as it is
    kernel = vit["patch_embed.proj.weight"]
    assert state["tokenizer.audio_embed.weight"].shape == (WIDTH, 1, 16, 16)
    assert torch.allclose(state["tokenizer.audio_embed.weight"][:, 0], kernel[:, 0] + kernel[:, 1] + kernel[:, 2])
    assert torch.equal(state["tokenizer.video_embed.weight"], kernel.unsqueeze(2))  # tubelet 1
    assert torch.equal(state["tokenizer.audio_embed.bias"], vit["patch_embed.proj.bias"])
    # the MAE decoder: blocks, norm, the shared projection and mask token, heads as CAV-MAE takes them
    assert torch.equal(state["decoder.blocks.blocks.1.attn.qkv.weight"], vit["decoder_blocks.1.attn.qkv.weight"])
    assert torch.equal(state["decoder.embed.weight"], vit["decoder_embed.weight"])
    assert torch.equal(state["decoder.mask_token"], vit["mask_token"])
    assert torch.equal(state["decoder.head.audio.weight"], vit["decoder_pred.weight"][:256])
    assert torch.equal(state["decoder.head.video.weight"], vit["decoder_pred.weight"])
    # what was not taken is said, with the reason
    assert set(report["skipped"]) == {"cls_token", "pos_embed", "decoder_pos_embed"}
    assert "CLS" in report["skipped"]["cls_token"]
    assert set(report["kept_at_initialisation"]) == {
        "tokenizer.audio_type", "tokenizer.video_type", "tokenizer.position.audio", "tokenizer.position.video",
        "decoder.modality_type.audio", "decoder.modality_type.video", "decoder.position.audio", "decoder.position.video"}
    assert report["loaded"]["tokenizer.audio_embed.weight"].startswith("patch_embed.proj.weight (summed over RGB")
    assert len(report["loaded"]) == len(state) - 8


def test_an_initialised_block_computes_the_vit_block_by_hand(vit_file):
    vit = read_state_dict(vit_file)
    model = AVMAE(tiny_cavmae()).eval()
    init_from_vit(model, vit)
    x = torch.randn(2, 7, WIDTH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = by_hand(x, vit, 2, eps=1e-5)
        assert torch.allclose(model.encoder.joint.blocks[0](x), expected, atol=1e-4)
        assert torch.allclose(model.encoder.joint.blocks[0](x, "audio"), expected, atol=1e-4)  # modality norms too
        assert torch.allclose(model.encoder.audio.blocks[1](x), by_hand(x, vit, 1, eps=1e-5), atol=1e-4)
        assert not torch.allclose(expected, by_hand(x, vit, 1, eps=1e-5), atol=1e-2)


def test_av_mae_model_inflates_to_its_tubelet_and_keeps_its_own_norms(vit_file):
    vit = read_state_dict(vit_file)
    config = ModelConfig(encoder=EncoderConfig(size="custom", width=WIDTH, depth=DEPTH, heads=2, mlp=MLP, fusion="mid",
                                               joint_layers=1),
                         decoder=DecoderConfig(kind="separate", width=32, depth=2, heads=2, mlp=128),
                         audio=AudioInput(frames=64, mel_bins=32), video=VideoInput(frames=4, size=32, tubelet=2))
    model = AVMAE(config)
    report = init_from_vit(model, vit)
    state = model.state_dict()
    kernel = vit["patch_embed.proj.weight"]
    video = state["tokenizer.video_embed.weight"]
    assert video.shape == (WIDTH, 3, 2, 16, 16)
    assert torch.allclose(video[:, :, 0], kernel / 2) and torch.allclose(video[:, :, 1], kernel / 2)
    # time-major audio convolves a (time x mel) image: the summed kernel transposed, so image rows stay on mel
    assert torch.allclose(state["tokenizer.audio_embed.weight"][:, 0], kernel.sum(1).transpose(1, 2))
    # a still clip through the inflated kernel gives the image model's patch embedding
    frame = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        tokens = model.tokenizer.video_embed(frame.unsqueeze(2).repeat(1, 1, 2, 1, 1))[:, :, 0]
        assert torch.allclose(tokens, F.conv2d(frame, kernel, vit["patch_embed.proj.bias"], stride=16), atol=1e-4)
    # the MAE decoder fills both separate decoders; the video head repeats the image prediction per tubelet frame
    assert torch.equal(state["decoder.blocks.audio.blocks.0.mlp.fc1.weight"], vit["decoder_blocks.0.mlp.fc1.weight"])
    assert torch.equal(state["decoder.blocks.video.norm.weight"], vit["decoder_norm.weight"])
    assert torch.equal(state["decoder.embed.video.bias"], vit["decoder_embed.bias"])
    assert torch.equal(state["decoder.head.video.weight"], torch.cat([vit["decoder_pred.weight"]] * 2))
    # the LayerNorms before the joint layer have no ViT counterpart
    assert {"encoder.audio.norm.weight", "encoder.video.norm.bias"} <= set(report["kept_at_initialisation"])


def test_central_inflation_and_a_classifier_without_decoder(vit_file):
    vit = read_state_dict(vit_file)
    config = ModelConfig(encoder=EncoderConfig(size="custom", width=WIDTH, depth=DEPTH, heads=2, mlp=MLP, fusion="late"),
                         audio=AudioInput(frames=64, mel_bins=32), video=VideoInput(frames=3, size=32, tubelet=3))
    classifier = AVClassifier(config, {"label": 5})
    report = init_from_vit(classifier, vit, inflation="central")
    video = classifier.state_dict()["tokenizer.video_embed.weight"]
    assert torch.equal(video[:, :, 1], vit["patch_embed.proj.weight"]) and not video[:, :, [0, 2]].any()
    assert torch.equal(classifier.state_dict()["encoder.audio.norm.weight"], vit["norm.weight"])  # late: both stacks
    assert torch.equal(classifier.state_dict()["encoder.video.blocks.2.norm1.bias"], vit["blocks.2.norm1.bias"])
    assert report["skipped"]["decoder_embed.weight"] == "this model has no decoder"
    assert {"heads.label.weight", "head_norm.weight"} <= set(report["kept_at_initialisation"])


def test_a_vit_of_another_size_is_refused():
    model = AVMAE(tiny_cavmae())
    vit = timm_vit(decoder_depth=0)
    deeper = {**vit, **{k.replace("blocks.0.", "blocks.3."): v for k, v in vit.items() if k.startswith("blocks.0.")}}
    with pytest.raises(ValueError, match="depth 4 cannot initialise an encoder of width 64 and depth 3"):
        init_from_vit(model, deeper)
    with pytest.raises(ValueError, match="do not fit"):
        init_from_vit(model, {**timm_vit(), "blocks.1.mlp.fc1.weight": torch.zeros(5, WIDTH)})
