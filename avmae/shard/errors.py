"""Errors of the shard library that a caller maps to its own words: the library names a parameter as the library
spells it (``src``, ``task_index``); ``avmae-shard`` turns that into its flag (``--src``, ``--task-index``)."""

from __future__ import annotations

import errno
import re
from typing import Callable

_MENTION = re.compile(r"`([a-z][a-z0-9_]*)`")


def spell_mentions(text: str, spell: Callable[[str], str]) -> str:
    """``text`` with every parameter it names in backquotes spelled by ``spell`` (a CLI: its flag)."""
    return _MENTION.sub(lambda match: spell(match.group(1)), text)


class ParameterError(ValueError):
    """A parameter of a build whose value cannot be used. ``problem`` may name other parameters in backquotes
    (``"... or `overwrite` to start over"``), so that a caller spells them as it spells ``parameter``."""

    def __init__(self, parameter: str, problem: str):
        super().__init__(f"{parameter} {problem}")
        self.parameter, self.problem = parameter, problem

    def worded(self, spell: Callable[[str], str]) -> str:
        """The message with the parameter and every one the problem names spelled by ``spell`` (a CLI: its flag)."""
        return f"{spell(self.parameter)} " + spell_mentions(self.problem, spell)

    def __reduce__(self):  # picklable across the build's worker processes
        return type(self), (self.parameter, self.problem)


class OutOfSpaceError(RuntimeError):
    """The output file system is full (or over quota); what was written completely stays and a re-run resumes."""


NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
