"""A sample's members from what an input gave (JPEG frames, a log-mel, metadata fields): one place that writes the
shard contract's members (format.py names them), whichever kind of input the frames and features came from."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from avmae.shard.format import LOGMEL_MEMBER, META_KEY, META_LABELS, METADATA_MEMBER, frame_member
from avmae.shard.inputs.items import ClipItem, safe_key


@dataclass
class Sample:
    key: str
    members: dict[str, bytes]
    split: str
    labels: tuple[str, ...]
    logmel_sum: float  # over valid frames, for the dataset statistics in the manifest
    logmel_sumsq: float
    logmel_count: int


def pack_sample(item: ClipItem, index: int, *, jpegs: list[bytes], frame_times: list[float], repeated_frames: int,
                start: float, end: float, mel: np.ndarray, valid: int, has_audio: bool, audio_samples: int,
                fields: dict[str, Any] | None = None) -> Sample:
    """The members of segment ``index`` of ``item``. ``frame_times`` are seconds into the input; ``fields`` adds
    metadata of the kind of input (what was read, from where)."""
    key = safe_key(item.item_id, index)
    metadata: dict[str, Any] = {
        META_KEY: key, "id": item.item_id, "video_id": item.video_id, "source": item.source, "path": item.path,
        "split": item.split, "segment_index": index, "start": round(start, 6), "end": round(end, 6),
        "frame_times": [round(t, 6) for t in frame_times], "repeated_frames": repeated_frames,
        "has_audio": has_audio, "audio_samples": int(audio_samples), "audio_valid_frames": int(valid),
        META_LABELS: list(item.labels), **item.extra, **(fields or {}),
    }
    members = {frame_member(i): jpeg for i, jpeg in enumerate(jpegs)}
    buffer = io.BytesIO()
    np.save(buffer, mel, allow_pickle=False)
    members[LOGMEL_MEMBER] = buffer.getvalue()
    members[METADATA_MEMBER] = json.dumps(metadata, sort_keys=True, ensure_ascii=False).encode("utf-8")
    valid_part = mel[:valid].astype(np.float64) if has_audio else np.zeros((0,))
    return Sample(key=key, members=members, split=item.split, labels=item.labels,
                  logmel_sum=float(valid_part.sum()), logmel_sumsq=float((valid_part ** 2).sum()),
                  logmel_count=int(valid_part.size))
