"""Which stored frames a clip's video takes when ``data.frame_stride`` asks for a window: ``num_frames`` frames,
``frame_stride`` stored frames apart, as Scenic's video pipeline samples them (DMVR's processors,
github.com/google-deepmind/dmvr, dmvr/processors.py): in training at a random offset (``sample_sequence`` with
``random=True``: uniform over [0, max(stored - (n - 1) stride, 1))), at evaluation the centred window
(``random=False``: offset max(0, (stored - n stride) // 2)) or, for several test clips, windows at offsets spread
evenly (``sample_linspace_sequence``: int(linspace(0, max(0, stored - n stride), views)))). A window that runs past
the last stored frame wraps to the first, as DMVR repeats the sequence.

Without a stride (0) the frames are spread over all the stored ones (data/samples.py frame_members)."""

from __future__ import annotations

import random


def window(stored: int, wanted: int, stride: int, offset: int) -> list[int]:
    """The stored frame indices of a window starting at ``offset``."""
    return [(offset + i * stride) % stored for i in range(wanted)]


def training_offset(stored: int, wanted: int, stride: int, rng: random.Random) -> int:
    return rng.randrange(max(stored - (wanted - 1) * stride, 1))


def evaluation_offset(stored: int, wanted: int, stride: int, view: int, views: int) -> int:
    """View ``view`` of ``views``: the centred window for one, evenly spread windows for several."""
    if views == 1:
        return max(0, (stored - wanted * stride) // 2)
    last = max(0, stored - wanted * stride)
    return int(view * last / (views - 1))
