"""Shard folders for the shard-stage fault tests (built by tests/helpers.build_shards): a rewrite of one of its tars with other sample keys (hostile ones), keeping its index, sidecars and manifest consistent so
that only the keys are wrong."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from avmae.shard.shard_tar import index_text, read_members, sha256_file


def rename_keys(out: Path, shard_tar: str, new_keys: dict[str, str]) -> None:
    """Rewrite ``out/shard_tar`` with each sample key ``old`` renamed to ``new_keys[old]`` (member names only, as a
    tampered or foreign tar would have them); index, sidecar and manifest checksum follow the new bytes."""
    tar_path = out / shard_tar
    with tarfile.open(tar_path) as tar:
        members = [(info.name, tar.extractfile(info).read()) for info in tar.getmembers()]
    with tarfile.open(tar_path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            key, ext = name.split(".", 1)
            info = tarfile.TarInfo(f"{new_keys.get(key, key)}.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    listed = read_members(tar_path)
    assert {m.name.rsplit(".", 2)[0] for m in listed} >= set(new_keys.values()), "tarfile changed a name"
    tar_path.with_suffix(".idx").write_text(index_text(listed))
    sidecar = tar_path.with_suffix(".crc")
    if sidecar.exists():
        from avmae.shard.format import checksum_text

        sidecar.write_text(checksum_text(members_with_new_names(tar_path)))
    labels = tar_path.with_suffix(".labels")
    if labels.exists():
        from avmae.shard.format import labels_text, parse_labels

        rows = parse_labels(labels.read_text(encoding="utf-8"), labels.name)
        labels.write_text(labels_text([(new_keys.get(key, key), row) for key, row in rows]), encoding="utf-8")
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            if shard["tar"] == shard_tar:
                shard["sha256"], shard["bytes"] = sha256_file(tar_path), tar_path.stat().st_size
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True))


def members_with_new_names(tar_path: Path) -> list[tuple[str, bytes]]:
    with tarfile.open(tar_path) as tar:
        return [(info.name, tar.extractfile(info).read()) for info in tar.getmembers()]


def files_under(folder: Path) -> set[Path]:
    return {path for path in folder.rglob("*") if path.is_file()}
