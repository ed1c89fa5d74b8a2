"""Files that appear whole or not at all: written under a temporary name of this writer, synced, renamed, and the
folder synced, so that a crash, a killed job or a full disk never leaves a half-written file under the real name
(and a rename that a crash could still undo is not taken for done). Every file avmae writes that another program
or a later run reads goes through here: shard indexes and records, manifests, exports, reports, predictions, the
saved run config, checkpoint markers."""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable
from pathlib import Path


def sync_folder(folder: str | Path) -> None:
    """Make a rename or a new file in ``folder`` durable (POSIX: the directory entry is data of the folder)."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _host() -> str:
    """This host's short name, for a leftover temporary file to say who left it (uniqueness is the token's job)."""
    return socket.gethostname().split(".")[0][:32] or "host"


def temporary_name(path: Path) -> Path:
    """A hidden name beside ``path``, unique to this call: ``.NAME.HOST.PID.TOKEN.partial``. Array tasks or ranks
    on other nodes may write the same file, and a pid repeats across nodes and containers (each its own pid
    namespace): two writers sharing a temporary file would publish each other's half-written bytes. The random
    token makes the name unique; host and pid say who wrote it. The file is not created here (mkstemp would, with
    mode 0600, which the rename would give the published file): ``write`` creates it, with the usual mode."""
    return path.with_name(f".{path.name}.{_host()}.{os.getpid()}.{secrets.token_hex(8)}.partial")


def publish(partial: str | Path, path: str | Path) -> None:
    """Sync ``partial`` (already written and closed), rename it to ``path`` and sync the folder."""
    partial, path = Path(partial), Path(path)
    with open(partial, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(partial, path)
    sync_folder(path.parent)


def write_atomically(path: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(temporary_path)`` then publish it as ``path``; the temporary file is removed when ``write`` fails
    (a full disk leaves nothing behind but the error)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = temporary_name(path)
    try:
        write(partial)
        publish(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomically(path: str | Path, data: bytes) -> Path:
    return write_atomically(path, lambda partial: partial.write_bytes(data))


def write_text_atomically(path: str | Path, text: str) -> Path:
    return write_atomically(path, lambda partial: partial.write_text(text, encoding="utf-8"))
