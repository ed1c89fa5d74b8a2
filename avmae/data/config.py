"""What the loaders are asked for: where the shards are, batch and worker counts, backend, clip geometry and
normalisation (``DataConfig``), and in training only, the augmentation (``AugmentConfig``, the run config's
``augment:`` section)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# "torch": a PyTorch DataLoader decoding with torchvision on the CPU. "webdataset" is its older name, still accepted
# (choose_backend in loader.py maps it): the backend never used webdataset's pipeline, only its gopen.
Backend = Literal["auto", "dali", "torch", "webdataset"]

# ImageNet statistics (CAV-MAE's frame normalisation, docs/reference/cavmae.md#frames; also what MAE-initialised ViTs
# expect).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class DataConfig:
    shards: str = ""  # folder with manifest.json
    train_split: str = "train"
    eval_split: str = "val"
    backend: Backend = "auto"  # DALI when CUDA is present, torch otherwise ("webdataset": torch's older name)
    batch_size: int = 8  # per rank
    workers: int = 2  # readers per rank: DataLoader workers (torch) or DALI feed processes; fixed for a run
    seed: int = 0
    # Video: how many of the stored frames (evenly spread) and the crop the model sees. None = the model's
    # (model.video.frames / model.video.size), filled in when a run config is validated, which refuses
    # other values unless model.other_grids.
    num_frames: int | None = None
    view: int = 0  # multi-view testing: which of `views` temporal frame sets (evaluation only)
    views: int = 1
    # 0: the frames spread over all the stored ones. k >= 1: a window of num_frames frames k stored frames apart, as
    # Scenic samples clips (avmae/data/frame_windows.py): at a random offset in training; centred, or `views` windows
    # spread evenly, at evaluation. Scenic's AV-MAE fine-tuning: 32 frames at stride 2 of 25 fps video.
    frame_stride: int = 0
    crop_size: int | None = None
    eval_short_side: int = 0  # resize before the centre crop; 0 = keep the stored frames' size (AV-MAE eval: 224/256)
    video_norm: Literal["imagenet", "zero_center"] = "imagenet"  # AV-MAE: zero_center to [-1, 1]
    # Audio: normalisation statistics; None = the manifest's (dataset) mean and std.
    audio_mean: float | None = None
    audio_std: float | None = None
    balanced_sampling: bool = False  # training: AudioSet-2M style class-balanced sampling
    shuffle_buffer: int = 256  # samples per worker kept for shuffling across shards
    # Bad samples (faults.py): a reader stops with SkipBudgetExceeded when it skips more than this share of its
    # draws (judged once it has skipped more than max_skip_run in all) or more than max_skip_run in a row.
    max_skip_fraction: float = 0.01
    max_skip_run: int = 50
    # Remote shards (avmae/storage.py StorageLimits): each request to the store may wait this long to connect and
    # between two chunks of its answer, and one that timed out or found the store unreachable is tried this many
    # more times, after 0.5 s, 1 s, 2 s, ... (at most 30 s), before the reader stops naming the URL.
    storage_timeout_s: float = 60.0
    storage_retries: int = 3


@dataclass
class AugmentConfig:
    """Training's random transforms. The loaders apply the frame choice, crop and flip (the same on both backends);
    the trainer applies the rest to the batch (avmae/data/augment.py). Evaluation never takes one: it reads the
    evenly spread frames (view v of data.views), resizes and centre-crops."""

    # Each sample's frames come from a random one of this many temporal offsets (view v of data.views);
    # 1 = the evenly spread frames. CAV-MAE: 10 with one frame, a random one of its 10 per step.
    train_offsets: int = 1
    # The crop, the same for all frames of a clip (avmae/data/crops.py): "random_resized" (Inception-style, from
    # crop_scale and crop_ratio) or "scale_jitter" (Scenic's fine-tuning: short side resized to jitter_short_side,
    # height and width each scaled by U[scale_jitter] with probability scale_jitter_prob, then a random crop).
    crop: Literal["random_resized", "scale_jitter"] = "random_resized"
    crop_scale: tuple[float, ...] = (0.25, 1.0)  # random resized crop: area share of the frame
    crop_ratio: tuple[float, ...] = (0.75, 1.3333)
    scale_jitter: tuple[float, ...] = (0.9, 1.33)  # Scenic: [0.9, 1.33], p = 1, after resizing the short side to 256
    scale_jitter_prob: float = 1.0
    jitter_short_side: int = 256
    flip: bool = True
    # Colour (Scenic's fine-tuning: 0.8 and 0.1; avmae/data/colour.py colour_augment): the probability that a
    # clip's brightness, saturation, contrast and hue are jittered (the same for all its frames), and that it
    # then turns grey.
    colour: float = 0.0
    colour_drop: float = 0.0
    freq_mask: int = 0  # SpecAugment (fine-tuning): CAV-MAE fine-tuning uses 48 / 192; pretraining 0 / 0
    time_mask: int = 0
    # How many frequency / time masks per clip, each of width uniform in [0, freq_mask / time_mask). CAV-MAE: 1 / 1;
    # Scenic's AV-MAE: 2 x 36 bins (AudioSet), 1 x 48 (VGGSound), no time mask (see configs/avmae_mbt_audioset.yaml).
    freq_masks: int = 1
    time_masks: int = 1
    time_shift: bool = False  # Scenic's circular time shift (AudioSet): roll each log-mel by U[0, frames)
    audio_noise: bool = False  # CAV-MAE's noise + circular time shift (on in all its scripts)
    mixup: float = 0.0  # fine-tuning: probability that a batch is mixed (CAV-MAE: 0.5; Scenic: 1, every batch)
    mixup_alpha: float = 10.0  # lambda ~ Beta(alpha, alpha): CAV-MAE 10, Scenic 0.5
    # "sample": a random partner and a lambda per sample (CAV-MAE); "batch": the reversed batch as partner and one
    # lambda for the batch (Scenic's mixup_modalities).
    mixup_scope: Literal["sample", "batch"] = "sample"
    mixup_per_modality: bool = False  # Scenic's mixmod: audio and video (and their targets) each their own lambda


# Recipes written for earlier releases keep the augmentation settings in ``data``; config.from_dict points such a
# recipe to their place in the ``augment`` section instead of failing on an unknown key.
DataConfig.MOVED_KEYS = {name: f"augment.{name} (augmentation has its own section)"
                         for name in AugmentConfig.__dataclass_fields__}
