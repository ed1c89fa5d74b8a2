"""Scenic's AV-MAE pretraining model (``ViViTMultiMaskedAutoencoder``, google-research/scenic
``scenic/projects/av_mae/vivit_multimodal.py``) in avmae's names.

Its parts are named by fusion strategy: ``Transformer_<m>`` + ``Transformer_concat`` (``separate_encoders_and_concat``,
avmae's mid fusion), ``Transformer_<m>`` alone (``separate_encoders``, late), one ``Transformer``
(``concat_and_encode``, early, or ``same_encoder``, shared: the names cannot tell these two apart), and ``Decoder``
(``same_decoder``, or ``concat_and_decode``: again the same names) or ``Decoder_<m>`` (``separate_decoders``); each
stack ends in its ``encoder_norm``. ``decoder_projection_<m>``, ``mask_token_<m>`` and ``output_projection_<m>`` are
per modality; ``Encoder_modality_token_<m>`` / ``Decoder_modality_token_<m>`` exist when modality tokens were on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from avmae.export.scenic_layout import (MODALITY, VIDEO_FRAMES, VIDEO_SIZE, Params, ScenicConversion,
                                        ScenicLayoutError, as_tensor, audio_embedding, encoder_size, layer_norm,
                                        linear, scenic_audio, scenic_numerics, stack, stack_dims, video_embedding)
from avmae.export.scenic_options import DECODER_STRATEGIES, ENCODER_STRATEGIES

# (audio, video) mask ratios of the recipe of each fusion strategy: AudioSet pretrains mid fusion
# (configs/audioset/pretrain.py), VGGSound late (configs/vggsound/pretrain.py).
MASK_RATIOS = {"mid": (0.7, 0.9), "late": (0.5, 0.9)}


def _video_embedding_name(p: Params, names: tuple[str, ...]) -> str:
    found = [n for n in names if p.has(f"{n}/kernel")]
    if len(found) != 1:
        raise ScenicLayoutError(f"expected one video patch embedding of {list(names)}, found {found}")
    return found[0]


def _encoder_strategy(p: Params, given: str | None) -> str:
    """From the stack names; ``Transformer`` alone is concat_and_encode or same_encoder, which only the config says."""
    if p.prefixed("Transformer_concat/"):
        found = "separate_encoders_and_concat"
    elif p.prefixed("Transformer_rgb/") or p.prefixed("Transformer_spectrogram/"):
        found = "separate_encoders"
    elif p.prefixed("Transformer/"):
        if given not in ("concat_and_encode", "same_encoder"):
            raise ScenicLayoutError("one encoder stack 'Transformer' is either concat_and_encode or same_encoder; "
                                    "the parameters cannot tell: give encoder_strategy, as the checkpoint's config "
                                    "says")
        return given
    else:
        raise ScenicLayoutError("no encoder stack (Transformer, Transformer_<modality>, Transformer_concat)")
    if given and given != found:
        raise ScenicLayoutError(f"the parameters are a {found} encoder, not {given}")
    return found


def _decoder_strategy(p: Params, given: str | None) -> str:
    """``Decoder_<m>``: separate_decoders. ``Decoder``: same_decoder (both released recipes) unless the config said
    concat_and_decode, which names its parameters the same."""
    if p.prefixed("Decoder_rgb/") or p.prefixed("Decoder_spectrogram/"):
        found = "separate_decoders"
        if given and given != found:
            raise ScenicLayoutError(f"the parameters are a {found} decoder, not {given}")
        return found
    if not p.prefixed("Decoder/"):
        raise ScenicLayoutError("no decoder stack (Decoder or Decoder_<modality>)")
    if given not in (None, "same_decoder", "concat_and_decode"):
        raise ScenicLayoutError("the parameters have one 'Decoder' stack: same_decoder or concat_and_decode, not "
                                f"{given}")
    return given or "same_decoder"


def _modality_tokens(p: Params, prefix: str, dst: Callable[[str], str]) -> dict[str, torch.Tensor]:
    """``<prefix>_modality_token_<m>`` (1, 1, width) of both modalities, or none."""
    names = {ours: f"{prefix}_modality_token_{scenic}" for scenic, ours in MODALITY.items()}
    present = [n for n in names.values() if p.has(n)]
    if present and len(present) != len(names):
        raise ScenicLayoutError(f"modality tokens for one modality only: {present}")
    return {dst(ours): as_tensor(p.take(name)) for ours, name in names.items() if present}


@dataclass
class _PretrainLayout:
    """What the parameters say about the pretraining model (and what the caller said for them)."""
    encoder: str  # Scenic's encoder strategy
    depth: int  # encoder blocks a token passes, joint ones included
    joint: int  # Transformer_concat blocks (mid fusion), else 0
    dims: dict[str, int]  # the encoder blocks' width, heads, MLP width
    decoder: str  # Scenic's decoder strategy
    decoder_depth: int
    decoder_dims: dict[str, int]
    video_name: str  # the video patch embedding's name (the releases differ in its case)
    video_patch: dict[str, int]
    audio_patch: int
    modality_tokens: bool
    inpainting: bool

    @property
    def fusion(self) -> str:
        return ENCODER_STRATEGIES[self.encoder]

    @property
    def mask_ratios(self) -> tuple[float, float]:
        return MASK_RATIOS.get(self.fusion, MASK_RATIOS["mid"])


def _modality_stacks(p: Params, stack_name: str, dst: str, state: dict[str, torch.Tensor]) -> dict[str, int]:
    """``<stack_name>_<m>`` -> ``<dst>.<m>`` with its norm, for both modalities (video first); their depths."""
    depths = {}
    for scenic, ours in (("rgb", "video"), ("spectrogram", "audio")):
        part, depths[ours] = stack(p, f"{stack_name}_{scenic}", f"{dst}.{ours}")
        state.update(part)
        state.update(layer_norm(p, f"{stack_name}_{scenic}/encoder_norm", f"{dst}.{ours}.norm"))
    return depths


def _encoder_stacks(p: Params, fusion: str, state: dict[str, torch.Tensor]) -> tuple[int, int, dict[str, int]]:
    """The encoder's blocks and norms into ``state``; returns (depth, joint layers, block dims)."""
    joint = 0
    if fusion in ("mid", "late"):
        depths = _modality_stacks(p, "Transformer", "encoder", state)
        if depths["audio"] != depths["video"]:
            raise ScenicLayoutError(f"the modality stacks differ in depth: {depths}")
        depth = depths["audio"]
        dims = stack_dims(p, "Transformer_rgb")
        if fusion == "mid":
            part, joint = stack(p, "Transformer_concat", "encoder.joint")
            state.update(part)
            state.update(layer_norm(p, "Transformer_concat/encoder_norm", "encoder.joint.norm"))
            depth += joint
    else:
        target = "encoder.joint" if fusion == "early" else "encoder.shared"
        part, depth = stack(p, "Transformer", target)
        state.update(part)
        state.update(layer_norm(p, "Transformer/encoder_norm", f"{target}.norm"))
        dims = stack_dims(p, "Transformer")
    width = state["tokenizer.audio_embed.weight"].shape[0]
    if dims["width"] != width:
        raise ScenicLayoutError(f"patch embeddings of width {width} feed blocks of width {dims['width']}")
    return depth, joint, dims


def _decoder_stacks(p: Params, decoder: str, state: dict[str, torch.Tensor]) -> tuple[int, dict[str, int]]:
    """The decoder's blocks and norms into ``state``; returns (depth, block dims)."""
    if decoder == "separate_decoders":
        depths = _modality_stacks(p, "Decoder", "decoder.blocks", state)
        if len(set(depths.values())) != 1:
            raise ScenicLayoutError(f"the two decoders differ in depth: {sorted(set(depths.values()))}")
        return depths["audio"], stack_dims(p, "Decoder_rgb")
    part, depth = stack(p, "Decoder", "decoder.blocks")
    state.update(part)
    state.update(layer_norm(p, "Decoder/encoder_norm", "decoder.blocks.norm"))
    return depth, stack_dims(p, "Decoder")


def _decoder_ends(p: Params, state: dict[str, torch.Tensor]) -> None:
    """Per modality: the projection into the decoder, its mask token, and the output projection."""
    for scenic, ours in (("rgb", "video"), ("spectrogram", "audio")):
        state.update(linear(p, f"decoder_projection_{scenic}", f"decoder.embed.{ours}", bias_default=1))
        state[f"decoder.mask_token.{ours}"] = as_tensor(p.take(f"mask_token_{scenic}"))
        state.update(linear(p, f"output_projection_{scenic}", f"decoder.head.{ours}"))


def _encoder_and_decoder_tokens(p: Params, state: dict[str, torch.Tensor]) -> bool:
    """The modality tokens of the encoder and the decoder into ``state``; whether there are any."""
    encoder_tokens = _modality_tokens(p, "Encoder", lambda m: f"tokenizer.{m}_type")
    decoder_tokens = _modality_tokens(p, "Decoder", lambda m: f"decoder.modality_type.{m}")
    if bool(encoder_tokens) != bool(decoder_tokens):
        raise ScenicLayoutError("modality tokens in the encoder or the decoder only: avmae has both or neither")
    state.update(encoder_tokens)
    state.update(decoder_tokens)
    return bool(encoder_tokens)


def _avmae_model(layout: _PretrainLayout) -> dict:
    """The avmae model config that computes what the Scenic model computes."""
    fusion, dims, decoder_dims = layout.fusion, layout.dims, layout.decoder_dims
    audio_ratio, video_ratio = layout.mask_ratios
    return {
        "encoder": {**encoder_size(dims["width"], layout.depth, dims["heads"], dims["mlp"]), "fusion": fusion,
                    "joint_layers": layout.joint if fusion == "mid" else 2, "drop_path": 0.0,
                    "drop_path_rescale": False, "layer_norm_eps": 1e-6, "modality_norms": False,
                    "norm_before_joint": True},
        "decoder": {"kind": DECODER_STRATEGIES[layout.decoder], "width": decoder_dims["width"],
                    "depth": layout.decoder_depth, "heads": decoder_dims["heads"], "mlp": decoder_dims["mlp"],
                    "layer_norm_eps": 1e-6, "shared_input": False, "zero_init_heads": True},
        "objective": "inpainting" if layout.inpainting else "reconstruction",
        "mask": {"audio_ratio": audio_ratio, "video_ratio": video_ratio, "audio_mode": "random",
                 "video_mode": "random"},
        "contrastive": {"weight": 0.0},
        "audio": scenic_audio(layout.audio_patch),
        "video": {"frames": VIDEO_FRAMES["pretrain"], "size": VIDEO_SIZE, **layout.video_patch},
        "loss_weight_audio": 0.5, "loss_weight_video": 0.5, "norm_pix_loss": False,
        "modality_embeddings": layout.modality_tokens, **scenic_numerics(),
    }


def _scenic_config(layout: _PretrainLayout) -> dict:
    """The Scenic config the parameters imply (the recipe's values where they do not say)."""
    dims, decoder_dims, patch = layout.dims, layout.decoder_dims, layout.video_patch
    audio_ratio, video_ratio = layout.mask_ratios
    return {
        "model_name": "vivit_multimodal_masked_autoencoder",
        "model": {"hidden_size": dims["width"], "num_heads": dims["heads"], "mlp_dim": dims["mlp"],
                  "num_layers": layout.depth, "fusion_layers": layout.joint if layout.fusion == "mid" else None,
                  "encoder_strategy": layout.encoder, "decoder_strategy": layout.decoder,
                  "patches": {"size": [patch["patch"], patch["patch"], patch["tubelet"]]},
                  "decoder_config": {"hidden_size": decoder_dims["width"], "num_heads": decoder_dims["heads"],
                                     "mlp_dim": decoder_dims["mlp"], "num_layers": layout.decoder_depth},
                  "use_inpainting": layout.inpainting, "use_modality_tokens": layout.modality_tokens,
                  "positional_embedding": "sinusoidal_1d", "positional_embedding_decoder": "sinusoidal_1d",
                  "normalise_encoder_output": True, "classifier": "none"},
        "masked_feature_loss": {"token_mask_probability_dict": {"spectrogram": audio_ratio, "rgb": video_ratio},
                                "modality_weight": {"rgb": 0.5, "spectrogram": 0.5}, "standardise_per_patch": False,
                                "normalise_by_output_dimension": True},
        "video_embedding_name": layout.video_name,
    }


def _conversion_report(layout: _PretrainLayout, decoder_given: bool) -> dict:
    """The strategies found, the depths, and what was assumed because the parameters cannot say it."""
    assumed = ["mask ratios and loss weights (the recipe of the fusion strategy: mid = AudioSet, late = VGGSound)",
               "per-patch target normalisation off (both recipes)"]
    if layout.decoder == "same_decoder" and not decoder_given:
        assumed.append("same_decoder (concat_and_decode has the same parameter names)")
    if layout.inpainting:
        assumed.append("modality inpainting (use_inpainting is not in the parameters)")
    return {"encoder_strategy": layout.encoder, "decoder_strategy": layout.decoder, "assumed": assumed,
            "layers": {"encoder": layout.depth, "joint": layout.joint, "decoder": layout.decoder_depth}}


def convert_pretraining(p: Params, encoder_strategy: str | None = None, decoder_strategy: str | None = None,
                        inpainting: bool = False) -> ScenicConversion:
    state: dict[str, torch.Tensor] = {}
    video_name = _video_embedding_name(p, ("embedding_rgb", "embedding_RGB"))
    video_state, video_patch = video_embedding(p, video_name)
    audio_state, audio_patch = audio_embedding(p, "embedding_spectrogram")
    state.update(video_state)
    state.update(audio_state)
    encoder = _encoder_strategy(p, encoder_strategy)
    depth, joint, dims = _encoder_stacks(p, ENCODER_STRATEGIES[encoder], state)
    decoder = _decoder_strategy(p, decoder_strategy)
    decoder_depth, decoder_dims = _decoder_stacks(p, decoder, state)
    _decoder_ends(p, state)
    modality_tokens = _encoder_and_decoder_tokens(p, state)
    layout = _PretrainLayout(encoder, depth, joint, dims, decoder, decoder_depth, decoder_dims, video_name,
                             video_patch, audio_patch, modality_tokens, inpainting)
    run = {"task": "pretrain", "model": _avmae_model(layout)}
    report = _conversion_report(layout, decoder_given=decoder_strategy is not None)
    return ScenicConversion("pretrain", state, run, _scenic_config(layout), {}, report)
