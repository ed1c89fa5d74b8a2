"""How a batch of checked samples crosses from the Python external source into the DALI graph: as a few dense
arrays per batch, not about 20 arrays per sample.

Per sample, the external source used to hand DALI each JPEG frame, the log-mel, the crop box's corners and the flags
as separate arrays (plus a note in the worker feed): with worker processes, receiving them cost the training process
~0.5 ms per sample (`avmae-bench feed`, README "The DALI feed"). Now each batch of B samples of T frames is
- T ``frame`` arrays, uint8 (B, L_j): row i is sample i's j-th JPEG, made exactly L_j bytes long by comment (COM)
  segments inserted after its start-of-image marker (``pad_jpeg``), L_j = 4 + the batch's longest j-th JPEG;
- the ``logmel``, (B, time, mel bins) of the stored dtype;
- the ``header``, int32 (B, 6): the crop box's top, left, bottom, right (pixels), the flip flag, the batch's serial
  number (the serial feed matches its records by it);
- in the worker feed, the ``note``: uint8 (B, N), each row the sample's note (dali_feed.py), zero-padded.
A dense batch goes through a worker's shared memory as one buffer and into DALI without a copy.

Why COM segments, not one row of packed bytes per sample cut apart in the graph: DALI's slicing ops cost more per
sample than they save. Cutting 16 JPEGs out of a packed row with ``fn.slice`` (start and length from a header
array, DALI subscripts) took 0.5-0.7 ms of the training process's CPU per sample, and constant-index subscripts or
``fn.element_extract`` of zero-padded frames 0.28-0.56 ms (DALI 2.4, batch 8, this 2-core machine), against 0.09 ms
to receive these arrays. A JPEG with COM segments is a JPEG (ITU T.81 B.2.4: comments may precede the frame header),
so every decoder takes it as it is and decodes the same pixels; nothing in the graph cuts or trims.
"""

from __future__ import annotations

import numpy as np

from avmae.data.checked import CheckedSample
from avmae.shard.format import logmel_dtype

Row = tuple[CheckedSample, tuple[int, int, int, int], bool]  # a sample, its crop box (top, left, h, w), its flip

_SOI, _COM = b"\xff\xd8", b"\xff\xfe"
_SEGMENT_MIN, _SEGMENT_MAX = 4, 2 + 0xFFFF  # a COM segment: marker, 2-byte length (counting itself), payload
JPEG_SLACK = _SEGMENT_MIN  # bytes added to the batch's longest JPEG, so that every JPEG gets a whole segment
HEADER = ("top", "left", "bottom", "right", "flip", "serial")


def pad_jpeg(jpeg: bytes, out) -> None:
    """Write ``jpeg`` into the zeroed byte buffer ``out`` (at least JPEG_SLACK bytes longer), filling the difference
    with COM segments of zeros right after its start-of-image marker. Plain memoryview writes: this runs once per
    frame, and with numpy slice assignments dense_batch took 0.30 ms per sample of 16 frames, not 0.13 (measured
    on the shards of README "The DALI feed")."""
    out = memoryview(out)
    pad = len(out) - len(jpeg)
    assert pad >= _SEGMENT_MIN and jpeg[:2] == _SOI, (pad, jpeg[:2])  # the checker saw every JPEG start with SOI
    out[:2] = _SOI
    at = 2
    while pad:
        segment = min(pad, _SEGMENT_MAX)
        if 0 < pad - segment < _SEGMENT_MIN:
            segment -= _SEGMENT_MIN  # leave the last segment room for its marker and length
        out[at:at + 4] = _COM + (segment - 2).to_bytes(2, "big")
        at += segment
        pad -= segment
    out[at:] = memoryview(jpeg)[2:]


def dense_batch(rows: list[Row], serial: int, notes: list[bytes] | None = None) -> list[np.ndarray]:
    """The external source's outputs for one batch: the frames, the log-mel, the header [, the notes]."""
    samples = [sample for sample, _, _ in rows]
    frames = []
    for j in range(len(samples[0].frames)):
        jpegs = [sample.members[sample.frames[j]] for sample in samples]
        length = max(map(len, jpegs)) + JPEG_SLACK
        column = bytearray(len(rows) * length)
        view = memoryview(column)
        for i, jpeg in enumerate(jpegs):
            pad_jpeg(jpeg, view[i * length:(i + 1) * length])
        frames.append(np.frombuffer(column, dtype=np.uint8).reshape(len(rows), length))
    header = np.array([[top, left, top + h, left + w, int(flip), serial] for _, (top, left, h, w), flip in rows],
                      dtype=np.int32)
    outputs = [*frames, np.stack([sample.logmel for sample in samples]), header]
    if notes is not None:
        length = max(map(len, notes))
        outputs.append(np.frombuffer(b"".join(note.ljust(length, b"\0") for note in notes), dtype=np.uint8)
                       .reshape(len(rows), length))
    return outputs


def batch_types(frames: int, features: dict, notes: bool) -> list:
    """DALI types of dense_batch's outputs for samples of ``frames`` JPEGs and the manifest's ``features``."""
    from nvidia.dali import types

    mel = {"float16": types.FLOAT16, "float32": types.FLOAT}[logmel_dtype(features)]
    return [types.UINT8] * frames + [mel, types.INT32] + ([types.UINT8] if notes else [])


class DenseBatch:
    """The graph's view of one external source's dense_batch outputs."""

    def __init__(self, outputs: list, frames: int):
        self.jpegs = list(outputs[:frames])
        self.logmel, self.header = outputs[frames], outputs[frames + 1]
        self.note = outputs[frames + 2] if len(outputs) > frames + 2 else None

    def box(self) -> tuple:
        """The crop box's top-left and bottom-right corners, float pixels as fn.resize's roi_start/roi_end take."""
        from nvidia.dali import fn, types

        corners = fn.cast(self.header[0:4], dtype=types.FLOAT)
        return corners[0:2], corners[2:4]

    @property
    def flip(self):
        return self.header[HEADER.index("flip")]

    @property
    def serial(self):
        return self.header[HEADER.index("serial")]
