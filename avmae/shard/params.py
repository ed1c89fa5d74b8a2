"""The parameters of a shard build: what each sample contains (features) and how inputs become samples (build).

Both are written into ``manifest.json``; the loaders compare the features with what their config expects, so a
model is never trained on frames or log-mels made with other settings than it was told.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# The log-mel recipes a build can store. cavmae: CAV-MAE's Kaldi fbank (avmae/shard/logmel.py); scenic: the front end
# Google's AV-MAE checkpoints were trained on, as far as it is published (avmae/shard/logmel_scenic.py).
AUDIO_FRONTENDS = ("cavmae", "scenic")
DEFAULT_AUDIO_FRONTEND = "cavmae"
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

    num_frames: int = 16  # AV-MAE pretraining samples 16 frames per clip (docs/reference/avmae_scenic.md#data)
    short_side: int = 256  # AV-MAE: resize the shorter side to 256, then crop 224 (docs/reference/avmae_scenic.md#data)
    jpeg_qscale: int = 3  # ffmpeg mjpeg -q:v (2 best .. 31 worst); 3 keeps crops visually lossless at ~12 kB/frame
    sample_rate: int = 16000
    num_mel_bins: int = 128
    frame_shift_ms: float = 10.0
    frame_length_ms: float = 25.0
    window_type: str = "hanning"
    target_frames: int = 1024  # CAV-MAE target_length: zero-pad or cut (docs/reference/cavmae.md)
    # How the log-mel is stored. float16 halves the member (docs/shards.md#what-a-sample-holds has the sizes) at up to
    # ~4e-3 from CAV-MAE's float32 features; float32 stores the fbank output bit for bit.
    logmel_dtype: Literal["float16", "float32"] = "float16"
    # Which log-mel recipe made the stored features; a manifest without the field was made by cavmae.
    audio_frontend: Literal["cavmae", "scenic"] = DEFAULT_AUDIO_FRONTEND

    def __post_init__(self):
        if self.audio_frontend not in AUDIO_FRONTENDS:
            raise ValueError(f"audio_frontend {self.audio_frontend!r}: not one of {', '.join(AUDIO_FRONTENDS)}")

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
    return features.get("audio_frontend", DEFAULT_AUDIO_FRONTEND)


@dataclass(frozen=True)
class BuildParams:
    """How inputs become samples and shards. Changing any of these changes the shards, so resuming a build with
    other values is refused."""

    segment_seconds: float = 10.0  # AudioSet / VGGSound segments are 10 s
    segments: Literal["first", "middle", "all"] = "first"  # which segment(s) of a plain folder's clips
    min_seconds: float = 1.0  # shorter clips are failures ("too_short")
    missing_audio: Literal["fail", "silence"] = "fail"
    shard_size: int = 500  # inputs per shard (~0.5 MB per sample at the defaults: ~250 MB tars)
    val_fraction: float = 0.0  # held out by video id, so segments of one video never straddle train and val
    seed: int = 0  # order of samples within a split (shuffled so a small loader buffer suffices)
    # Semi-supervised fine-tuning: also copy this many training inputs per class into a split 'labelled'
    # (pretrain on 'train', fine-tune with data.train_split=labelled); 0 = no such split.
    labelled_per_class: int = 0
