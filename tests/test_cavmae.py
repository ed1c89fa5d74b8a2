"""CAV-MAE parity: an independent CAV-MAE written here from the description in reference/methods.md A.1 and G.1
(CAV-MAE's own parameter names, its masking, decoder, losses and fine-tuning modes), filled with random weights,
saved as CAV-MAE saves it (``module.`` prefix), converted, loaded strictly into avmae's cavmae_base models, and
compared output by output: encoder tokens, predictions, losses, logits."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from avmae.config import load
from avmae.models.avmae import AVMAE, pooled_unimodal
from avmae.models.classifier import AVClassifier
from avmae.models.config import ModelConfig
from avmae.models.convert_cavmae import FINETUNED_KEYS, PRETRAINED_KEYS, cavmae_base, convert_cavmae
from avmae.models.counts import classifier_parameters, parameter_counts
from avmae.models.masking import gather_tokens, visible_indices
from avmae.models.tokenizers import patchify_audio, unpatchify_audio

# --- the reference: CAV-MAE as methods.md A.1 describes it -------------------------------------------------------


def reference_2d_sincos(width: int, rows: int, columns: int) -> np.ndarray:
    """MAE's get_2d_sincos_pos_embed for a rows x columns grid, tokens row-major: meshgrid(columns, rows) makes the
    column coordinate the first of the two, so the first width/2 channels encode the column (for CAV-MAE's audio
    grid of 8 frequency rows x 64 time columns: time first, methods.md A.1)."""
    grid = np.meshgrid(np.arange(columns, dtype=np.float32), np.arange(rows, dtype=np.float32))  # 'xy' indexing

    def one_axis(channels: int, positions: np.ndarray) -> np.ndarray:
        omega = np.arange(channels // 2, dtype=np.float64) / (channels / 2.0)
        omega = 1.0 / 10000 ** omega
        angles = np.einsum("m,d->md", positions.reshape(-1).astype(np.float64), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([one_axis(width // 2, grid[0]), one_axis(width // 2, grid[1])], axis=1)


class PatchEmbed(nn.Module):
    def __init__(self, channels: int, width: int, patch: int = 16):
        super().__init__()
        self.proj = nn.Conv2d(channels, width, kernel_size=patch, stride=patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=True)
        self.proj = nn.Linear(width, width)

    def forward(self, x):
        batch, tokens, width = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        weights = (q @ k.transpose(-2, -1) * (width // self.heads) ** -0.5).softmax(dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, width))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Three LayerNorm pairs: joint stream (norm1/norm2), audio alone (_a), visual alone (_v)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1, self.norm1_a, self.norm1_v = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2, self.norm2_a, self.norm2_v = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x, modality=None):
        norm1, norm2 = {None: (self.norm1, self.norm2), "a": (self.norm1_a, self.norm2_a),
                        "v": (self.norm1_v, self.norm2_v)}[modality]
        x = x + self.attn(norm1(x))
        return x + self.mlp(norm2(x))


class Encoder(nn.Module):
    """What CAVMAE and CAVMAEFT share: embeddings, blocks_a/blocks_v (11), blocks_u (1), norm_a/norm_v/norm."""

    def __init__(self, width=768, depth=12, specific=11, heads=12, frames=1024, mel=128, image=224):
        super().__init__()
        self.grid_a = (mel // 16, frames // 16)  # (frequency rows, time columns): frequency-major tokens
        self.grid_v = (image // 16, image // 16)
        self.patch_embed_a = PatchEmbed(1, width)
        self.patch_embed_v = PatchEmbed(3, width)
        self.modality_a = nn.Parameter(torch.zeros(1, 1, width))
        self.modality_v = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed_a = nn.Parameter(torch.zeros(1, math.prod(self.grid_a), width), requires_grad=False)
        self.pos_embed_v = nn.Parameter(torch.zeros(1, math.prod(self.grid_v), width), requires_grad=False)
        self.blocks_a = nn.ModuleList(Block(width, heads) for _ in range(specific))
        self.blocks_v = nn.ModuleList(Block(width, heads) for _ in range(specific))
        self.blocks_u = nn.ModuleList(Block(width, heads) for _ in range(depth - specific))
        self.norm_a, self.norm_v, self.norm = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.pos_embed_a.data.copy_(torch.from_numpy(reference_2d_sincos(width, *self.grid_a)).float().unsqueeze(0))
        self.pos_embed_v.data.copy_(torch.from_numpy(reference_2d_sincos(width, *self.grid_v)).float().unsqueeze(0))

    def embed(self, a, v):
        """a (B, 1024 time, 128 mel), v (B, 3, 224, 224) -> tokens with position and modality embeddings."""
        a = self.patch_embed_a(a.unsqueeze(1).transpose(2, 3)) + self.pos_embed_a + self.modality_a
        v = self.patch_embed_v(v) + self.pos_embed_v + self.modality_v
        return a, v

    def specific(self, a, v):
        for block in self.blocks_a:
            a = block(a)
        for block in self.blocks_v:
            v = block(v)
        return a, v

    def joint(self, x, modality=None):
        for block in self.blocks_u:
            x = block(x, modality)
        return {None: self.norm, "a": self.norm_a, "v": self.norm_v}[modality](x)


def random_masking(x, ratio, noise):
    """MAE's argsort-noise masking: keep int(L (1 - ratio)) tokens of lowest noise, in that (noise) order."""
    batch, tokens, width = x.shape
    keep = int(tokens * (1 - ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :keep]
    kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).repeat(1, 1, width))
    mask = torch.ones(batch, tokens, dtype=x.dtype)
    mask[:, :keep] = 0
    return kept, torch.gather(mask, 1, ids_restore), ids_restore, ids_keep


def patchify(images, channels, rows, columns, p=16):
    x = images.reshape(images.shape[0], channels, rows, p, columns, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(images.shape[0], rows * columns, p * p * channels)


class CAVMAE(Encoder):
    def __init__(self, decoder_width=512, decoder_depth=8, decoder_heads=16, **encoder):
        super().__init__(**encoder)
        width = self.norm.normalized_shape[0]
        self.decoder_embed = nn.Linear(width, decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_width))
        self.decoder_modality_a = nn.Parameter(torch.zeros(1, 1, decoder_width))
        self.decoder_modality_v = nn.Parameter(torch.zeros(1, 1, decoder_width))
        self.decoder_pos_embed_a = nn.Parameter(torch.zeros(1, math.prod(self.grid_a), decoder_width), requires_grad=False)
        self.decoder_pos_embed_v = nn.Parameter(torch.zeros(1, math.prod(self.grid_v), decoder_width), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(Block(decoder_width, decoder_heads) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_width)
        self.decoder_pred_a = nn.Linear(decoder_width, 16 * 16)
        self.decoder_pred_v = nn.Linear(decoder_width, 16 * 16 * 3)
        self.decoder_pos_embed_a.data.copy_(torch.from_numpy(reference_2d_sincos(decoder_width, *self.grid_a)).float()[None])
        self.decoder_pos_embed_v.data.copy_(torch.from_numpy(reference_2d_sincos(decoder_width, *self.grid_v)).float()[None])

    def forward_encoder(self, a, v, noise_a, noise_v, ratio_a, ratio_v):
        a, v = self.embed(a, v)
        a, mask_a, restore_a, keep_a = random_masking(a, ratio_a, noise_a)
        v, mask_v, restore_v, keep_v = random_masking(v, ratio_v, noise_v)
        a, v = self.specific(a, v)
        x = self.joint(torch.cat((a, v), dim=1))
        ca, cv = self.joint(a, "a"), self.joint(v, "v")
        return x, ca, cv, (mask_a, restore_a, keep_a), (mask_v, restore_v, keep_v)

    def forward_decoder(self, x, mask_a, restore_a, mask_v, restore_v):
        x = self.decoder_embed(x)
        n_a = mask_a.shape[1]
        kept_a = n_a - int(mask_a[0].sum())
        a_ = torch.cat([x[:, :kept_a], self.mask_token.repeat(x.shape[0], int(mask_a[0].sum()), 1)], dim=1)
        a_ = torch.gather(a_, 1, restore_a.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        v_ = torch.cat([x[:, kept_a:], self.mask_token.repeat(x.shape[0], int(mask_v[0].sum()), 1)], dim=1)
        v_ = torch.gather(v_, 1, restore_v.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([a_, v_], dim=1) + torch.cat([self.decoder_pos_embed_a, self.decoder_pos_embed_v], dim=1)
        x = torch.cat([x[:, :n_a] + self.decoder_modality_a, x[:, n_a:] + self.decoder_modality_v], dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        x = self.decoder_norm(x)
        return self.decoder_pred_a(x[:, :n_a]), self.decoder_pred_v(x[:, n_a:])

    def forward_mae_loss(self, target, pred, mask):
        mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5  # norm_pix_loss=True
        loss = ((pred - target) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()

    @staticmethod
    def forward_contrastive(audio_rep, video_rep):
        """Single direction: log-softmax over audios (dim 0) of each visual column, temperature 0.05."""
        total = F.normalize(audio_rep, dim=-1) @ F.normalize(video_rep, dim=-1).T / 0.05
        return -torch.mean(torch.diag(F.log_softmax(total, dim=0)))

    def forward(self, audio, imgs, noise_a, noise_v, ratio_a=0.75, ratio_v=0.75, mae_weight=1.0, contrast_weight=0.01):
        x, ca, cv, (mask_a, restore_a, keep_a), (mask_v, restore_v, keep_v) = self.forward_encoder(
            audio, imgs, noise_a, noise_v, ratio_a, ratio_v)
        pred_a, pred_v = self.forward_decoder(x, mask_a, restore_a, mask_v, restore_v)
        spectrogram = audio.unsqueeze(1).transpose(2, 3)
        target_a = patchify(spectrogram, 1, spectrogram.shape[2] // 16, spectrogram.shape[3] // 16)
        target_v = patchify(imgs, 3, imgs.shape[2] // 16, imgs.shape[3] // 16)
        loss_a = self.forward_mae_loss(target_a, pred_a, mask_a)
        loss_v = self.forward_mae_loss(target_v, pred_v, mask_v)
        nce = self.forward_contrastive(ca.mean(dim=1), cv.mean(dim=1))
        return {"loss": mae_weight * (loss_a + loss_v) + contrast_weight * nce, "loss_a": loss_a, "loss_v": loss_v,
                "nce": nce, "pred_a": pred_a, "pred_v": pred_v, "mask_a": mask_a, "mask_v": mask_v, "x": x, "ca": ca,
                "cv": cv, "keep_a": keep_a, "keep_v": keep_v}


class CAVMAEFT(Encoder):
    def __init__(self, classes=527, **encoder):
        super().__init__(**encoder)
        width = self.norm.normalized_shape[0]
        self.pos_embed_a.requires_grad_(True)  # tr_pos=True in fine-tuning
        self.pos_embed_v.requires_grad_(True)
        self.mlp_head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, classes))

    def forward(self, a, v, mode):
        a, v = self.embed(a, v)
        a, v = self.specific(a, v)
        if mode == "multimodal":
            x = self.joint(torch.cat((a, v), dim=1))
        elif mode == "audioonly":
            x = self.joint(a, "a")
        elif mode == "videoonly":
            x = self.joint(v, "v")
        elif mode in ("missingaudioonly", "missingvideoonly"):  # fine-tuned on both, given one: both kinds of norms
            alone, name = (a, "a") if mode == "missingaudioonly" else (v, "v")
            return self.mlp_head((self.joint(alone).mean(dim=1) + self.joint(alone, name).mean(dim=1)) / 2)
        return self.mlp_head(x.mean(dim=1))


def randomise(model: nn.Module, seed: int) -> None:
    """Every parameter random, norms included, and each of the three norm pairs different, so that a wrong mapping
    (joint norms where modality norms belong, one modality's for the other's) changes the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.startswith("mlp_head.0"):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * torch.randn(p.shape, generator=g))
            elif "pos_embed" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))  # fine-tuned tables are no longer sin-cos
            else:
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


def saved_like_cavmae(model: nn.Module) -> dict[str, torch.Tensor]:
    """As CAV-MAE's training saves it: the state dict of an nn.DataParallel wrapper."""
    return {f"module.{k}": v.clone() for k, v in model.state_dict().items()}


# --- shapes and counts (methods.md G.1 / A.1) ----------------------------------------------------------------------

def g1_shapes(classes: int | None) -> dict[str, tuple[int, ...]]:
    """The key -> shape table of methods.md G.1, written out."""
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
    assert counts["encoder_total"] == 164_500_224 - 22 * 4 * 1536  # methods.md A.1: encoder 164.500 M with them
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
    assert round(total / 1e6, 3) == {527: 164.907, 309: 164.739}[classes]  # methods.md A.1 (logs: "164.907")
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


def tiny_cavmae(finetune: bool = False) -> ModelConfig:
    """cavmae_base at test size: width 64, 2 + 1 layers, 64-frame audio, 32 px frames."""
    config = cavmae_base(finetune)
    config.encoder.size, config.encoder.width, config.encoder.depth = "custom", 64, 3
    config.encoder.heads, config.encoder.mlp = 2, 256
    config.decoder.width, config.decoder.depth, config.decoder.heads, config.decoder.mlp = 32, 2, 2, 128
    config.audio.frames, config.audio.mel_bins, config.video.size = 64, 32, 32
    return config.validate()


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
    with pytest.raises(ValueError, match="stores audio position embeddings for a \\(4, 2\\) token grid"):
        AVMAE(tiny_cavmae())(torch.randn(2, 96, 32), torch.randn(2, 1, 3, 32, 32))


def test_cavmae_step_schedule_halves_at_each_milestone():
    from avmae.train.config import OptimConfig
    from avmae.train.optim import learning_rate

    optim = OptimConfig(lr=1e-4, schedule="step", milestones=(10, 15, 20), gamma=0.5, steps=25)
    assert [learning_rate(s, optim) for s in (0, 9, 10, 14, 15, 20, 24)] == [1e-4, 1e-4, 5e-5, 5e-5, 2.5e-5, 1.25e-5, 1.25e-5]
