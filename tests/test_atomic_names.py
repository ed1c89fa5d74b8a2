"""Atomic writes' temporary names are unique per call, not per process id: array tasks on other nodes (each in its
own pid namespace) may write the same file with the same pid, and a shared temporary file let one publish the
other's half-written bytes."""

from __future__ import annotations

import multiprocessing
import os
import socket
import time
from fnmatch import fnmatch
from pathlib import Path

import avmae.files as files

SAME_PID = 4242  # what two containers' first processes may both see
PAYLOAD_BYTES = 1 << 20
WRITE_SECONDS = 1.5


def test_two_names_for_one_path_differ_and_say_who_wrote_them(tmp_path):
    path = tmp_path / "build.json"
    first, second = files.temporary_name(path), files.temporary_name(path)
    assert first != second and first.parent == second.parent == tmp_path
    for name in (first.name, second.name):
        assert name.startswith(".build.json.") and name.endswith(".partial")
        assert f".{socket.gethostname().split('.')[0][:32]}.{os.getpid()}." in name
        # what the shard build matches when it cleans up after a killed run (writer.py, build.py)
        assert fnmatch(name, ".build.json.*.partial") and fnmatch(name, ".build.json.*partial")


class _SamePid:
    """The os module as a process in its own pid namespace sees it: getpid() is the same in every writer."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def getpid() -> int:
        return SAME_PID


def _rewrite(path: str, fill: int, until: float) -> None:
    files.os = _SamePid()  # this process only
    payload = bytes([fill]) * PAYLOAD_BYTES

    def write(partial: Path) -> None:
        with open(partial, "wb") as handle:
            for start in range(0, PAYLOAD_BYTES, 1 << 16):  # in pieces, as a real writer does: time to overlap
                handle.write(payload[start:start + (1 << 16)])

    while time.time() < until:
        files.write_atomically(path, write)


def test_a_reader_never_sees_a_partial_file_while_two_writers_with_one_pid_rewrite_it(tmp_path):
    path = tmp_path / "manifest.json"
    files.write_bytes_atomically(path, b"\0" * PAYLOAD_BYTES)
    context = multiprocessing.get_context("fork")
    until = time.time() + WRITE_SECONDS
    writers = [context.Process(target=_rewrite, args=(str(path), fill, until)) for fill in (1, 2)]
    for writer in writers:
        writer.start()
    reads, seen = 0, set()
    try:
        while any(writer.is_alive() for writer in writers):
            data = path.read_bytes()
            reads += 1
            assert len(data) == PAYLOAD_BYTES and data.count(data[:1]) == PAYLOAD_BYTES, \
                f"read {reads}: {len(data)} bytes, {len(set(data))} distinct values"
            seen.add(data[0])
    finally:
        for writer in writers:
            writer.join(timeout=30)
            if writer.is_alive():
                writer.kill()
    assert [writer.exitcode for writer in writers] == [0, 0]  # neither lost its temporary file to the other
    assert seen & {1, 2} and reads > 10, (seen, reads)
    assert not list(tmp_path.glob(".*partial"))
