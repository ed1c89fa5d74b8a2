"""What a whole JPEG is, told from its bytes without decoding it: the check that makes the two loaders' decoders agree.

The torch backend decodes with torchvision (libjpeg-turbo), which raises on what libjpeg calls an error; DALI's
CPU decoder falls back to another decoder where libjpeg-turbo fails and trains on what it gets, and a failure
inside a DALI pipeline stops the whole run (DALI cannot drop one sample of a batch). So each frame is checked here,
before either decoder sees it, for what libjpeg-turbo stops on, and a frame this passes decodes to the same pixels
on both (tests/faults/test_jpeg_damage.py damages real frames byte by byte and compares the decoders):

- the marker segments before the image data: a frame header of an 8-bit baseline, extended or progressive JPEG
  (the processes libjpeg-turbo and nvJPEG both decode) with 1 or 3 components, quantisation tables it uses, Huffman
  tables whose codes fit (libjpeg's ``jpeg_make_d_derived_tbl`` rule: every code length's codes fit in that many
  bits, an all-ones code excluded), scan headers naming the frame's components and defined tables;
- the entropy-coded data of each scan: every 0xFF byte is stuffed (0xFF00), a restart marker, fill, or the marker
  ending the scan, which must be one allowed between scans or the end-of-image marker at the file's end. A stray
  marker there (one flipped byte makes one) is what libjpeg stops on as "Unsupported marker type".

Damage inside the entropy-coded data that keeps this structure decodes on both decoders to the same (wrong) pixels,
with libjpeg's warnings: the CRC32 sidecar is what catches it in shards of ours.

It runs for every frame of every sample in the loaders: 13.5 µs for a 13.5 KB frame on the development machine
(docs/performance.md#the-dali-feed), half of it the image data's one regular-expression search; the segment walk is
plain byte arithmetic, with the table segments' checks cached (an encoder's frames carry the same tables)."""

from __future__ import annotations

import re
from functools import lru_cache

_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"
_SOF_DECODABLE = {0xC0, 0xC1, 0xC2}  # baseline, extended sequential, progressive (Huffman-coded)
_SOF_OTHER = {0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}  # lossless, hierarchical, arithmetic
_DHT, _DQT, _DRI, _SOS, _COM, _EOI_MARKER = 0xC4, 0xDB, 0xDD, 0xDA, 0xFE, 0xD9
_APP = set(range(0xE0, 0xF0))
_NO_LENGTH = {0x01, *range(0xD0, 0xD8)}  # TEM, RSTn: markers without a length field
_BETWEEN_SCANS = {_DHT, _DQT, _DRI, _SOS, _COM, *_APP}
# A 0xFF in entropy-coded data followed by anything but a stuffed 0x00, a restart marker or another 0xFF (fill).
_MARKER_IN_DATA = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# libjpeg-turbo installs the standard Huffman tables in slots 0 and 1 (for Motion-JPEG frames, which carry none).
_STANDARD_HUFFMAN_SLOTS = {0, 1}


class _Tables:
    """What the segments walked so far defined: the frame's size and components, quantisation and Huffman slots."""

    def __init__(self) -> None:
        self.size: tuple[int, int] | None = None
        self.progressive = False
        self.components: dict[int, int] = {}  # component id -> its quantisation table
        self.quant: set[int] = set()
        self.huffman: set[tuple[int, int]] = {(cls, slot) for cls in (0, 1) for slot in _STANDARD_HUFFMAN_SLOTS}


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(height, width) of a whole JPEG; ValueError("truncated: ...") or ValueError("decode: ...") saying what is wrong
    and at which byte when its structure is not one that libjpeg-turbo decodes (the module's rules)."""
    if not data.startswith(_SOI):
        raise ValueError("decode: no JPEG start-of-image marker")
    if not data.endswith(_EOI):
        raise ValueError("truncated: no JPEG end-of-image marker")
    tables, at, end = _Tables(), 2, len(data)
    while True:
        at = _segments_to_scan(data, at, end, tables)
        found = _MARKER_IN_DATA.search(data, at)  # the end-of-image marker matches at worst
        at = found.start()
        marker = data[at + 1]
        if marker == _EOI_MARKER:
            if at + 2 == end:
                return tables.size
            raise ValueError(f"decode: JPEG end-of-image marker at byte {at}, {end - at - 2} bytes before the end")
        if marker not in _BETWEEN_SCANS:
            raise ValueError(f"decode: JPEG marker {marker:02X} inside the image data at byte {at}")


def _segments_to_scan(data: bytes, at: int, end: int, tables: _Tables) -> int:
    """Walk the marker segments from ``at`` to the next scan header; returns where its entropy-coded data begins."""
    while at + 4 <= end:
        if data[at] != 0xFF:
            raise ValueError(f"decode: no marker at byte {at} of the JPEG header")
        marker = data[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        if marker in _NO_LENGTH:
            at += 2
            continue
        length = data[at + 2] << 8 | data[at + 3]
        if length < 2 or at + 2 + length > end:
            raise ValueError(f"decode: JPEG segment {marker:02X} at byte {at} has a bad length {length}")
        body = data[at + 4: at + 2 + length]
        if marker in _SOF_DECODABLE:
            _frame_header(body, at, tables)
            tables.progressive = marker == 0xC2
        elif marker in _SOF_OTHER:
            raise ValueError(f"decode: JPEG process SOF{marker - 0xC0} at byte {at}, which the decoders do not take")
        elif marker in (_DQT, _DHT):
            try:
                if marker == _DQT:
                    tables.quant |= _quantisation_slots(body)
                else:
                    tables.huffman |= _huffman_slots(body)
            except ValueError as err:
                raise ValueError(f"decode: JPEG {err} (segment at byte {at})") from None
        elif marker == _SOS:
            _scan_header(body, at, tables)
            return at + 2 + length
        elif marker == _DRI and length != 4:
            raise ValueError(f"decode: JPEG restart interval segment at byte {at} of length {length}, not 4")
        elif marker not in _BETWEEN_SCANS:
            raise ValueError(f"decode: JPEG marker {marker:02X} at byte {at} where a header segment belongs")
        at += 2 + length
    raise ValueError("decode: the JPEG has no start of scan")


def _frame_header(body: bytes, at: int, tables: _Tables) -> None:
    if tables.size is not None:
        raise ValueError(f"decode: a second JPEG frame header at byte {at}")
    count = body[5] if len(body) > 5 else 0
    if body[0] != 8 or count not in (1, 3) or len(body) != 6 + 3 * count:
        raise ValueError(f"decode: JPEG frame header at byte {at}: {body[0] if body else 0}-bit with {count} "
                         "components (8-bit with 1 or 3 decode)")
    size = (body[1] << 8 | body[2], body[3] << 8 | body[4])
    if 0 in size:
        raise ValueError(f"decode: JPEG frame header at byte {at} gives a size of {size[1]}x{size[0]}")
    for i in range(6, len(body), 3):
        sampling, quant = body[i + 1], body[i + 2]
        if not (1 <= sampling >> 4 <= 4 and 1 <= sampling & 15 <= 4) or quant > 3:
            raise ValueError(f"decode: JPEG frame header at byte {at}: component {body[i]} has sampling "
                             f"{sampling >> 4}x{sampling & 15} and quantisation table {quant}")
        tables.components[body[i]] = quant
    tables.size = size


@lru_cache(maxsize=256)
def _quantisation_slots(body: bytes) -> frozenset[int]:
    """The slots a DQT segment's body defines; ValueError when malformed. Cached: an encoder's frames mostly carry
    the same tables, and uncached their walk would be most of the check's time (14 of a frame's 20 µs)."""
    slots, i = set(), 0
    while i < len(body):
        precision, slot = body[i] >> 4, body[i] & 15
        i += 1 + 64 * (1 + precision)
        if precision > 1 or slot > 3 or i > len(body):
            raise ValueError("quantisation table segment is malformed")
        slots.add(slot)
    return frozenset(slots)


@lru_cache(maxsize=256)
def _huffman_slots(body: bytes) -> frozenset[tuple[int, int]]:
    """The (class, slot) pairs a DHT segment's body defines; ValueError when malformed (cached as above)."""
    slots, i = set(), 0
    while i < len(body):
        cls, slot = body[i] >> 4, body[i] & 15
        counts = body[i + 1: i + 17]
        values = sum(counts)
        if cls > 1 or slot > 3 or len(counts) < 16 or values > 256 or i + 17 + values > len(body):
            raise ValueError("Huffman table segment is malformed")
        code = 0
        for bits, count in enumerate(counts, start=1):
            code += count
            if code and code >= 1 << bits:  # libjpeg's rule: the codes of each length fit, none all ones
                raise ValueError(f"Huffman table has more codes than fit in {bits} bits")
            code <<= 1
        if cls == 0 and values and max(body[i + 17: i + 17 + values]) > 15:
            raise ValueError("DC Huffman table has a symbol over 15")
        slots.add((cls, slot))
        i += 17 + values
    return frozenset(slots)


def _scan_header(body: bytes, at: int, tables: _Tables) -> None:
    if tables.size is None:
        raise ValueError(f"decode: JPEG scan at byte {at} before a frame header")
    missing = set(tables.components.values()) - tables.quant
    if missing:
        raise ValueError(f"decode: JPEG scan at byte {at} uses quantisation tables {sorted(missing)} never defined")
    count = body[0] if body else 0
    if not 1 <= count <= 4 or len(body) != 4 + 2 * count:
        raise ValueError(f"decode: JPEG scan header at byte {at} is malformed")
    first, last, high, low = body[-3], body[-2], body[-1] >> 4, body[-1] & 15
    if tables.progressive and (last > 63 or first > last or (first == 0) != (last == 0) or (first and count != 1)
                               or low > 13 or (high and low != high - 1)):  # libjpeg's rules for a scan
        raise ValueError(f"decode: JPEG progressive scan at byte {at} has invalid spectral or approximation parameters")
    dc = not tables.progressive or (first == 0 and high == 0)  # the Huffman tables the scan decodes with
    ac = not tables.progressive or first > 0
    for i in range(1, 1 + 2 * count, 2):
        component, selectors = body[i], body[i + 1]
        if component not in tables.components:
            raise ValueError(f"decode: JPEG scan at byte {at} names component {component}, not the frame's")
        if (dc and (0, selectors >> 4) not in tables.huffman) or (ac and (1, selectors & 15) not in tables.huffman):
            raise ValueError(f"decode: JPEG scan at byte {at} uses a Huffman table never defined")
