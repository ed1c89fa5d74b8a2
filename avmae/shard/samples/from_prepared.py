"""A sample from CAV-MAE's prepared data (no video): its extracted frames and its 16 kHz wav.

Frames: ``{frames_root}/frame_{i}/{video_id}.jpg`` for i < num_frames, as CAV-MAE's loader builds the path
(src/dataloader.py ``randselect_img``). They are stored byte for byte when their short side is the build's
``short_side`` (CAV-MAE saves 224 x 224 centre crops, src/preprocess/extract_video_frame.py, so ``--short-side 224``
keeps them, and is what ``--list-format cavmae`` defaults to): a second JPEG generation would only lose detail.
Frames of another size are re-encoded to the short side, because the loaders check that every frame has the short
side the manifest states (data/checked.py). CAV-MAE took frame i at OpenCV frame ``int(i * total / 10)`` of the first
10 s, about one frame per second: the metadata records frame i at i seconds (``frame_timing``).

Log-mel: CAV-MAE's ``_wav2fbank`` (load, remove the mean, kaldi fbank, zero-pad or cut to target_frames) on the wav.
A missing or unreadable frame or wav is a failure naming the file (CAV-MAE's loader would silently fall back to
another frame or to a constant spectrogram).
"""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

from avmae.shard.inputs.items import ClipItem
from avmae.shard.inputs.media import MediaError, resize_image
from avmae.shard.inputs.wav import read_wav
from avmae.shard.params import FeatureParams
from avmae.shard.samples.logmel import fixed_length, min_samples, waveform_fbank
from avmae.shard.samples.packing import Sample, pack_sample

FRAME_TIMING = "cavmae_one_per_second"  # frame i of CAV-MAE's extraction is at about i s (see above)


def frame_path(frames_root: str, index: int, video_id: str) -> str:
    return f"{frames_root}/frame_{index}/{video_id}.jpg"


def _image_size(path: str, data: bytes) -> tuple[int, int]:
    """(width, height) of a JPEG, after decoding it whole: a truncated file fails here, not in a training run."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG":
                raise MediaError("bad_frame", f"{path}: a {image.format} image, not a JPEG")
            image.load()
            return image.size
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise MediaError("bad_frame", f"{path}: not a readable JPEG ({err})") from None


def _frames(item: ClipItem, features: FeatureParams) -> tuple[list[bytes], bool]:
    """(JPEGs, re-encoded?) of the item's first ``num_frames`` extracted frames."""
    paths = [frame_path(item.frames_root, i, item.video_id) for i in range(features.num_frames)]
    jpegs, sizes = [], []
    for index, path in enumerate(paths):
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            raise MediaError("missing_frame", f"{path}: no such file (frame {index} of the {features.num_frames} "
                                              "the build takes)") from None
        except OSError as err:
            raise MediaError("missing_frame", f"{path}: cannot read it ({err.strerror})") from None
        sizes.append(_image_size(path, data))
        jpegs.append(data)
    if all(min(size) == features.short_side for size in sizes) and len(set(sizes)) == 1:
        return jpegs, False
    return [resize_image(path, short_side=features.short_side, jpeg_qscale=features.jpeg_qscale) for path in paths], True


def make_prepared_samples(item: ClipItem, features: FeatureParams) -> list[Sample]:
    """The one sample of a CAV-MAE prepared input; MediaError naming the file when a frame or the wav fails."""
    jpegs, reencoded = _frames(item, features)
    waveform, rate = read_wav(item.path)
    if rate != features.sample_rate:
        raise MediaError("bad_wav", f"{item.path}: {rate} Hz; the build's log-mel is computed at {features.sample_rate} Hz "
                                    "(CAV-MAE's wavs are 16 kHz)")
    samples = waveform.shape[1]
    if samples < min_samples(features):
        raise MediaError("audio_too_short", f"{item.path}: {samples} samples, fewer than one "
                                            f"{features.frame_length_ms} ms window")
    mel, valid = fixed_length(waveform_fbank(waveform, rate, features), features.target_frames,
                              features.logmel_dtype)
    fields = {"frames_root": item.frames_root, "frame_count": len(jpegs), "frame_timing": FRAME_TIMING,
              "frames_reencoded": reencoded, "wav_channels": int(waveform.shape[0])}
    return [pack_sample(item, 0, jpegs=jpegs, frame_times=[float(i) for i in range(len(jpegs))], repeated_frames=0,
                        start=0.0, end=samples / rate, mel=mel, valid=valid, has_audio=True, audio_samples=samples,
                        fields=fields)]
