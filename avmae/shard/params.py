"""The parameters of a shard build: what each sample contains (features) and how inputs become samples (build).

Both are written into ``manifest.json``; the loaders compare the features with what their config expects, so a
model is never trained on frames or log-mels made with other settings than it was told.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class FeatureParams:
    """What a sample holds. Audio defaults are CAV-MAE's fbank call (reference/methods.md B.1)."""

    num_frames: int = 16  # AV-MAE pretraining samples 16 frames per clip (methods.md B.4)
    short_side: int = 256  # AV-MAE: resize the shorter side to 256, then crop 224 (methods.md B.4)
    jpeg_qscale: int = 3  # ffmpeg mjpeg -q:v (2 best .. 31 worst); 3 keeps crops visually lossless at ~12 kB/frame
    sample_rate: int = 16000
    num_mel_bins: int = 128
    frame_shift_ms: float = 10.0
    frame_length_ms: float = 25.0
    window_type: str = "hanning"
    target_frames: int = 1024  # CAV-MAE target_length: zero-pad at the end or cut (methods.md B.1)
    # How the log-mel is stored. float16 halves the member (README "What a sample holds" has the sizes) at up to
    # ~4e-3 from CAV-MAE's float32 features; float32 stores the fbank output bit for bit.
    logmel_dtype: Literal["float16", "float32"] = "float16"


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
