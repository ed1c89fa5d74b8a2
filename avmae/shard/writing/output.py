"""Where a build's files go: a local folder (written in place) or a URL (built in a local staging folder, then
uploaded: remote_out.py). build.py drives both through the same few steps, so resume, array tasks, the fingerprint
claim and the manifest work the same wherever the shards land:

  prepare(overwrite)   clear the output when asked, make sure it can be written
  claim(description)   build.json: write it, or refuse a different build already there
  pending(description) the shards without a part record of this build
  publish_shard(...)   after write_shard (in the worker): a remote output uploads the shard, part record last
  finalize()           manifest.json and failures.jsonl from every part record, written last
  close()              remove what was staged
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from avmae.shard.writing.manifest import claim_output, finalize, pending_shards
from avmae.shard.writing.writer import PARTS_DIR
from avmae.storage import is_url


class LocalOutput:
    """The build writes straight into ``folder``: write_shard's renames already make each file whole or absent."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.location = str(folder)

    def prepare(self, overwrite: bool) -> None:
        if overwrite and self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / PARTS_DIR).mkdir(exist_ok=True)

    def claim(self, description: dict[str, Any]) -> None:
        claim_output(self.folder, description)

    def pending(self, description: dict[str, Any]) -> list[str]:
        return pending_shards(self.folder, description)

    def publish_shard(self, name: str, record: dict[str, Any]) -> None:
        """Nothing to do: the shard is in place once write_shard returns."""

    def finalize(self) -> dict[str, Any]:
        return finalize(self.folder)

    def close(self) -> None:
        pass


def open_output(out: str | Path, stage: Path | None = None):
    """A LocalOutput for a path, a RemoteOutput for a URL (``s3://bucket/prefix``, any fsspec URL); ``stage`` is
    the local folder under which a remote build stages its shards in flight (default: the system's temp folder)."""
    if is_url(str(out)):
        from avmae.shard.writing.remote_out import RemoteOutput

        return RemoteOutput(str(out), stage)
    return LocalOutput(Path(out))


def finalize_output(out: str | Path) -> dict[str, Any]:
    """``avmae-shard finalize OUT`` for a folder or a URL (an array build whose last tasks finished together)."""
    output = open_output(out)
    try:
        return output.finalize()
    finally:
        output.close()
