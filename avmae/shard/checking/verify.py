"""``avmae-shard verify``: every tar and index reads back, counts and checksums match the manifest, and every
member's bytes match the CRC32 its ``.crc`` sidecar recorded at build time (format version 2; version-1 folders have
no sidecars and are reported unchecked). A damaged member is named by shard, key and member, as the loaders name it.
A shard's ``.labels`` sidecar, where it has one, must list the index's keys in order with the labels of each
sample's JSON member (class-balanced sampling trusts it instead of the JSONs); a row that differs is a problem naming
the sidecar and the sample. The deep check opens every sample and applies the loaders' own checks to each member
(shard/checking/sample_rules.py: whole JPEGs of the promised size, a finite log-mel of the promised shape and dtype, a
JSON whose labels fit the label mode), so a folder verify passes holds no sample the loaders would skip.

A remote folder (a URL or pipe: root, avmae/shard_files.py) is verified the same way, one shard at a time on a
local copy made by one sequential read of each of its files: the checks and their lines are the local ones."""

from __future__ import annotations

import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from avmae.shard.format import (LOGMEL_MEMBER, META_KEY, METADATA_MEMBER, UNCHECKED_VERSIONS, check_shard_file_names,
                                crc32, frame_member, metadata_labels, parse_checksums, sample_members, sidecar_labels)
from avmae.shard.checking.sample_rules import SampleProblem, SampleRules, checked_logmel, checked_metadata, frame_size
from avmae.shard.shard_tar import Member, parse_index, read_members, sha256_file, utf8_text
from avmae.shard.writing.manifest import FAILURES_FILE, MANIFEST_FILE, read_manifest
from avmae.shard_files import copy_to, exists, join, read_text
from avmae.storage import is_url


# What reading a sample's members from a damaged tar raises: tarfile.TarError, or OSError and EOFError from a tar
# that breaks off. (The sample checks turn their parsers' errors into SampleProblems.) A damaged member is a problem
# line; verify must not lose its report to one.
_UNREADABLE = (tarfile.TarError, OSError, EOFError)


def _check_sample(tar: tarfile.TarFile, where: str, names: list[str], num_frames: int, rules: SampleRules
                  ) -> list[str]:
    """Problems with one sample's members: the members the manifest promises (``num_frames`` stored frames, the
    log-mel, the JSON), each checked by the loaders' rules (checking/sample_rules.py: one line per bad member, with the
    skip reason the loaders would record), and a JSON naming its own key; ``where`` names the shard in each line."""
    undotted = [name for name in names if "." not in name.strip(".")]
    if undotted:  # WebDataset splits a member name at its first dot into key and member: these have no member part
        return [f"{where}: {names[0]}: member names without a '.<member>' part: {undotted}"]
    exts = {name.partition(".")[2]: name for name in names}
    frames = [frame_member(i) for i in range(num_frames)]
    key = names[0].partition(".")[0]
    missing = [ext for ext in sample_members(frames) if ext not in exts]
    if missing:
        return [f"{where}: sample {key}: missing members {missing}"]
    members = {ext: _member_bytes(tar, exts[ext]) for ext in sample_members(frames)}
    problems = []
    try:
        frame_size(members, frames, rules)
    except SampleProblem as problem:
        problems.append(f"{where}: sample {key}: {problem}")
    try:
        checked_logmel(members[LOGMEL_MEMBER], rules)
    except SampleProblem as problem:
        problems.append(f"{where}: sample {key}: {problem}")
    try:
        metadata = checked_metadata(members[METADATA_MEMBER], rules)
    except SampleProblem as problem:
        problems.append(f"{where}: sample {key}: {problem}")
    else:
        if metadata[META_KEY] != key:
            problems.append(f"{where}: sample {key}: metadata key {metadata[META_KEY]!r} differs from the member name")
    return problems


def _member_bytes(tar: tarfile.TarFile, name: str) -> bytes:
    handle = tar.extractfile(name)
    if handle is None:  # a directory, a device: tarfile has no bytes to give
        raise tarfile.TarError(f"member {name} is not a file")
    return handle.read()


def _error(err: BaseException) -> str:
    """An error on one line, with its type (a TokenError's text alone is a tuple)."""
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def _damaged_members(shard: dict[str, Any], tar_path: Path, crc_path: Path, members: list[Member]) -> list[dict]:
    """Each member of the tar whose CRC32 differs from the sidecar's (or that the sidecar lacks), as
    {shard, key, member, detail}. Raises ValueError for a sidecar that does not describe the tar."""
    recorded = parse_checksums(utf8_text(crc_path.read_bytes(), crc_path.name), str(crc_path))
    unknown = sorted(set(recorded) - {member.name for member in members})
    if unknown:
        raise ValueError(f"{crc_path.name}: lists members the tar does not hold: {unknown[:3]}")
    damaged = []
    with open(tar_path, "rb") as handle:
        for member in members:
            key, _, ext = member.name.partition(".")
            handle.seek(member.offset)
            actual, expected = crc32(handle.read(member.size)), recorded.get(member.name)
            if expected is None:
                detail = "the checksum sidecar has no entry for it"
            elif actual != expected:
                detail = f"CRC32 {actual:08x} differs from the {expected:08x} recorded at build time"
            else:
                continue
            damaged.append({"shard": shard["name"], "key": key, "member": ext, "detail": detail})
    return damaged


def _checksum_problems(out: Path, shard: dict[str, Any], members: list[Member]) -> tuple[list[dict], list[str]]:
    """(damaged members, problem lines) of one shard's CRC32 check; an unusable sidecar is one problem."""
    try:
        if not shard.get("crc"):
            raise ValueError("the manifest lists none for this shard")
        damaged = _damaged_members(shard, out / shard["tar"], out / shard["crc"], members)
    except (ValueError, OSError) as err:  # a missing or malformed sidecar
        return [], [f"{shard['name']}: checksum sidecar unusable: {err}"]
    return damaged, [f"{shard['tar']}: sample {d['key']}: member {d['member']}: {d['detail']}" for d in damaged]


def _json_labels(handle, sample: list[Member]) -> list[str] | None:
    """The labels of a sample's JSON member, read from the open tar; None when it has no readable JSON (the sample
    checks report that)."""
    meta = next((member for member in sample if member.ext == METADATA_MEMBER), None)
    if meta is None:
        return None
    handle.seek(meta.offset)
    try:
        return metadata_labels(handle.read(meta.size))
    except (ValueError, AttributeError, RecursionError):  # not JSON, not an object, nested past the parser
        return None


def _label_problems(here: Path, shard: dict[str, Any], indexed: list[list[Member]]) -> list[str]:
    """Problem lines of a shard's labels sidecar: unusable (missing, malformed, rows that are not the index's keys
    in order), or a row whose labels differ from the sample's JSON. A shard built before the sidecar has none."""
    if not shard.get("labels"):
        return []
    keys = [sample[0].key for sample in indexed]
    try:
        rows = sidecar_labels((here / shard["labels"]).read_bytes(), keys, shard["labels"])
    except (ValueError, OSError) as err:
        return [f"{shard['name']}: labels sidecar unusable: {err}"]
    problems = []
    with open(here / shard["tar"], "rb") as handle:
        for sample, key, labels in zip(indexed, keys, rows):
            recorded = _json_labels(handle, sample)
            if recorded is not None and recorded != labels:
                problems.append(f"{shard['labels']}: sample {key}: labels {labels} differ from its JSON's {recorded}")
    return problems


def _check_shard(here: Path, shard: dict[str, Any], checked: bool, deep: bool, num_frames: int, rules: SampleRules,
                 problems: list[str], damaged: list[dict]) -> int:
    """One shard's checks (files in the local folder ``here``), appending to ``problems`` and ``damaged``; returns
    the samples its index lists (0 when unreadable)."""
    tar_path, idx_path = here / shard["tar"], here / shard["idx"]
    if sha256_file(tar_path) != shard["sha256"]:
        problems.append(f"{shard['tar']}: checksum differs from the manifest (file changed or damaged)")
    try:
        members = read_members(tar_path)
        indexed = parse_index(idx_path.read_bytes(), shard["idx"])
    except (tarfile.TarError, ValueError, OSError) as err:
        problems.append(f"{shard['name']}: unreadable: {err}")
        return 0
    if checked:
        found, trouble = _checksum_problems(here, shard, members)
        damaged += found
        problems += trouble
    flat = [member for sample in indexed for member in sample]
    if flat != members:
        problems.append(f"{shard['idx']}: does not describe {shard['tar']} (offsets, sizes or names differ)")
    if len(indexed) != shard["samples"]:
        problems.append(f"{shard['name']}: {len(indexed)} samples, manifest says {shard['samples']}")
    if flat == members:  # the JSONs are read where the index says: a wrong index is reported above
        problems += _label_problems(here, shard, indexed)
    if deep and flat == members:  # a wrong index names members the tar does not have: reported above
        with tarfile.open(tar_path) as tar:
            for sample in indexed:
                names = [m.name for m in sample]
                try:
                    problems += _check_sample(tar, shard["tar"], names, num_frames, rules)
                except (KeyError, *_UNREADABLE) as err:  # a member the tar does not hold, a tar that breaks off
                    problems.append(f"{shard['tar']}: sample {names[0]!r}: unreadable: {_error(err)}")
    return len(indexed)


class _Missing(Exception):
    """A shard's tar or index is not there (``what``: "tar" or "index")."""

    def __init__(self, what: str):
        super().__init__(what)
        self.what = what


@contextmanager
def _local_files(out: str | Path, shard: dict[str, Any]) -> Iterator[Path]:
    """A local folder holding the shard's tar, index and sidecars: ``out`` itself, or a temporary copy of a remote
    shard (removed after its checks), each file read once. _Missing when the tar or index is not there; a remote
    file that cannot be read for another reason (a failing command, refused credentials) is the StorageError that
    says so, not a missing file."""
    if not is_url(out):
        for what, name in (("tar", shard["tar"]), ("index", shard["idx"])):
            if not (Path(out) / name).exists():
                raise _Missing(what)
        yield Path(out)
        return
    with tempfile.TemporaryDirectory(prefix="avmae-verify-") as folder:
        for what, name in (("tar", shard["tar"]), ("index", shard["idx"]), ("sidecar", shard.get("crc")),
                           ("sidecar", shard.get("labels"))):
            if not name:
                continue
            try:
                copy_to(join(out, name), Path(folder) / name)
            except OSError:
                if exists(join(out, name)):  # asked only after a failed read: it raises when the store failed
                    raise
                if what != "sidecar":  # a missing sidecar is reported by the checksum or labels check
                    raise _Missing(what) from None
        yield Path(folder)


def verify(out: str | Path, deep: bool = True) -> dict[str, Any]:
    """Check a finished build. Returns {"ok", "shards", "samples", "failures", "problems", "checksums" ("checked" or
    "unchecked"), "damaged" (members whose CRC32 is wrong)}; ``deep`` also opens every sample."""
    manifest = read_manifest(out)
    check_shard_file_names(manifest, join(out, MANIFEST_FILE))
    checked = manifest["format_version"] not in UNCHECKED_VERSIONS
    damaged: list[dict] = []
    num_frames, rules = manifest["features"]["num_frames"], SampleRules.of_manifest(manifest)
    problems: list[str] = []
    shards = samples = 0
    for split_name, split in manifest["splits"].items():
        counted = 0
        for shard in split["shards"]:
            shards += 1
            try:
                with _local_files(out, shard) as here:
                    counted += _check_shard(here, shard, checked, deep, num_frames, rules, problems, damaged)
            except _Missing as missing:
                problems.append(f"{shard['name']}: {missing.what} file is missing")
        if counted != split["samples"]:
            problems.append(f"split {split_name}: shards hold {counted} samples, manifest says {split['samples']}")
        samples += counted
    failures_path = join(out, FAILURES_FILE)
    failures = sum(1 for line in read_text(failures_path).splitlines() if line.strip()) if exists(failures_path) else 0
    totals = manifest["totals"]
    if failures != totals["failures"]:
        problems.append(f"failures.jsonl has {failures} lines, manifest says {totals['failures']}")
    if totals["inputs"] != totals["inputs_ok"] + totals["failures"]:
        problems.append(f"inputs {totals['inputs']} != inputs with samples {totals['inputs_ok']} + failures "
                        f"{totals['failures']}")
    return {"ok": not problems, "shards": shards, "samples": samples, "failures": failures, "problems": problems,
            "checksums": "checked" if checked else "unchecked", "damaged": damaged}
