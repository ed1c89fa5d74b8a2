"""The shard contract, in one place: what a sample's members are called, which metadata keys readers rely on, how
the label mode follows from a manifest, the format version and the per-member checksums.

Writer, verify, inspect and both loaders import these names; the literal member names appear nowhere else.

Checksums (format version 2) live in a sidecar per shard, ``NAME.crc``, beside ``NAME.tar`` and ``NAME.idx``: one
line per member, ``<member name> <crc32 hex>``, in tar order. Not in the ``.idx``: DALI parses that file itself
(``wds2idx`` v1.2, fixed fields) and would refuse extra ones. Not in the sample's JSON: the JSON is itself a member
that needs a checksum, and a reader would have to read and parse it before it could check the frames. A sidecar
costs one small read per shard at start-up, changes no byte of the tar or the index, and is written by the same
atomic rename as they are. CRC32 (zlib's, computed by ISA-L: avmae/crc.py) checks tens of GB/s per core: a cost
of well under 1 % of a JPEG decode.

Labels live in a second sidecar, ``NAME.labels``: one line per sample in tar order, ``<sample key>\t<labels as a
JSON array>`` (JSON, not a comma-joined list: label names hold commas, AudioSet's "Male speech, man speaking"). It
is what class-balanced sampling weighs samples by, so the sampler need not read every sample's JSON member before
the first step: over a URL root that would stream every shard once, hours at AudioSet-2M scale. Not in the index
(DALI's fixed format, as above) nor in the manifest (2M rows in one JSON file every process parses at start-up);
the key of each row lets a reader check the rows against the index (a truncated, reordered or foreign sidecar is an
error, not wrong weights). The rows are the labels of the sample's own JSON member, which stays the reference:
``avmae-shard verify`` compares the two, and shards built before the sidecar existed have none (the sampler reads
their JSON members, as it always did).
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from typing import Any, Iterable, Literal

from avmae.crc import crc32

# Version of the shard contract (docs/shards.md, docs/architecture.md#stages-and-the-contracts-they-own). Bump it when a
# member, a metadata field's meaning or a feature definition changes; readers refuse versions they do not know.
# 2: a ``.crc`` sidecar per shard holds the CRC32 of every member.
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
UNCHECKED_VERSIONS = (1,)  # readable, but without checksums

FRAME_SUFFIX = ".jpg"
LOGMEL_MEMBER = "logmel.npy"
METADATA_MEMBER = "json"
TAR_SUFFIX, INDEX_SUFFIX = ".tar", ".idx"  # a shard NAME is NAME.tar and its DALI index NAME.idx
CHECKSUM_SUFFIX = ".crc"  # the sidecar's file suffix (NAME.crc beside NAME.tar)
# The labels sidecar (NAME.labels), manifest field "labels" of a shard entry. Optional and added without a version
# bump: older readers ignore the unknown field, and the tar, index and checksum bytes are the same as before.
LABELS_SUFFIX = ".labels"
# The names a manifest may give a shard's files: what the writer writes (``<split>-<index:06d>.tar`` / ``.idx`` /
# ``.crc`` / ``.labels``), a plain name inside the shard root. No "/", no leading dot, no shell characters: a name is
# joined to a root that may be a ``pipe:`` shell command (shard_files.join), so a manifest must not be able to name
# anything else.
SHARD_FILE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*\.(tar|idx|crc|labels)")
# A shard entry's file fields, and those a shard may lack: "crc" (format-version-1 shards), "labels" (shards built
# before the labels sidecar).
SHARD_FILE_FIELDS = ("tar", "idx", "crc", "labels")
OPTIONAL_SHARD_FILE_FIELDS = ("crc", "labels")
_SHARD_FILE_SUFFIXES = {"tar": TAR_SUFFIX, "idx": INDEX_SUFFIX, "crc": CHECKSUM_SUFFIX, "labels": LABELS_SUFFIX}


def shard_file_names(name: str) -> dict[str, str]:
    """Shard ``name``'s file names by their shard-entry field, in SHARD_FILE_FIELDS order (the tar first: the order
    they are published in)."""
    return {field: f"{name}{_SHARD_FILE_SUFFIXES[field]}" for field in SHARD_FILE_FIELDS}

# Metadata keys the loaders read (the writer writes more; see shard/samples/from_item.py).
META_KEY = "key"
META_LABELS = "labels"
META_VERB = "verb_class"
META_NOUN = "noun_class"

# The log-mel's storage types (FeatureParams.logmel_dtype). A format-version-2 manifest written before the option
# has no such feature parameter: its log-mels are float16, the only type then written.
LOGMEL_DTYPES = ("float16", "float32")
DEFAULT_LOGMEL_DTYPE = "float16"


def logmel_dtype(features: dict[str, Any]) -> str:
    """The stored log-mel's dtype name of a shard folder, from its manifest's feature parameters."""
    name = features.get("logmel_dtype", DEFAULT_LOGMEL_DTYPE)
    if name not in LOGMEL_DTYPES:
        raise ValueError(f"the manifest's logmel_dtype {name!r} is not one of {list(LOGMEL_DTYPES)}")
    return name


def check_shard_file_names(manifest: dict[str, Any], source: str) -> None:
    """Refuse a manifest (``source``: its location) whose shards name files other than SHARD_FILE_NAME allows, in one
    line naming the manifest and the name."""
    for split in manifest.get("splits", {}).values():
        for shard in split.get("shards", ()):
            for field in SHARD_FILE_FIELDS:
                name = shard.get(field)
                if name is None and field in OPTIONAL_SHARD_FILE_FIELDS:
                    continue
                if not isinstance(name, str) or not SHARD_FILE_NAME.fullmatch(name):
                    raise ValueError(f"{source}: shard file name {name!r} ({field}) is not a plain "
                                     "NAME.tar/.idx/.crc/.labels file name (letters, digits, '_', '-', '.'); the "
                                     "manifest is damaged or not avmae's")


def frame_member(index: int) -> str:
    """Member extension of the sample's ``index``-th stored frame: 0 -> "00.jpg"."""
    return f"{index:02d}{FRAME_SUFFIX}"


def is_frame_member(ext: str) -> bool:
    return ext.endswith(FRAME_SUFFIX)


def sample_members(frames: Iterable[str]) -> list[str]:
    """Everything a loader reads of one sample: the given frames, the log-mel and the metadata."""
    return [*frames, LOGMEL_MEMBER, METADATA_MEMBER]


class LabelMode(StrEnum):
    MULTI = "multi"  # multi-hot over label names (AudioSet)
    SINGLE = "single"  # one label name per sample (VGGSound, Kinetics)
    VERB_NOUN = "verb_noun"  # two heads (Epic-Kitchens)
    NONE = "none"  # no labels (pretraining data)


# an imported classifier's head: multi-hot (AudioSet: sigmoid, BCE) or one class per clip (VGGSound: softmax, CE)
ClassifierLabelMode = Literal[LabelMode.MULTI.value, LabelMode.SINGLE.value]


def label_mode(manifest: dict[str, Any]) -> LabelMode:
    """The label mode of a shard folder, from its manifest."""
    labels = manifest["labels"]
    if labels.get("heads"):
        return LabelMode.VERB_NOUN
    if not labels.get("names"):
        return LabelMode.NONE
    if manifest["source"]["kind"] == "audioset" or labels.get("max_per_input", 1) > 1:
        return LabelMode.MULTI
    return LabelMode.SINGLE


# --- checksums ------------------------------------------------------------------------------------------------------

def checksum_text(members: Iterable[tuple[str, bytes | int]]) -> str:
    """The sidecar for (member name, bytes or CRC) pairs in tar order."""
    lines = []
    for name, data in members:
        value = data if isinstance(data, int) else crc32(data)
        lines.append(f"{name} {value:08x}")
    return "".join(line + "\n" for line in lines)


def parse_checksums(text: str, source: str) -> dict[str, int]:
    """member name -> CRC32 of a sidecar; raises ValueError naming ``source`` and the line on a malformed one."""
    table = {}
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(f"{source}:{number}: {line!r} is not '<member> <crc32 hex>'")
        try:
            table[fields[0]] = int(fields[1], 16)
        except ValueError:
            raise ValueError(f"{source}:{number}: {fields[1]!r} is not a hexadecimal CRC32") from None
    return table


# --- labels ---------------------------------------------------------------------------------------------------------

def metadata_labels(raw: bytes) -> list[str]:
    """The labels a sample's JSON member carries: what its labels sidecar row repeats (the writer writes the row
    from it, verify compares the row with it)."""
    return json.loads(raw).get(META_LABELS, [])


def labels_text(rows: Iterable[tuple[str, Iterable[str]]]) -> str:
    """The labels sidecar for (sample key, its labels) pairs in tar order."""
    return "".join(f"{key}\t{json.dumps(list(labels), ensure_ascii=False)}\n" for key, labels in rows)


def parse_labels(text: str, source: str) -> list[tuple[str, list[str]]]:
    """(sample key, labels) rows of a labels sidecar; raises ValueError naming ``source`` and the line on a
    malformed one."""
    rows = []
    lines = text.split("\n")  # not splitlines(): a label may hold U+2028 and the like, which JSON leaves as they are
    for number, line in enumerate(lines[:-1] if lines[-1] == "" else lines, 1):
        key, tab, encoded = line.partition("\t")
        try:
            labels = json.loads(encoded) if tab and key else None
        except ValueError:
            labels = None
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise ValueError(f"{source}:{number}: {line[:80]!r} is not '<key>\\t<labels as a JSON array of strings>'")
        rows.append((key, labels))
    return rows


def sidecar_labels(data: bytes, keys: list[str], source: str) -> list[list[str]]:
    """Each sample's labels, in index order, from a labels sidecar's bytes whose rows must name exactly the index's
    ``keys`` in order; a sidecar that is not UTF-8 text, does not parse or disagrees (a missing or extra row, another
    key: truncated, reordered or another shard's) is one ValueError naming ``source`` and the first difference."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{source}: not UTF-8 text ({err}); the labels sidecar is damaged or not avmae's") from None
    rows = parse_labels(text, source)
    if len(rows) != len(keys):
        raise ValueError(f"{source}: {len(rows)} label rows for the {len(keys)} samples of the shard's index")
    for number, ((key, _), wanted) in enumerate(zip(rows, keys), 1):
        if key != wanted:
            raise ValueError(f"{source}:{number}: row of sample {key!r} where the index has {wanted!r}")
    return [labels for _, labels in rows]
