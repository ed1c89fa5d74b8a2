"""Scenic's fine-tuned AV-MAE model (MBT, google-research/scenic ``scenic/projects/av_mae/mbt.py``) in avmae's
names: avmae's ``BottleneckClassifier``.

MBT has one ``Transformer`` whose blocks are ``encoderblock_i`` for the first modality of ``modality_fusion`` (rgb in
the audio-visual models) and ``encoderblock_i_spec`` for audio; a single-modality fine-tune has ``encoderblock_i``
only, whatever its modality, which its patch embedding tells (``embedding`` for rgb, ``embedding_spectrogram`` for
audio). One ``encoder_norm`` runs over [rgb ; spectrogram], the ``bottleneck`` tokens join from ``fusion_layer`` on,
and ``ProjectionHeadAndClassifier_0/output_projection`` is shared by the modalities, whose logits are averaged at
evaluation. The fusion layer is not in the parameters: the recipes' value is taken from the class count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from avmae.export.scenic_layout import (SCENIC_NAME, VIDEO_FRAMES, VIDEO_SIZE, Params, ScenicConversion,
                                        ScenicLayoutError, as_tensor, audio_embedding, block, encoder_size,
                                        layer_norm, linear, scenic_audio, scenic_numerics, stack_dims,
                                        video_embedding)

MBT_HEAD = "ProjectionHeadAndClassifier_0/output_projection"
FUSION_LAYER_BY_CLASSES = {527: 18, 309: 16}  # configs/audioset/finetune.py, configs/vggsound/finetune.py
LABEL_MODE_BY_CLASSES = {527: "multi", 309: "single"}  # mbt_multilabel_classification (sigmoid) vs mbt_classification


def mbt_modalities(p: Params) -> list[str]:
    """The avmae modalities of an MBT checkpoint, first the one whose blocks carry no suffix (Scenic's
    ``modality_fusion[0]``): rgb + spectrogram, or one of them alone, told by its patch embedding."""
    if p.block_indices("Transformer", "_spec"):
        return ["video", "audio"]
    video, audio = p.has("embedding/kernel"), p.has("embedding_spectrogram/kernel")
    if video == audio:
        raise ScenicLayoutError("a single-modality MBT checkpoint with " + ("both" if video else "neither") +
                                " patch embeddings (embedding for rgb, embedding_spectrogram for audio)")
    return ["video"] if video else ["audio"]


def mbt_key_map(depth: int, modalities: list[str]) -> dict[str, str]:
    """Scenic MBT block path -> avmae block prefix."""
    mapping = {}
    for i in range(depth):
        for index, modality in enumerate(modalities):
            suffix = "" if index == 0 else "_spec"
            mapping[f"Transformer/encoderblock_{i}{suffix}"] = f"encoder.{modality}.blocks.{i}"
    return mapping


@dataclass
class _MbtLayout:
    """What the parameters (and the recipe of their class count, where they do not say) tell of the MBT model."""
    modalities: list[str]
    depth: int
    dims: dict[str, int]  # the blocks' width, heads, MLP width
    classes: int
    bottleneck_tokens: int
    fusion_layer: int
    label_mode: str  # "multi" (sigmoid) or "single" (softmax)
    video_patch: dict[str, int]
    audio_patch: int

    @property
    def audio_visual(self) -> bool:
        return _audio_visual(self.modalities)


def _audio_visual(modalities: list[str]) -> bool:
    return len(modalities) == 2


def _mbt_embeddings(p: Params, modalities: list[str], state: dict[str, torch.Tensor]) -> tuple[dict[str, int], int]:
    """The patch embeddings of ``modalities`` into ``state``; returns the video and audio patch sizes (the recipe's
    where a modality is absent)."""
    video_patch, audio_patch = {"tubelet": 2, "patch": 16}, 16
    if "video" in modalities:
        part, video_patch = video_embedding(p, "embedding")
        state.update(part)
    if "audio" in modalities:
        part, audio_patch = audio_embedding(p, "embedding_spectrogram")
        state.update(part)
    return video_patch, audio_patch


def _mbt_encoder(p: Params, modalities: list[str], depth: int, state: dict[str, torch.Tensor]) -> None:
    """The blocks (``depth`` per modality), the norm, the bottleneck tokens and the head into ``state``."""
    for src, dst in mbt_key_map(depth, modalities).items():
        state.update(block(p, src, dst))
    # One norm over [rgb ; spectrogram]: avmae's shared_norm, one set of parameters as in training
    state.update(layer_norm(p, "Transformer/encoder_norm", "encoder_norm"))
    bottleneck = p.take("bottleneck")  # single-modality MBT builds it too, and never uses it (mbt.py Encoder)
    state["bottleneck"] = as_tensor(bottleneck)
    state.update(linear(p, MBT_HEAD, "heads.label"))


def _fusion_layer(given: int | None, classes: int, depth: int, audio_visual: bool) -> int:
    """The given fusion layer, or the recipe's for the class count; a single modality has no bottleneck at all."""
    if not audio_visual:
        return depth  # one modality: Scenic runs plain blocks throughout, no bottleneck
    fusion_layer = given
    if fusion_layer is None:
        if classes not in FUSION_LAYER_BY_CLASSES:
            raise ScenicLayoutError(f"a head of {classes} classes is neither AudioSet's 527 nor VGGSound's 309: the "
                                    "checkpoint does not record its fusion layer: give fusion_layer")
        fusion_layer = FUSION_LAYER_BY_CLASSES[classes]
    if not 0 <= fusion_layer < depth:  # avmae's MBT fuses at least its last layer
        raise ScenicLayoutError(f"fusion layer {fusion_layer} is outside 0..{depth - 1}")
    return fusion_layer


def _label_mode(given: str | None, classes: int) -> str:
    mode = given or LABEL_MODE_BY_CLASSES.get(classes)
    if mode not in ("multi", "single"):
        raise ScenicLayoutError(f"a head of {classes} classes: give label_mode multi (sigmoid, AudioSet-like) or "
                                "single (softmax, VGGSound-like)")
    return mode


def _mbt_run(layout: _MbtLayout) -> dict:
    """The avmae fine-tuning run config that computes what the MBT model computes."""
    dims = layout.dims
    model = {
        "encoder": {**encoder_size(dims["width"], layout.depth, dims["heads"], dims["mlp"]), "fusion": "late",
                    "drop_path": 0.3, "drop_path_rescale": False, "layer_norm_eps": 1e-6},
        "audio": scenic_audio(layout.audio_patch),
        "video": {"frames": VIDEO_FRAMES["finetune"], "size": VIDEO_SIZE, **layout.video_patch},
        "modality_embeddings": False, **scenic_numerics(),
    }
    modality = "av" if layout.audio_visual else layout.modalities[0]
    finetune = {"classifier": "bottleneck", "modality": modality,
                "bottleneck": {"tokens": layout.bottleneck_tokens, "fusion_layer": layout.fusion_layer,
                               "shared_norm": True},
                "loss": "bce_sum" if layout.label_mode == "multi" else "ce", "label_smoothing": 0.3}
    # Scenic's evaluation resizes the short side to 256 and centre-crops 224 (configs/*/finetune.py min_resize_test)
    return {"task": "finetune", "model": model, "finetune": finetune, "data": {"eval_short_side": 256}}


def _mbt_scenic_config(layout: _MbtLayout) -> dict:
    """The Scenic config the parameters imply (the recipe's values where they do not say)."""
    dims, patch = layout.dims, layout.video_patch
    return {
        "model_name": "mbt_multilabel_classification" if layout.label_mode == "multi" else "mbt_classification",
        "num_classes": layout.classes,
        "model": {"hidden_size": dims["width"], "num_heads": dims["heads"], "mlp_dim": dims["mlp"],
                  "num_layers": layout.depth, "fusion_layer": layout.fusion_layer,
                  "modality_fusion": [SCENIC_NAME[m] for m in layout.modalities], "use_bottleneck": True,
                  "n_bottlenecks": layout.bottleneck_tokens, "test_with_bottlenecks": True, "share_encoder": False,
                  "classifier": "gap", "representation_size": None, "stochastic_droplayer_rate": 0.3,
                  "patches": {"size": [patch["patch"], patch["patch"], patch["tubelet"]]}},
        "label_smoothing": 0.3,
    }


def _mbt_report(layout: _MbtLayout, fusion_layer_given: bool, label_mode_given: bool) -> dict:
    """What was found, and what was assumed because the parameters cannot say it."""
    assumed = ["label smoothing 0.3 and stochastic depth 0.3 (training only)"]
    if layout.audio_visual and not fusion_layer_given:
        assumed.append(f"fusion layer {layout.fusion_layer} (the recipe of a {layout.classes}-class head)")
    if not label_mode_given:
        assumed.append(f"label mode {layout.label_mode} (the recipe of a {layout.classes}-class head)")
    return {"modalities": layout.modalities, "classes": layout.classes, "fusion_layer": layout.fusion_layer,
            "label_mode": layout.label_mode, "layers": {"encoder": layout.depth}, "assumed": assumed}


def convert_mbt(p: Params, fusion_layer: int | None = None, label_mode: str | None = None) -> ScenicConversion:
    modalities = mbt_modalities(p)
    state: dict[str, torch.Tensor] = {}
    video_patch, audio_patch = _mbt_embeddings(p, modalities, state)
    depth = len(p.block_indices("Transformer"))
    _mbt_encoder(p, modalities, depth, state)
    classes = int(state["heads.label.weight"].shape[0])
    dims = stack_dims(p, "Transformer")
    layout = _MbtLayout(modalities, depth, dims, classes, int(state["bottleneck"].shape[1]),
                        _fusion_layer(fusion_layer, classes, depth, _audio_visual(modalities)),
                        _label_mode(label_mode, classes), video_patch, audio_patch)
    report = _mbt_report(layout, fusion_layer is not None, label_mode is not None)
    other = "" if layout.audio_visual else ("audio" if modalities == ["video"] else "video")
    return ScenicConversion("finetune", state, _mbt_run(layout), _mbt_scenic_config(layout), {"label": classes},
                            report, other)
