"""The model's configuration: encoder size, fusion, decoder, objective, masking, contrastive term, inputs.

Defaults are the AV-MAE AudioSet pretraining recipe (google-research/scenic scenic/projects/av_mae/configs/audioset/pretrain.py) at ViT-L: mid fusion 22 + 2,
a shared 4-layer 512-wide decoder, joint reconstruction, random masking 0.7 audio / 0.9 video, loss weights 0.5/0.5,
raw-pixel targets. Every choice of the paper (and CAV-MAE's contrastive term) is a field here, and so is every way
CAV-MAE's architecture differs (YuanGongND/cav-mae src/models/cav_mae.py; configs/model/cavmae_base.yaml sets them all): frequency-major
audio tokens, MAE's 2-D position table for its single frame, stored position tables, per-modality LayerNorms in the
joint layer, no LayerNorm before it, one decoder input projection, mean-of-all-tokens pooling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from avmae.config import at_least

# name -> (width, depth, heads, mlp width); ViT sizes as in Scenic's vivit configs (google-research/scenic scenic/projects/vivit).
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
    # log-mel frames (10 ms each). Need not be a multiple of the patch: the token grid floors, as Scenic's VALID
    # patch convolution does (1000 frames give 62 time patches; frames 992-999 reach no token and no target).
    frames: int = 1024
    mel_bins: int = 128
    patch: int = 16  # 16x16 patches: 64 (time) x 8 (mel) = 512 tokens, time-major
    # freq_major: CAV-MAE's order (YuanGongND/cav-mae src/models/cav_mae.py): the log-mel is transposed to (mel, time) before patching, so token
    # index = f * 64 + t, each patch is flattened (mel, time), and its audio kernels load unchanged. A token's position
    # embedding is the same in both orders (time in the first half of the channels, as CAV-MAE's table).
    token_order: Literal["time_major", "freq_major"] = "time_major"
    # The log-mel front end the weights were trained on, which the shards must have been built with (avmae-shard
    # build --audio-frontend; checked when a run or an evaluation opens them): "cavmae" (CAV-MAE's Kaldi fbank) or
    # "scenic" (Google's AV-MAE, the input of its released checkpoints; docs/scenic.md#the-audio-front-end).
    frontend: Literal["cavmae", "scenic"] = "cavmae"


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
    layer_norm_eps: float = 1e-6  # MAE / AV-MAE; CAV-MAE uses PyTorch's default 1e-5
    # true: a kept residual branch is scaled by 1/(1 - p) (timm's DropPath). false: a dropped branch is multiplied by
    # 0 and a kept one by 1, as Scenic's StochasticDepth (scenic/model_lib/layers/nn_layers.py), so a branch averages
    # 1 - p in training and 1 at evaluation.
    drop_path_rescale: bool = True
    # The joint layers get a second set of LayerNorms per modality (norm1/norm2 and the final norm), used whenever they
    # see one modality alone: the contrastive term, audio-only or video-only inputs (CAV-MAE's norm1_a/.../norm_a).
    modality_norms: bool = False
    # Mid fusion: each modality's stack ends with a LayerNorm before the joint layers. CAV-MAE has none there.
    norm_before_joint: bool = True

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
    layer_norm_eps: float = 1e-6  # CAV-MAE: 1e-5
    # One input projection and one mask token for both modalities (CAV-MAE's decoder_embed / mask_token) instead of
    # one of each per modality.
    shared_input: bool = False
    zero_init_heads: bool = True  # AV-MAE zero-initialises the output projections; CAV-MAE keeps xavier


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
    # global: every clip of the global batch is a negative; local: only this rank's (CAV-MAE's DataParallel loss
    # saw its GPU's chunk: 12 negatives at batch 48 on 4 GPUs: YuanGongND/cav-mae
    # src/models/cav_mae.py forward_contrastive runs inside nn.DataParallel)
    negatives: Literal["global", "local"] = "global"


@dataclass
class PosEmbedConfig:
    """Fixed sin-cos position embeddings.

    kind grid: MAE's formula per axis of the token grid (one block of channels per axis, half sines, half cosines).
    kind flat_1d: Scenic's Add1DPositionEmbedding (scenic/model_lib/layers/attention_layers.py, sinusoidal_init):
    one table over the flat token index n of each modality, channel 2i = sin(n w_i), 2i+1 = cos(n w_i),
    w_i = 10000^(-2i/width); AV-MAE adds it in the encoder, the decoder and MBT."""

    kind: Literal["grid", "flat_1d"] = "grid"

    # column_row: MAE's get_2d_sincos_pos_embed for one frame (CAV-MAE's pos_embed_v): the first half of the channels
    # encodes the column, the second half the row, no time axis. time_row_column: a third of the channels per axis.
    video_axes: Literal["time_row_column", "column_row"] = "time_row_column"
    # stored: parameter tables of the configured grid, initialised to the same sin-cos (CAV-MAE's pos_embed_a/v and
    # decoder_pos_embed_a/v); otherwise computed for whatever grid comes in. trainable: CAV-MAE freezes them in
    # pretraining (tr_pos=False) and trains them in fine-tuning (CAVMAEFT's default tr_pos=True).
    stored: bool = False
    trainable: bool = False


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
    pos_embed: PosEmbedConfig = field(default_factory=PosEmbedConfig)
    # The classifier's pooling: modality_mean averages each present modality's mean token (features keep their scale
    # with a modality missing); token_mean is the mean of all tokens of the concatenation (CAV-MAE's CAVMAEFT).
    classifier_pooling: Literal["modality_mean", "token_mean"] = "modality_mean"
    # One modality given to a classifier with encoder.modality_norms (CAV-MAE): "own" runs it through its own norms
    # (CAV-MAE's audioonly / videoonly), "averaged" averages that with a pass through the joint norms
    # (missingaudioonly / missingvideoonly). It changes the outputs, so it is a config field saved with the run.
    alone_norms: Literal["own", "averaged"] = "own"
    # The tokenizer refuses inputs of another size than audio / video describe (another clip length, crop or log-mel
    # length), so that a run trains the model its config names and its MFU counts that model. true takes any size on
    # purpose (a study at another clip length): sin-cos positions are then computed for the grid that arrives, and
    # stored tables (pos_embed.stored) still refuse it.
    other_grids: bool = False
    activation_checkpointing: bool = False
    # The MLPs' GELU: exact (erf; PyTorch's default, MAE / CAV-MAE) or tanh, the approximation flax's nn.gelu
    # computes (jax.nn.gelu approximate=True), which Scenic's ViViT and MBT blocks use.
    gelu: Literal["exact", "tanh"] = "exact"
    # Initialisation of a new model: mae (xavier-uniform linears and patch kernels, fused qkv as one matrix) or
    # scenic (flax defaults as Scenic's ViViT / AV-MAE set them: LeCun-normal patch kernels, q, k and v each
    # xavier-uniform on its own (width, width), MLP biases normal(1e-6), zero mask tokens and output projections).
    init: Literal["mae", "scenic"] = "mae"
    # norm_pix_loss targets: the patch variance unbiased (MAE's torch.var) or biased (Scenic's jax.nn.standardize),
    # both with eps 1e-6 inside the square root.
    norm_pix_variance: Literal["unbiased", "biased"] = "unbiased"
    # objective inpainting, the decoder input of modality m. avmae: the other modality encoded alone, at its own
    # positions, followed by a mask token at every position of m; the loss covers all of m. scenic: Scenic's
    # unshuffle_tokens_inpainting (scenic/projects/av_mae/vivit_multimodal.py): the other modality's visible tokens
    # from the fused encoder output in slots 0..n-1 of a sequence of m's length N, m's mask token in slots n..N-1,
    # m's decoder positions over all N slots; the loss covers slots n..N-1, slot j against m's patch j.
    inpainting_layout: Literal["avmae", "scenic"] = "avmae"

    def validate(self) -> "ModelConfig":
        width, depth, heads, _ = self.encoder.dims()
        at_least(1, {f"model.{key}": value for key, value in (
            ("audio.frames", self.audio.frames), ("audio.mel_bins", self.audio.mel_bins),
            ("audio.patch", self.audio.patch), ("video.frames", self.video.frames), ("video.size", self.video.size),
            ("video.patch", self.video.patch), ("video.tubelet", self.video.tubelet),
            ("decoder.width", self.decoder.width), ("decoder.depth", self.decoder.depth),
            ("decoder.heads", self.decoder.heads), ("decoder.mlp", self.decoder.mlp))})
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
        if self.audio.mel_bins % self.audio.patch:
            raise ValueError(f"model.audio.mel_bins ({self.audio.mel_bins}) must be a multiple of model.audio.patch "
                             f"({self.audio.patch})")
        if self.audio.frames < self.audio.patch:
            raise ValueError(f"model.audio.frames ({self.audio.frames}) must be at least model.audio.patch "
                             f"({self.audio.patch}): no time patch fits")
        if self.video.frames % self.video.tubelet or self.video.size % self.video.patch:
            raise ValueError("video frames must be a multiple of the tubelet, the size a multiple of the patch")
        if self.encoder.modality_norms and self.encoder.fusion not in ("early", "mid"):
            raise ValueError(f"encoder.modality_norms needs joint layers; fusion {self.encoder.fusion!r} has none")
        if self.pos_embed.video_axes == "column_row" and self.video.frames // self.video.tubelet != 1:
            raise ValueError("pos_embed.video_axes column_row has no time axis: it needs one temporal token slice "
                             f"(video.frames / video.tubelet = 1), got {self.video.frames // self.video.tubelet}")
        if self.pos_embed.kind == "flat_1d":
            if self.pos_embed.video_axes != "time_row_column":
                raise ValueError("model.pos_embed.video_axes applies to kind grid; kind flat_1d has one flat axis")
            odd = [w for w in (width, self.decoder.width) if w % 2]
            if odd:
                raise ValueError(f"model.pos_embed.kind flat_1d needs even widths (sin and cos pairs), got {odd[0]}")
        if self.pos_embed.trainable and not self.pos_embed.stored:
            raise ValueError("pos_embed.trainable needs pos_embed.stored: computed embeddings have no parameters")
        return self


@dataclass
class BottleneckConfig:
    """MBT fine-tuning's attention bottleneck (models/bottleneck.py)."""

    tokens: int = 4  # AV-MAE's n_bottlenecks
    fusion_layer: int = 18  # first fused layer, counted from 0: AudioSet 18 of 24, VGGSound 16 (Scenic's configs)
    # One final LayerNorm for both modalities (Scenic's MBT: Transformer/encoder_norm over [rgb ; spectrogram],
    # scenic/projects/mbt/model.py) instead of one per modality encoder. A LayerNorm acts on each token alone, so
    # one norm over the concatenation is the same as that norm on each modality; sharing its parameters is what
    # makes training the same too (one set of scale and bias, its gradient summed over both modalities).
    shared_norm: bool = False


@dataclass
class MAViLConfig:
    """MAViL's terms on top of AV-MAE (models/mavil.py)."""

    intra_weight: float = 0.0  # stage 1: intra-modal contrastive weight; 0 = off (plain AV-MAE / CAV-MAE)
    intra_temperature: float = 0.1
    teacher: str = ""  # stage 2: a stage-1 pretraining export (run folder or .safetensors); "" = stage 1

    @property
    def enabled(self) -> bool:
        return self.intra_weight > 0 or bool(self.teacher)
