"""CAV-MAE checkpoints (YuanGongND/cav-mae, docs/reference/cavmae.md#checkpoint-keys) as avmae state dicts.

CAV-MAE releases plain state dicts of ``nn.DataParallel`` models: the pretrained ``CAVMAE`` (647 keys, with the
decoder) and the fine-tuned ``CAVMAEFT`` (478 keys, with ``mlp_head``). ``cavmae_base`` is its architecture in
avmae's model classes, and every CAV-MAE key maps to one avmae key of the same values, except:

- ``patch_embed_v.proj.weight`` (768, 3, 16, 16) gains a tubelet axis of 1 for avmae's Conv3d;
- the ``norm1_a/norm1_v/norm2_a/norm2_v`` LayerNorms of ``blocks_a``, ``blocks_v`` and ``decoder_blocks`` are dropped:
  CAV-MAE builds them in every block but only ``blocks_u`` ever runs on one modality alone
  (docs/reference/cavmae.md#architecture), so they never touch an output. The report lists each of them.

The audio needs no permutation: cavmae_base tokenizes frequency-major like CAV-MAE (its (1, 512, 768) position
table, its (768, 1, 16, 16) kernel over the (mel x time) image and its (256, 512) audio head rows load as they are).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from avmae.config import load
from avmae.models.config import ModelConfig

# The one home of CAV-MAE's architecture: the recipes name it as their model's base, and cavmae_base reads it.
CAVMAE_BASE_YAML = "model/cavmae_base"  # a shipped config's name (avmae.config.find_config): found installed too

# Keys in a CAVMAE / CAVMAEFT state dict (docs/reference/cavmae.md#checkpoint-keys, counted from the module structure).
PRETRAINED_KEYS = 647
FINETUNED_KEYS = 478

BLOCK_PARTS = ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
ALONE_NORMS = {"norm1_a": "modality_norm1.audio", "norm1_v": "modality_norm1.video",
               "norm2_a": "modality_norm2.audio", "norm2_v": "modality_norm2.video"}
UNUSED_NORM_REASON = "CAV-MAE builds per-modality norms in every block; only blocks_u runs on one modality alone"
ENCODER_ONLY_REASON = "the encoder alone was asked for (a fine-tuning start)"


def cavmae_base(finetune: bool = False) -> ModelConfig:
    """CAV-MAE's model (docs/reference/cavmae.md#architecture, ``src/models/cav_mae.py``): ViT-B, 11 modality-specific +
    1 joint layer, LayerNorm eps 1e-5, one 224 px frame, 1024 x 128 log-mel in frequency-major 16 x 16 patches, fixed
    2-D sin-cos tables (trained in fine-tuning: CAVMAEFT's tr_pos=True), a joint 8-block 512-wide decoder with one input
    projection and separate heads, masks 0.75 / 0.75, per-patch normalised targets, L_a + L_v + 0.01 x the
    video->audio InfoNCE at temperature 0.05 over each GPU's own clips: configs/model/cavmae_base.yaml, read here.

    Masking: avmae masks int(r N) tokens where CAV-MAE keeps int((1 - r) N); at r = 0.75 both keep 128 of 512 audio
    and 49 of 196 video tokens (other ratios can differ by one token)."""
    config = load(ModelConfig, CAVMAE_BASE_YAML)
    config.pos_embed.trainable = finetune
    return config


@dataclass
class Conversion:
    task: str  # "pretrain" (CAVMAE -> AVMAE) or "finetune" (CAVMAEFT -> AVClassifier)
    state: dict[str, torch.Tensor]  # avmae keys
    heads: dict[str, int]  # {head: classes} of a fine-tuned model, {} otherwise
    report: dict = field(default_factory=dict)


def _block_map(source: str, target: str, alone: bool) -> dict[str, str]:
    mapping = {f"{source}.{part}.{p}": f"{target}.{part}.{p}" for part in BLOCK_PARTS for p in ("weight", "bias")}
    if alone:
        mapping.update({f"{source}.{n}.{p}": f"{target}.{ours}.{p}" for n, ours in ALONE_NORMS.items()
                        for p in ("weight", "bias")})
    return mapping


def _unused_norms(source: str) -> list[str]:
    return [f"{source}.{n}.{p}" for n in ALONE_NORMS for p in ("weight", "bias")]


def key_map(specific: int, joint: int, decoder_depth: int, classes_head: str | None) -> tuple[dict[str, str], list[str]]:
    """CAV-MAE key -> avmae key, and the CAV-MAE keys dropped on purpose. ``decoder_depth`` 0 = no decoder
    (fine-tuned model); ``classes_head`` names the avmae head of ``mlp_head`` (None = pretrained model)."""
    mapping = {
        "patch_embed_a.proj.weight": "tokenizer.audio_embed.weight", "patch_embed_a.proj.bias": "tokenizer.audio_embed.bias",
        "patch_embed_v.proj.weight": "tokenizer.video_embed.weight", "patch_embed_v.proj.bias": "tokenizer.video_embed.bias",
        "pos_embed_a": "tokenizer.position.audio", "pos_embed_v": "tokenizer.position.video",
        "modality_a": "tokenizer.audio_type", "modality_v": "tokenizer.video_type",
    }
    dropped = []
    for stack, ours in (("blocks_a", "audio"), ("blocks_v", "video")):
        for i in range(specific):
            mapping.update(_block_map(f"{stack}.{i}", f"encoder.{ours}.blocks.{i}", alone=False))
            dropped += _unused_norms(f"{stack}.{i}")
    for i in range(joint):
        mapping.update(_block_map(f"blocks_u.{i}", f"encoder.joint.blocks.{i}", alone=True))
    for source, target in (("norm", "encoder.joint.norm"), ("norm_a", "encoder.joint.modality_norm.audio"),
                           ("norm_v", "encoder.joint.modality_norm.video")):
        mapping.update({f"{source}.{p}": f"{target}.{p}" for p in ("weight", "bias")})
    if decoder_depth:
        mapping.update({
            "decoder_embed.weight": "decoder.embed.weight", "decoder_embed.bias": "decoder.embed.bias",
            "mask_token": "decoder.mask_token",
            "decoder_modality_a": "decoder.modality_type.audio", "decoder_modality_v": "decoder.modality_type.video",
            "decoder_pos_embed_a": "decoder.position.audio", "decoder_pos_embed_v": "decoder.position.video",
            "decoder_norm.weight": "decoder.blocks.norm.weight", "decoder_norm.bias": "decoder.blocks.norm.bias",
            "decoder_pred_a.weight": "decoder.head.audio.weight", "decoder_pred_a.bias": "decoder.head.audio.bias",
            "decoder_pred_v.weight": "decoder.head.video.weight", "decoder_pred_v.bias": "decoder.head.video.bias",
        })
        for i in range(decoder_depth):
            mapping.update(_block_map(f"decoder_blocks.{i}", f"decoder.blocks.blocks.{i}", alone=False))
            dropped += _unused_norms(f"decoder_blocks.{i}")
    if classes_head is not None:
        mapping.update({"mlp_head.0.weight": "head_norm.weight", "mlp_head.0.bias": "head_norm.bias",
                        "mlp_head.1.weight": f"heads.{classes_head}.weight",
                        "mlp_head.1.bias": f"heads.{classes_head}.bias"})
    return mapping, dropped


def _count(state: dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state if k.startswith(prefix)})


def check_config(config: ModelConfig, specific: int, joint: int, decoder: bool = True) -> None:
    """The avmae settings a CAV-MAE checkpoint needs; anything else would load but compute something different.
    ``decoder``: the checkpoint has one (CAVMAE), so the decoder settings matter too."""
    e = config.encoder
    wrong = []
    if e.fusion != "mid" or e.joint_layers != joint or e.dims()[1] != specific + joint:
        wrong.append(f"mid fusion with {specific} + {joint} layers (got {e.fusion}, depth {e.dims()[1]}, "
                     f"joint_layers {e.joint_layers})")
    needed = [("encoder.modality_norms", e.modality_norms, True),
              ("encoder.norm_before_joint", e.norm_before_joint, False),
              ("encoder.layer_norm_eps", e.layer_norm_eps, 1e-5),
              ("audio.token_order", config.audio.token_order, "freq_major"),
              ("pos_embed.stored", config.pos_embed.stored, True),
              ("pos_embed.video_axes", config.pos_embed.video_axes, "column_row"),
              ("video.tubelet", config.video.tubelet, 1),
              ("classifier_pooling", config.classifier_pooling, "token_mean")]
    if decoder:
        needed += [("decoder.kind", config.decoder.kind, "joint"), ("decoder.shared_input", config.decoder.shared_input, True),
                   ("decoder.layer_norm_eps", config.decoder.layer_norm_eps, 1e-5)]
    wrong += [f"{name} {want!r} (got {got!r})" for name, got, want in needed if got != want]
    if wrong:
        raise ValueError("this model config cannot hold a CAV-MAE checkpoint; it needs " + "; ".join(wrong) +
                         " (start from configs/model/cavmae_base.yaml)")


def _mapping_and_dropped(state: dict[str, torch.Tensor], specific: int, joint: int, decoder_depth: int,
                         head: str | None, encoder_only: bool) -> tuple[dict[str, str], dict[str, str]]:
    """CAV-MAE key -> avmae key, and the CAV-MAE keys dropped on purpose with their reason; raises when the state
    dict has keys that are neither, or lacks mapped ones."""
    mapping, unused = key_map(specific, joint, 0 if encoder_only else decoder_depth, head)
    dropped = {k: UNUSED_NORM_REASON for k in unused}
    if encoder_only:
        dropped.update({k: ENCODER_ONLY_REASON for k in state if k.startswith(("decoder", "mask_token", "mlp_head."))})
    unknown = sorted(set(state) - set(mapping) - set(dropped))
    absent = sorted(set(mapping) - set(state))
    if unknown or absent:
        raise ValueError(f"state dict does not have CAV-MAE's layout: unknown keys {unknown[:5]}, missing keys {absent[:5]}")
    return mapping, dropped


def _video_kernel_as_conv3d(out: dict[str, torch.Tensor]) -> dict[str, str]:
    """The video patch embedding with a tubelet axis; the CAV-MAE keys so transformed, with how."""
    video = out["tokenizer.video_embed.weight"]
    if video.dim() != 4:
        return {}
    out["tokenizer.video_embed.weight"] = video.unsqueeze(2)  # Conv2d (C, 3, p, p) -> Conv3d (C, 3, 1, p, p)
    return {"patch_embed_v.proj.weight": "unsqueezed to (C, 3, 1, p, p): avmae's video embedding is a Conv3d"}


def _check_fits(out: dict[str, torch.Tensor], expected: dict[str, torch.Size]) -> None:
    missing, extra = sorted(set(expected) - set(out)), sorted(set(out) - set(expected))
    shapes = [f"{k}: CAV-MAE {tuple(out[k].shape)} vs avmae {tuple(expected[k])}" for k in sorted(set(out) & set(expected))
              if tuple(out[k].shape) != tuple(expected[k])]
    if missing or extra or shapes:
        raise ValueError(f"converted CAV-MAE weights do not fit the avmae model: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}, shapes {shapes[:3]}")


def convert_cavmae(state_dict: dict[str, torch.Tensor], config: ModelConfig | None = None,
                   expected: dict[str, torch.Size] | None = None, head: str = "label",
                   encoder_only: bool = False) -> Conversion:
    """A CAVMAE or CAVMAEFT state dict (``module.`` prefix or not) -> avmae keys. ``expected``: the avmae model's
    key -> shape (``model.state_dict()``); when given, the result must cover it exactly with equal shapes.
    ``encoder_only``: the decoder and the head are dropped (a fine-tuning start, as CAVMAEFT loads a CAVMAE
    checkpoint). Raises on any CAV-MAE key that is neither mapped nor dropped on purpose, so nothing is lost
    silently; the report names every dropped key with its reason."""
    state = {k.removeprefix("module."): v for k, v in state_dict.items()}
    pretrained, finetuned = "decoder_embed.weight" in state, "mlp_head.1.weight" in state
    if pretrained == finetuned:
        raise ValueError("not a CAV-MAE state dict: expected decoder_embed.* (CAVMAE) or mlp_head.* (CAVMAEFT), "
                         f"found {sorted(state)[:5]}...")
    specific, joint = _count(state, "blocks_a."), _count(state, "blocks_u.")
    decoder_depth = _count(state, "decoder_blocks.") if pretrained else 0
    config = config or cavmae_base(finetune=finetuned)
    check_config(config, specific, joint, decoder=pretrained and not encoder_only)
    with_head = finetuned and not encoder_only
    mapping, dropped = _mapping_and_dropped(state, specific, joint, decoder_depth, head if with_head else None,
                                            encoder_only)
    out = {mapping[k]: state[k] for k in mapping}
    transformed = _video_kernel_as_conv3d(out)
    if expected is not None:
        _check_fits(out, expected)
    heads = {head: int(state["mlp_head.1.weight"].shape[0])} if with_head else {}
    report = {
        "source": "CAVMAEFT" if finetuned else "CAVMAE",
        "source_keys": len(state), "source_parameters": sum(v.numel() for v in state.values()),
        "expected_source_keys": FINETUNED_KEYS if finetuned else PRETRAINED_KEYS,
        "mapped": len(mapping), "transformed": transformed,
        "dropped": dropped,
        "dropped_parameters": sum(state[k].numel() for k in dropped),
        "layers": {"modality_specific": specific, "joint": joint, "decoder": decoder_depth},
        "heads": heads,
    }
    return Conversion("finetune" if finetuned else "pretrain", out, heads, report)

