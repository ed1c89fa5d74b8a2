"""Errors of the shard library that a caller maps to its own words: the library names a parameter as the library
spells it (``src``, ``task_index``); ``avmae-shard`` turns that into its flag (``--src``, ``--task-index``)."""

from __future__ import annotations

import errno


class ParameterError(ValueError):
    """A parameter of a build whose value cannot be used."""

    def __init__(self, parameter: str, problem: str):
        super().__init__(f"{parameter} {problem}")
        self.parameter, self.problem = parameter, problem

    def __reduce__(self):  # picklable across the build's worker processes
        return type(self), (self.parameter, self.problem)


class OutOfSpaceError(RuntimeError):
    """The output file system is full (or over quota); what was written completely stays and a re-run resumes."""


NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
