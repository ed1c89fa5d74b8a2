"""Damaged JPEGs behind valid checksums (damage before the build, or shards another tool built): the structure check
both loaders run (avmae/shard/checking/jpeg_structure.py) must refuse every frame one decoder would stop on, so that the
two backends decide a sample's fate alike. Real frames of the real builder (and their greyscale and progressive
re-encodings) are damaged byte by byte at seeded places; every frame the check passes must decode on torchvision's
decoder (the torch backend's) and on DALI's to the same pixels."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
from PIL import Image

from avmae.data.samples import FrameDecodeError, decode_frames
from avmae.shard.checking.jpeg_structure import jpeg_size
from tests.faults.damage import stray_marker
from tests.helpers import shard_members

pytestmark = pytest.mark.dali


@pytest.fixture(scope="module")
def frames(shards) -> dict[str, bytes]:
    """A frame of the real builder (ffmpeg's baseline JPEG) and its greyscale and progressive re-encodings."""
    sample = next(iter(shard_members(shards).values()))
    built = sample["00.jpg"]
    picture = Image.open(io.BytesIO(built))
    out = {"built": built}
    for name, image, options in (("grey", picture.convert("L"), {}), ("progressive", picture, {"progressive": True})):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90, **options)
        out[name] = buffer.getvalue()
    return out


def damaged_copies(jpeg: bytes, count: int, seed: int) -> list[bytes]:
    """Copies of ``jpeg`` with one byte changed (even draws) or a marker written (odd draws: 0xFF and a random
    byte, as a flipped byte next to an 0xFF makes one), anywhere after the start-of-image marker."""
    rng, copies = random.Random(seed), []
    for draw in range(count):
        data = bytearray(jpeg)
        at = rng.randrange(2, len(data) - 2)
        data[at:at + 1 + draw % 2] = bytes([rng.randrange(256)]) if draw % 2 == 0 else bytes([0xFF, rng.randrange(256)])
        copies.append(bytes(data))
    return copies


def dali_decode(jpegs: list[bytes]) -> list[np.ndarray]:
    """DALI's CPU decoder over ``jpegs`` as one batch, RGB as the DALI loader asks for it."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=len(jpegs), num_threads=1, device_id=None)
    def decode():
        return fn.decoders.image(fn.external_source(source=lambda: [np.frombuffer(j, np.uint8) for j in jpegs],
                                                    batch=True), device="cpu", output_type=types.RGB)

    pipe = decode()
    pipe.build()
    return [np.asarray(image) for image in pipe.run()[0]]


@pytest.mark.parametrize("kind", ["built", "grey", "progressive"])
def test_a_frame_the_check_passes_decodes_alike_on_both_backends(frames, kind):
    pytest.importorskip("nvidia.dali")
    passed, refused = [], []
    for copy in damaged_copies(frames[kind], 300, seed=len(kind)):
        try:
            size = jpeg_size(copy)
        except ValueError as err:
            refused.append(str(err))
            continue
        passed.append((copy, size))
    assert len(passed) > 50 and len(refused) > 50  # damage of both kinds was met
    assert all(text.startswith(("decode: ", "truncated: ")) for text in refused)
    ours = decode_frames([copy for copy, _ in passed])  # raises FrameDecodeError on any the check let through
    theirs = dali_decode([copy for copy, _ in passed])
    for (copy, size), mine, dali in zip(passed, ours, theirs):
        assert tuple(mine.shape) == (3, *size) and dali.shape == (*size, 3)
        np.testing.assert_array_equal(mine.permute(1, 2, 0).numpy(), dali)


def test_a_stray_marker_in_the_image_data_is_refused_where_it_is(frames):
    data, at = stray_marker(frames["built"])
    with pytest.raises(ValueError, match=rf"^decode: JPEG marker {data[at + 1]:02X} inside the image data at byte {at}$"):
        jpeg_size(data)
    with pytest.raises(FrameDecodeError, match="Unsupported marker") as stopped:  # what the check spares the decoder
        decode_frames([frames["built"], data])
    assert stopped.value.frame == 1


def test_greyscale_frames_come_out_rgb_as_from_dali(frames):
    pytest.importorskip("nvidia.dali")
    (grey,), (dali,) = decode_frames([frames["grey"]]), dali_decode([frames["grey"]])
    assert grey.shape[0] == 3 and bool((grey[0] == grey[1]).all() and (grey[1] == grey[2]).all())
    np.testing.assert_array_equal(grey.permute(1, 2, 0).numpy(), dali)
