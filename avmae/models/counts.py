"""Closed-form parameter and FLOP counts of the AV-MAE family, from the config alone (no model built).

FLOPs count a multiply-add as 2; a training step costs forward + backward = 3x the forward (Kaplan et al.'s rule,
used for MFU by PaLM / torchtitan). Attention FLOPs include the token-token products, which matter at 1568 tokens.
"""

from __future__ import annotations

from avmae.models.config import ModelConfig
from avmae.models.masking import visible_count


def block_parameters(width: int, mlp: int, qkv_bias: bool = True, modality_norms: int = 0) -> int:
    attention = 3 * width * width + (3 * width if qkv_bias else 0) + width * width + width
    feed_forward = width * mlp + mlp + mlp * width + width
    return attention + feed_forward + 4 * width * (1 + modality_norms)  # two LayerNorms (+ two per modality)


def stack_parameters(width: int, depth: int, mlp: int, qkv_bias: bool = True, final_norm: bool = True,
                     modality_norms: int = 0) -> int:
    """``depth`` blocks, the final LayerNorm (if any) and, with ``modality_norms`` modalities, their own norms."""
    norms = (1 if final_norm else 0) + modality_norms
    return depth * block_parameters(width, mlp, qkv_bias, modality_norms) + 2 * width * norms


def token_counts(config: ModelConfig) -> dict[str, int]:
    a, v = config.audio, config.video
    audio = (a.frames // a.patch) * (a.mel_bins // a.patch)
    video = (v.frames // v.tubelet) * (v.size // v.patch) ** 2
    return {"audio": audio, "video": video}


def parameter_counts(config: ModelConfig) -> dict[str, int]:
    """Parameters by part: tokenizer, encoder stacks, decoder (pretraining model = sum of all); ``frozen`` counts
    the position tables that are parameters but not trained (pos_embed.stored without trainable)."""
    width, depth, _, mlp = config.encoder.dims()
    bias = config.encoder.qkv_bias
    a, v = config.audio, config.video
    tokens = token_counts(config)
    tables = tokens["audio"] + tokens["video"] if config.pos_embed.stored else 0  # rows of stored position tables
    tokenizer = (a.patch * a.patch * width + width) + (3 * v.tubelet * v.patch * v.patch * width + width)
    tokenizer += 2 * width if config.modality_embeddings else 0
    tokenizer += tables * width
    fusion = config.encoder.fusion
    alone = 2 if config.encoder.modality_norms else 0  # per-modality norms of the joint layers
    if fusion == "early" or fusion == "shared":
        name = "encoder_" + ("joint" if fusion == "early" else "shared")
        encoder = {name: stack_parameters(width, depth, mlp, bias, modality_norms=alone if fusion == "early" else 0)}
    elif fusion == "late":
        encoder = {"encoder_audio": stack_parameters(width, depth, mlp, bias),
                   "encoder_video": stack_parameters(width, depth, mlp, bias)}
    else:
        k = config.encoder.joint_layers
        before = config.encoder.norm_before_joint
        encoder = {"encoder_audio": stack_parameters(width, depth - k, mlp, bias, final_norm=before),
                   "encoder_video": stack_parameters(width, depth - k, mlp, bias, final_norm=before),
                   "encoder_joint": stack_parameters(width, k, mlp, bias, modality_norms=alone)}
    d = config.decoder
    stacks = 2 if d.kind == "separate" else 1
    inputs = 1 if d.shared_input else 2  # input projections and mask tokens
    patch_dims = a.patch * a.patch + v.tubelet * v.patch * v.patch * 3
    decoder = (stacks * stack_parameters(d.width, d.depth, d.mlp)
               + inputs * (width * d.width + d.width + d.width)  # projections from the encoder width, mask tokens
               + (2 * d.width if config.modality_embeddings else 0)
               + tables * d.width
               + patch_dims * d.width + patch_dims)  # output heads
    counts = {"tokenizer": tokenizer, **encoder, "decoder": decoder}
    counts["encoder_total"] = tokenizer + sum(encoder.values())
    counts["total"] = counts["encoder_total"] + decoder
    counts["frozen"] = tables * (width + d.width) if config.pos_embed.stored and not config.pos_embed.trainable else 0
    return counts


def classifier_parameters(config: ModelConfig, heads: dict[str, int]) -> int:
    """The fine-tuning model: tokenizer and encoder, the LayerNorm before the heads, the heads."""
    width = config.encoder.dims()[0]
    return parameter_counts(config)["encoder_total"] + 2 * width + sum(width * c + c for c in heads.values())


def visible_counts(config: ModelConfig) -> dict[str, int]:
    """Tokens each sample shows the encoder under the configured masks (every strategy keeps a fixed count)."""
    a, v, m = config.audio, config.video, config.mask
    audio_grid = (a.frames // a.patch, a.mel_bins // a.patch)
    video_grid = (v.frames // v.tubelet, v.size // v.patch, v.size // v.patch)
    return {"audio": visible_count(audio_grid, m.audio_ratio, m.audio_mode),
            "video": visible_count(video_grid, m.video_ratio, m.video_mode)}


def _stack_flops(tokens: int, width: int, depth: int, mlp: int, scores: bool = True) -> int:
    """Forward FLOPs of ``depth`` blocks on ``tokens`` tokens: projections, MLP and (``scores``) the token-token
    products of attention (QK^T and attention x V)."""
    per_block = 2 * tokens * (4 * width * width + 2 * width * mlp) + (4 * tokens * tokens * width if scores else 0)
    return depth * per_block


def pretraining_flops(config: ModelConfig, attention_scores: bool = True, global_batch: int = 1) -> dict[str, int]:
    """FLOPs per sample of a pretraining step (encoder on visible tokens only, decoder on all). Without
    ``attention_scores`` the count is what torch's FlopCounterMode sees on CPU, where SDPA is not counted.
    ``global_batch`` sizes the contrastive similarity rows (negligible next to the rest)."""
    width, depth, _, mlp = config.encoder.dims()
    a, v, d = config.audio, config.video, config.decoder
    tokens, visible = token_counts(config), visible_counts(config)

    def enc(count: int, layers: int) -> int:
        return _stack_flops(count, width, layers, mlp, attention_scores)

    def dec(count: int) -> int:
        return _stack_flops(count, d.width, d.depth, d.mlp, attention_scores)

    both = visible["audio"] + visible["video"]
    fusion = config.encoder.fusion
    # joint layers also run per modality (avmae's inpainting layout decodes each modality encoded alone)
    alone = (config.objective == "inpainting" and config.inpainting_layout == "avmae") or config.contrastive.weight > 0
    if fusion == "early":
        encoder = enc(both, depth) + (sum(enc(n, depth) for n in visible.values()) if alone else 0)
    elif fusion in ("late", "shared"):
        encoder = sum(enc(n, depth) for n in visible.values())
    else:
        k = config.encoder.joint_layers
        encoder = sum(enc(n, depth - k) for n in visible.values()) + enc(both, k)
        encoder += sum(enc(n, k) for n in visible.values()) if alone else 0
    embed = 2 * width * (tokens["audio"] * a.patch ** 2 + tokens["video"] * 3 * v.tubelet * v.patch ** 2)
    if d.kind == "joint":
        decoder = dec(tokens["audio"] + tokens["video"])
    elif config.objective == "inpainting" and config.inpainting_layout == "scenic":
        decoder = sum(dec(n) for n in tokens.values())  # the other's visible tokens sit in the modality's own slots
    elif config.objective == "inpainting":
        decoder = dec(visible["video"] + tokens["audio"]) + dec(visible["audio"] + tokens["video"])
    else:
        decoder = sum(dec(n) for n in tokens.values())
    patch_dims = {"audio": a.patch ** 2, "video": v.tubelet * v.patch ** 2 * 3}
    decoder += sum(2 * tokens[m] * d.width * patch_dims[m] + 2 * visible[m] * width * d.width for m in tokens)
    c = config.contrastive
    contrastive = (2 if c.bidirectional else 1) * 2 * global_batch * width if c.weight > 0 else 0
    forward = embed + encoder + decoder + contrastive
    return {"forward": forward, "forward_backward": 3 * forward, "encoder_forward": encoder,
            "decoder_forward": decoder, "visible_tokens": visible, "tokens": tokens}
