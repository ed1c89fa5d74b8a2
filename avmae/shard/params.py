"""The parameters of a shard build: what each sample contains (features) and how inputs become samples (build).

Both are written into ``manifest.json``; the loaders compare the features with what their config expects, so a
model is never trained on frames or log-mels made with other settings than it was told.

A field with a ``help`` in its metadata is also a flag of ``avmae-shard build`` (avmae/cli/flags.py): its name,
type, default and that help make the flag; a parameter named in backquotes is spelled as its flag.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from avmae.shard.errors import ParameterError
from avmae.shard.format import DEFAULT_LOGMEL_DTYPE
from avmae.shard.inputs.lists import DATASET_SEGMENT_SECONDS

# The log-mel recipes a build can store. cavmae: CAV-MAE's Kaldi fbank (avmae/shard/samples/logmel.py); scenic: the
# front end Google's AV-MAE checkpoints were trained on, as far as it is published
# (avmae/shard/samples/logmel_scenic.py).
AudioFrontend = Literal["cavmae", "scenic"]
AUDIO_FRONTENDS: tuple[str, ...] = get_args(AudioFrontend)
DEFAULT_AUDIO_FRONTEND = "cavmae"
# The feature parameters a manifest of an older build may leave out, and what that means: the only value written
# before the option existed. Loaders read an absent one as this value, and a build's fingerprint leaves it out at
# this value, so such a build resumes.
ABSENT_FEATURES: dict[str, str] = {"logmel_dtype": DEFAULT_LOGMEL_DTYPE, "audio_frontend": DEFAULT_AUDIO_FRONTEND}
# What each front end changes in FeatureParams' defaults (which are CAV-MAE's) unless told otherwise. scenic: the
# Hamming window of MBT (Nagrani et al., NeurIPS 2021, section 4.2) and AV-MAE's AudioSet input length, 1000 frames
# = 10 s at 100 frames per second (google-research/scenic scenic/projects/av_mae/).
FRONTEND_DEFAULTS: dict[str, dict[str, Any]] = {
    "cavmae": {},
    "scenic": {"window_type": "hamming", "target_frames": 1000},
}


@dataclass(frozen=True)
class FeatureParams:
    """What a sample holds. Audio defaults are CAV-MAE's fbank call (docs/reference/cavmae.md#log-mel-front-end)."""

    # AV-MAE pretraining samples 16 frames per clip (docs/reference/avmae_scenic.md#data)
    num_frames: int = field(default=16, metadata={"help": "frames per sample"})
    # AV-MAE: resize the shorter side to 256, then crop 224 (docs/reference/avmae_scenic.md#data)
    short_side: int = field(default=256, metadata={"help": "frames resized to this short side"})
    # 3 keeps crops visually lossless at ~12 kB/frame
    jpeg_qscale: int = field(default=3, metadata={"help": "ffmpeg -q:v, 2 (best) to 31"})
    sample_rate: int = 16000
    num_mel_bins: int = field(default=128, metadata={"help": "mel bands of the log-mel"})
    frame_shift_ms: float = 10.0
    frame_length_ms: float = 25.0
    window_type: str = "hanning"
    # CAV-MAE target_length: zero-pad or cut (docs/reference/cavmae.md)
    target_frames: int = field(default=1024, metadata={
        "help": "log-mel frames (10 ms each) after zero-padding or cutting"})
    # How the log-mel is stored. float16 halves the member (docs/shards.md#what-a-sample-holds has the sizes) at up to
    # ~4e-3 from CAV-MAE's float32 features; float32 stores the fbank output bit for bit.
    logmel_dtype: Literal["float16", "float32"] = field(default="float16", metadata={
        "help": "stored log-mel type: float16 (half the bytes) or float32 (CAV-MAE's features bit for bit)"})
    # Which log-mel recipe made the stored features; a manifest without the field was made by cavmae.
    audio_frontend: AudioFrontend = field(default=DEFAULT_AUDIO_FRONTEND, metadata={
        "help": "log-mel recipe: cavmae (CAV-MAE's Kaldi fbank, Hanning window) or scenic (what Google's AV-MAE "
                "checkpoints expect: Hamming window, 512-point FFT, log mel magnitude; docs/scenic.md 'The audio "
                "front end')"})

    def __post_init__(self):
        if self.audio_frontend not in AUDIO_FRONTENDS:
            raise ValueError(f"audio_frontend {self.audio_frontend!r}: not one of {', '.join(AUDIO_FRONTENDS)}")
        for name in ("num_frames", "short_side"):
            if getattr(self, name) < 1:
                raise ParameterError(name, f"must be at least 1, got {getattr(self, name)}")

    @classmethod
    def for_frontend(cls, audio_frontend: str, **values: Any) -> "FeatureParams":
        """Parameters for ``audio_frontend`` with its window and default length, overridden by ``values``
        (``None`` values mean the default)."""
        if audio_frontend not in FRONTEND_DEFAULTS:
            raise ValueError(f"audio_frontend {audio_frontend!r}: not one of {', '.join(AUDIO_FRONTENDS)}")
        given = {name: value for name, value in values.items() if value is not None}
        return cls(audio_frontend=audio_frontend, **{**FRONTEND_DEFAULTS[audio_frontend], **given})


def audio_frontend(features: dict[str, Any]) -> str:
    """The front end a manifest's features record; folders built before the field hold CAV-MAE's log-mels."""
    return features.get("audio_frontend", ABSENT_FEATURES["audio_frontend"])


@dataclass(frozen=True)
class BuildParams:
    """How inputs become samples and shards. Changing any of these changes the shards, so resuming a build with
    other values is refused."""

    segment_seconds: float = field(default=DATASET_SEGMENT_SECONDS, metadata={
        "help": "segment length for folders (and VGGSound rows)"})
    segments: Literal["first", "middle", "all"] = field(default="first", metadata={
        "help": "which segment(s) of a folder's clip"})
    min_seconds: float = field(default=1.0, metadata={
        "help": "clips with less video than this are failures (too_short)"})
    missing_audio: Literal["fail", "silence"] = field(default="fail", metadata={
        "help": "a clip without audio fails, or gets the features of silence"})
    # ~0.5 MB per sample at the defaults: ~250 MB tars
    shard_size: int = field(default=500, metadata={"help": "inputs per shard"})
    # Held out by video id, so segments of one video never straddle train and val.
    val_fraction: float = field(default=0.0, metadata={
        "help": "hold out this share of training videos (by video id) as split 'val'"})
    # Shuffled, so that a small loader buffer suffices.
    seed: int = field(default=0, metadata={"help": "sample order within a split"})
    # Semi-supervised fine-tuning: pretrain on 'train', fine-tune with data.train_split=labelled; 0 = no such split.
    labelled_per_class: int = field(default=0, metadata={
        "help": "also copy N training inputs per class (seeded) into split 'labelled', for fine-tuning on few labels "
                "after pretraining on all of 'train'"})
