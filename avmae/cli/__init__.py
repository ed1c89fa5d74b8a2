"""The command-line entry points (avmae-shard, avmae-train, avmae-eval, avmae-bench, avmae-convert)."""

from __future__ import annotations

import sys


def say(line: str) -> None:
    """``line`` on stderr in one write. The ranks of a job share one stream, and print() writes a text and its
    newline apart (stderr writes through), so two ranks' lines could run together on one line."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()
