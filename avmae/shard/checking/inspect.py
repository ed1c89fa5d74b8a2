"""``avmae-shard inspect``: what a build holds (summary, label histogram) and how one sample looks (contact sheet
of its frames, its spectrogram)."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from avmae.forward_reader import ForwardReader
from avmae.shard.format import LOGMEL_MEMBER, METADATA_MEMBER, check_shard_file_names, is_frame_member
from avmae.shard.inputs.items import file_stem_for_key
from avmae.shard.shard_tar import parse_index, sample_span
from avmae.shard.writing.manifest import MANIFEST_FILE, read_manifest
from avmae.shard_files import join, read_text


def summary(out: str | Path) -> dict[str, Any]:
    manifest = read_manifest(out)
    coverage = manifest["label_coverage"]
    return {
        "folder": str(out),
        "totals": manifest["totals"],
        "splits": {name: {"samples": split["samples"], "shards": len(split["shards"]), "failures": split["failures"],
                          "logmel_mean": split["logmel_mean"], "logmel_std": split["logmel_std"]}
                   for name, split in manifest["splits"].items()},
        "label_histogram": {label: counts["ok"] for label, counts in coverage.items()},
        "worst_coverage": sorted(({"label": label, **counts, "fraction": counts["ok"] / counts["rows"]}
                                  for label, counts in coverage.items() if counts["rows"]),
                                 key=lambda row: (row["fraction"], row["label"]))[:10],
        "features": manifest["features"],
    }


def find_sample(out: str | Path, wanted: str | int | None) -> tuple[str, dict[str, bytes]]:
    """A sample's members by key, by global position (an int), or the first one; ``out`` a folder, or a URL prefix
    or pipe: command (avmae/shard_files.py): only the sample's bytes are read."""
    manifest = read_manifest(out)
    check_shard_file_names(manifest, join(out, MANIFEST_FILE))
    position = 0
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            index = join(out, shard["idx"])
            samples = parse_index(read_text(index), index)
            for members in samples:
                key = members[0].name.partition(".")[0]
                if wanted is None or wanted == key or wanted == position:
                    return key, _read_sample(join(out, shard["tar"]), key, members)
                position += 1
    raise ValueError(f"{out}: no sample {wanted!r} (give a key or a position below {position})")


def _read_sample(tar_path: str, key: str, members) -> dict[str, bytes]:
    """member -> bytes of one sample, from one read of its span of the tar (its headers, data and padding, which
    tarfile reads as a tar of its own); a ValueError naming the tar and the sample when they are not readable."""
    exts = {member.name.partition(".")[2]: member.name for member in members}
    missing = [ext for ext in (LOGMEL_MEMBER, METADATA_MEMBER) if ext not in exts]
    if missing or not key or "" in exts:
        raise ValueError(f"{tar_path}: sample {key!r} (members {[m.name for m in members]}) is not a sample of "
                         f"this format: missing {missing or 'a key or a member part'}")
    try:
        start, end = sample_span((member.offset, member.size) for member in members)
        with ForwardReader(tar_path) as reader:  # to the end of the last member's padding: a whole tar for tarfile
            span = reader.read(start, -(-end // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE)
        with tarfile.open(fileobj=io.BytesIO(span), mode="r:") as tar:  # plain tar: one error, not one per compression
            return {ext: tar.extractfile(name).read() for ext, name in exts.items()}
    except (tarfile.TarError, KeyError, OSError) as err:
        raise ValueError(f"{tar_path}: sample {key!r} is unreadable ({err}); `avmae-shard verify` checks the "
                         "whole folder") from None


def contact_sheet(members: dict[str, bytes], columns: int = 4, gap: int = 2) -> Image.Image:
    """The sample's frames in time order, ``columns`` per row, separated by a black ``gap``."""
    frames = [Image.open(io.BytesIO(members[ext])).convert("RGB") for ext in sorted(members) if is_frame_member(ext)]
    width, height = frames[0].size
    columns = min(columns, len(frames))
    rows = (len(frames) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * width + (columns - 1) * gap, rows * height + (rows - 1) * gap), "black")
    for i, frame in enumerate(frames):
        sheet.paste(frame, ((i % columns) * (width + gap), (i // columns) * (height + gap)))
    return sheet


def spectrogram_png(members: dict[str, bytes], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mel = np.load(io.BytesIO(members[LOGMEL_MEMBER]), allow_pickle=False).astype(np.float32)
    meta = json.loads(members[METADATA_MEMBER])
    valid = meta["audio_valid_frames"]
    figure, axis = plt.subplots(figsize=(10, 3))
    image = axis.imshow(mel.T, origin="lower", aspect="auto", cmap="magma")
    axis.axvline(valid, color="cyan", linestyle="--", linewidth=1, label=f"valid frames: {valid}")
    axis.set_xlabel("frame (10 ms)")
    axis.set_ylabel("mel bin")
    axis.set_title(f"{meta['key']}  labels: {', '.join(meta.get('labels', [])) or '-'}")
    axis.legend(loc="upper right")
    figure.colorbar(image, ax=axis, label="log mel energy")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def render_sample(out: str | Path, wanted: str | int | None, png_dir: Path) -> dict[str, Any]:
    """Write ``<stem>_frames.png`` and ``<stem>_spectrogram.png`` (the stem is the key, made safe as a file name);
    returns their paths, the sample's metadata and, for a key that is not a safe file name, ``"unsafe_key": True``."""
    key, members = find_sample(out, wanted)
    stem = file_stem_for_key(key)
    png_dir.mkdir(parents=True, exist_ok=True)
    frames_path = png_dir / f"{stem}_frames.png"
    spec_path = png_dir / f"{stem}_spectrogram.png"
    contact_sheet(members).save(frames_path)
    spectrogram_png(members, spec_path)
    rendered = {"key": key, "frames_png": str(frames_path), "spectrogram_png": str(spec_path),
                "metadata": json.loads(members[METADATA_MEMBER])}
    if stem != key:
        rendered["unsafe_key"] = True
    return rendered

