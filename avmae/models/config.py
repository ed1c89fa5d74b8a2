"""The model's configuration: encoder size, fusion, decoder, objective, masking, contrastive term, inputs.

Defaults are the AV-MAE AudioSet pretraining recipe (reference/methods.md A.2) at ViT-L: mid fusion 22 + 2,
a shared 4-layer 512-wide decoder, joint reconstruction, random masking 0.7 audio / 0.9 video, loss weights 0.5/0.5,
raw-pixel targets. Every choice of the paper (and CAV-MAE's contrastive term) is a field here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# name -> (width, depth, heads, mlp width); ViT sizes as in Scenic's vivit configs (methods.md A.2).
ENCODER_SIZES: dict[str, tuple[int, int, int, int]] = {
    "tiny": (192, 12, 3, 768),
    "small": (384, 12, 6, 1536),
    "base": (768, 12, 12, 3072),
    "large": (1024, 24, 16, 4096),
    "huge": (1280, 32, 16, 5120),
}

Fusion = Literal["early", "mid", "late", "shared"]
DecoderKind = Literal["separate", "shared", "joint"]
Objective = Literal["reconstruction", "inpainting"]


@dataclass
class AudioInput:
    frames: int = 1024  # log-mel frames (10 ms each)
    mel_bins: int = 128
    patch: int = 16  # 16x16 patches: 64 (time) x 8 (mel) = 512 tokens, time-major


@dataclass
class VideoInput:
    frames: int = 16
    size: int = 224
    patch: int = 16
    tubelet: int = 2  # 2x16x16 tubelets: 8 x 14 x 14 = 1568 tokens


@dataclass
class EncoderConfig:
    size: Literal["tiny", "small", "base", "large", "huge", "custom"] = "large"
    width: int = 0  # only for size "custom"
    depth: int = 0
    heads: int = 0
    mlp: int = 0
    fusion: Fusion = "mid"
    joint_layers: int = 2  # mid fusion: the last k of `depth` layers run on both modalities (AV-MAE AudioSet: 2)
    drop_path: float = 0.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6

    def dims(self) -> tuple[int, int, int, int]:
        if self.size == "custom":
            if min(self.width, self.depth, self.heads, self.mlp) <= 0:
                raise ValueError("encoder size 'custom' needs width, depth, heads and mlp")
            return self.width, self.depth, self.heads, self.mlp
        return ENCODER_SIZES[self.size]


@dataclass
class DecoderConfig:
    kind: DecoderKind = "shared"  # AV-MAE AudioSet: one decoder applied to each modality on its own
    width: int = 512
    depth: int = 4
    heads: int = 8
    mlp: int = 2048


@dataclass
class MaskConfig:
    audio_ratio: float = 0.7  # AV-MAE AudioSet (VGGSound: 0.5)
    video_ratio: float = 0.9
    audio_mode: Literal["random", "time", "freq", "time_freq"] = "random"
    video_mode: Literal["random", "tube"] = "random"


@dataclass
class ContrastiveConfig:
    weight: float = 0.0  # CAV-MAE uses 0.01 with temperature 0.05; 0 turns the term off (AV-MAE)
    temperature: float = 0.05
    bidirectional: bool = True  # False = CAV-MAE's default: video->audio only


@dataclass
class ModelConfig:
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    objective: Objective = "reconstruction"
    mask: MaskConfig = field(default_factory=MaskConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    audio: AudioInput = field(default_factory=AudioInput)
    video: VideoInput = field(default_factory=VideoInput)
    loss_weight_audio: float = 0.5  # AV-MAE weights each modality's loss by 0.5
    loss_weight_video: float = 0.5
    norm_pix_loss: bool = False  # AV-MAE: raw patches; CAV-MAE / MAE: per-patch normalised targets
    modality_embeddings: bool = True
    activation_checkpointing: bool = False

    def validate(self) -> "ModelConfig":
        width, depth, heads, _ = self.encoder.dims()
        if width % heads:
            raise ValueError(f"encoder width {width} is not divisible by {heads} heads")
        if self.decoder.width % self.decoder.heads:
            raise ValueError(f"decoder width {self.decoder.width} is not divisible by {self.decoder.heads} heads")
        if self.encoder.fusion == "mid" and not 0 < self.encoder.joint_layers < depth:
            raise ValueError(f"mid fusion needs 0 < joint_layers < depth ({depth}), got {self.encoder.joint_layers}")
        if self.objective == "inpainting" and self.decoder.kind == "joint":
            raise ValueError("modality inpainting cannot use a joint decoder: each modality's decoder must see only "
                             "the other modality's tokens; use decoder.kind separate or shared")
        for name, ratio in (("audio", self.mask.audio_ratio), ("video", self.mask.video_ratio)):
            if not 0.0 <= ratio < 1.0:
                raise ValueError(f"mask.{name}_ratio must be in [0, 1), got {ratio}")
        if self.audio.frames % self.audio.patch or self.audio.mel_bins % self.audio.patch:
            raise ValueError("audio frames and mel bins must be multiples of the patch size")
        if self.video.frames % self.video.tubelet or self.video.size % self.video.patch:
            raise ValueError("video frames must be a multiple of the tubelet, the size a multiple of the patch")
        return self
