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

import torch

from avmae.export.scenic_layout import (AUDIO_FRAMES, MEL_BINS, SCENIC_NAME, VIDEO_FRAMES, VIDEO_SIZE, Params,
                                        ScenicConversion, ScenicLayoutError, as_tensor, audio_embedding, block,
                                        encoder_size, layer_norm, linear, scenic_numerics, stack_dims,
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


def convert_mbt(p: Params, fusion_layer: int | None = None, label_mode: str | None = None) -> ScenicConversion:
    modalities = mbt_modalities(p)
    state: dict[str, torch.Tensor] = {}
    video_patch, audio_patch = {"tubelet": 2, "patch": 16}, 16
    if "video" in modalities:
        part, video_patch = video_embedding(p, "embedding")
        state.update(part)
    if "audio" in modalities:
        part, audio_patch = audio_embedding(p, "embedding_spectrogram")
        state.update(part)
    depth = len(p.block_indices("Transformer"))
    for src, dst in mbt_key_map(depth, modalities).items():
        state.update(block(p, src, dst))
    # One norm over [rgb ; spectrogram]: avmae's shared_norm, one set of parameters as in training
    state.update(layer_norm(p, "Transformer/encoder_norm", "encoder_norm"))
    bottleneck = p.take("bottleneck")  # single-modality MBT builds it too, and never uses it (mbt.py Encoder)
    state["bottleneck"] = as_tensor(bottleneck)
    state.update(linear(p, MBT_HEAD, "heads.label"))
    classes = int(state["heads.label.weight"].shape[0])
    dims = stack_dims(p, "Transformer")
    two, given_layer = len(modalities) == 2, fusion_layer
    if not two:
        fusion_layer = depth  # one modality: Scenic runs plain blocks throughout, no bottleneck
    elif fusion_layer is None:
        if classes not in FUSION_LAYER_BY_CLASSES:
            raise ScenicLayoutError(f"a head of {classes} classes is neither AudioSet's 527 nor VGGSound's 309: the "
                                    "checkpoint does not record its fusion layer: give fusion_layer")
        fusion_layer = FUSION_LAYER_BY_CLASSES[classes]
    if two and not 0 <= fusion_layer < depth:  # avmae's MBT fuses at least its last layer
        raise ScenicLayoutError(f"fusion layer {fusion_layer} is outside 0..{depth - 1}")
    mode = label_mode or LABEL_MODE_BY_CLASSES.get(classes)
    if mode not in ("multi", "single"):
        raise ScenicLayoutError(f"a head of {classes} classes: give label_mode multi (sigmoid, AudioSet-like) or "
                                "single (softmax, VGGSound-like)")
    modality = "av" if two else modalities[0]
    model = {
        "encoder": {**encoder_size(dims["width"], depth, dims["heads"], dims["mlp"]), "fusion": "late",
                    "drop_path": 0.3, "drop_path_rescale": False, "layer_norm_eps": 1e-6},
        "audio": {"frames": AUDIO_FRAMES, "mel_bins": MEL_BINS, "patch": audio_patch, "token_order": "time_major"},
        "video": {"frames": VIDEO_FRAMES["finetune"], "size": VIDEO_SIZE, **video_patch},
        "modality_embeddings": False, **scenic_numerics(),
    }
    finetune = {"classifier": "bottleneck", "modality": modality,
                "bottleneck": {"tokens": int(bottleneck.shape[1]), "fusion_layer": fusion_layer,
                               "shared_norm": True},
                "loss": "bce_sum" if mode == "multi" else "ce", "label_smoothing": 0.3}
    # Scenic's evaluation resizes the short side to 256 and centre-crops 224 (configs/*/finetune.py min_resize_test)
    run = {"task": "finetune", "model": model, "finetune": finetune, "data": {"eval_short_side": 256}}
    scenic_modalities = [SCENIC_NAME[m] for m in modalities]
    scenic_config = {
        "model_name": "mbt_multilabel_classification" if mode == "multi" else "mbt_classification",
        "num_classes": classes,
        "model": {"hidden_size": dims["width"], "num_heads": dims["heads"], "mlp_dim": dims["mlp"], "num_layers": depth,
                  "fusion_layer": fusion_layer, "modality_fusion": scenic_modalities, "use_bottleneck": True,
                  "n_bottlenecks": int(bottleneck.shape[1]), "test_with_bottlenecks": True, "share_encoder": False,
                  "classifier": "gap", "representation_size": None, "stochastic_droplayer_rate": 0.3,
                  "patches": {"size": [video_patch["patch"], video_patch["patch"], video_patch["tubelet"]]}},
        "label_smoothing": 0.3,
    }
    assumed = ["label smoothing 0.3 and stochastic depth 0.3 (training only)"]
    if two and given_layer is None:
        assumed.append(f"fusion layer {fusion_layer} (the recipe of a {classes}-class head)")
    if label_mode is None:
        assumed.append(f"label mode {mode} (the recipe of a {classes}-class head)")
    report = {"modalities": modalities, "classes": classes, "fusion_layer": fusion_layer, "label_mode": mode,
              "layers": {"encoder": depth}, "assumed": assumed}
    other = "" if two else ("audio" if modalities == ["video"] else "video")
    conversion = ScenicConversion("finetune", state, run, scenic_config, {"label": classes}, report, other)
    conversion.report["label_mode"] = mode
    return conversion
