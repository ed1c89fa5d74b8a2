"""How a batch of checked samples crosses from the Python external source into the DALI graph: three dense arrays
per batch, with one row per frame, so that the graph decodes, crops and flips every frame of the batch with one
operator each, whatever the frame count.

Each batch of B samples of T frames is
- the ``frames``, uint8 (B*T, L): row i*T + j is sample i's j-th JPEG, made exactly L bytes long by comment (COM)
  segments inserted after its start-of-image marker (``pad_jpeg``), L = JPEG_SLACK + the batch's longest JPEG;
- the ``header``, int32 (B*T, 8), the same for the T rows of a sample: the crop box's top, left, bottom, right
  (pixels), the flip flag, the batch's serial number (the serial feed matches its records by it), the log-mel's
  time steps and mel bins;
- the ``payload``, uint8 (B*T, C): sample i's log-mel bytes (as stored) followed by its note (worker feed,
  feed.py), zero-padded to T*C bytes and laid over its T rows (``unpack_payload`` joins them again).
DALI runs a graph over batches of one size: every input of an iteration has the same number of rows, so what belongs
to a sample rides in its frames' rows rather than in a batch of B. A dense batch goes through a worker's shared memory
as one buffer per array and into DALI without a copy.

Why COM segments, not one row of packed bytes per sample cut apart in the graph: DALI's slicing ops cost more per
sample than they save. Cutting 16 JPEGs out of a packed row with ``fn.slice`` (start and length from a header
array, DALI subscripts) took 0.5-0.7 ms of the training process's CPU per sample, and constant-index subscripts or
``fn.element_extract`` of zero-padded frames 0.28-0.56 ms (DALI 2.4, batch 8, this 2-core machine), against 0.09 ms
to receive dense arrays. A JPEG with COM segments is a JPEG (ITU T.81 B.2.4: comments may precede the frame header),
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
HEADER = ("top", "left", "bottom", "right", "flip", "serial", "logmel_time", "logmel_bins")


def pad_jpeg(jpeg: bytes, out) -> None:
    """Write ``jpeg`` into the zeroed byte buffer ``out`` (at least JPEG_SLACK bytes longer), filling the difference
    with COM segments of zeros right after its start-of-image marker. Plain memoryview writes: this runs once per
    frame, and with numpy slice assignments dense_batch took 0.30 ms per sample of 16 frames, not 0.13 (measured
    on the shards of docs/performance.md#the-dali-feed)."""
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


def _rows_of(blobs: list[tuple], rows: int) -> np.ndarray:
    """``blobs`` (per sample, a tuple of bytes-like parts, joined) as uint8 (len(blobs) * rows, C): each sample's
    bytes zero-padded to rows * C and laid over ``rows`` consecutive rows (the array is C-contiguous: a sample's rows
    are one run of bytes)."""
    width = max(1, -(-max(sum(map(len, parts)) for parts in blobs) // rows))
    out = bytearray(len(blobs) * rows * width)
    view = memoryview(out)
    for i, parts in enumerate(blobs):
        at = i * rows * width
        for part in parts:
            view[at:at + len(part)] = part
            at += len(part)
    return np.frombuffer(out, dtype=np.uint8).reshape(len(blobs) * rows, width)


def dense_batch(rows: list[Row], serial: int, notes: list[bytes] | None = None) -> list[np.ndarray]:
    """The external source's outputs for one batch: the frames, the header, the payload (log-mels [and notes])."""
    samples = [sample for sample, _, _ in rows]
    count = len(samples[0].frames)
    jpegs = [sample.members[name] for sample in samples for name in sample.frames]
    length = max(map(len, jpegs)) + JPEG_SLACK
    column = bytearray(len(jpegs) * length)
    view = memoryview(column)
    for k, jpeg in enumerate(jpegs):
        pad_jpeg(jpeg, view[k * length:(k + 1) * length])
    frames = np.frombuffer(column, dtype=np.uint8).reshape(len(jpegs), length)
    header = np.array([[top, left, top + h, left + w, int(flip), serial, *sample.logmel.shape]
                       for sample, (top, left, h, w), flip in rows], dtype=np.int32)
    blobs = [(memoryview(np.ascontiguousarray(sample.logmel)).cast("B"), notes[i] if notes else b"")
             for i, sample in enumerate(samples)]
    return [frames, np.repeat(header, count, axis=0), _rows_of(blobs, count)]


def batch_types() -> list:
    """DALI types of dense_batch's outputs."""
    from nvidia.dali import types

    return [types.UINT8, types.INT32, types.UINT8]


def unpack_payload(payload, header, frames: int, features: dict) -> tuple:
    """A batch's log-mels (B, time, mel bins) as a tensor of the stored dtype and its notes (bytes, one per sample)
    from the graph's ``payload`` and ``header`` outputs (torch tensors, B*T rows; ``frames``: T)."""
    import torch

    dtype = {"float16": torch.float16, "float32": torch.float32}[logmel_dtype(features)]
    first = header[::frames]  # a sample's T rows have the same header
    time_steps, bins = int(first[0, HEADER.index("logmel_time")]), int(first[0, HEADER.index("logmel_bins")])
    size = time_steps * bins * dtype.itemsize
    joined = payload.reshape(len(first), -1)
    logmel = joined[:, :size].contiguous().view(dtype).reshape(len(first), time_steps, bins)
    notes = [row.numpy().tobytes().rstrip(b"\0") for row in joined[:, size:].cpu()]
    return logmel, notes


class DenseBatch:
    """The graph's view of one external source's dense_batch outputs."""

    def __init__(self, outputs: list):
        self.jpegs, self.header, self.payload = outputs

    def box(self) -> tuple:
        """The crop box's top-left and bottom-right corners, float pixels as fn.resize's roi_start/roi_end take."""
        from nvidia.dali import fn, types

        corners = fn.cast(self.header[0:4], dtype=types.FLOAT)
        return corners[0:2], corners[2:4]

    @property
    def flip(self):
        return self.header[HEADER.index("flip")]
