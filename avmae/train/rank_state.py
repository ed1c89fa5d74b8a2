"""A rank's own resume state in a checkpoint folder, read and checked before anything acts on it: its random
generators (``rng_rank<r>.json``, avmae/train/rng.py) and its readers' positions (``data_rank<r>.json``,
avmae/train/reader_positions.py).

A damaged or hand-edited file must not be met deep in a resume: a non-JSON file used to end in a JSON traceback that
named no file, and a huge reader position made the loader skip that many draws, unread, for hours without a word.
Each problem here is one line naming the file; the positions are bounded by the run's own count of samples drawn
over all ranks, which the same checkpoint records (a rank's readers cannot have drawn more than every rank together).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from avmae.train.rng import set_rng_state


class DamagedRankState(ValueError):
    """A rank's resume file that cannot be used; ``str(error)`` names it and says what is wrong."""


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DamagedRankState(f"{path}: cannot read this rank's {what} ({' '.join(str(err).split())}); resume from "
                               "an earlier checkpoint (move this one aside) or start the run again") from None


def restore_rng(path: Path) -> None:
    """Set this process's random generators from ``rng_rank<r>.json``."""
    state = _read_json(path, "random generator state")
    try:
        set_rng_state(state)
    except (KeyError, TypeError, ValueError, IndexError, RuntimeError) as err:
        raise DamagedRankState(f"{path}: not a random generator state as avmae writes it ({type(err).__name__}: "
                               f"{' '.join(str(err).split())}); resume from an earlier checkpoint") from None


def read_positions(path: Path, samples_drawn: int | None) -> dict[str, Any]:
    """``data_rank<r>.json``, checked: ``reader_draws`` maps reader numbers to non-negative counts whose sum is at
    most ``samples_drawn`` (the checkpoint's total over all ranks; None: not recorded, no bound)."""
    data = _read_json(path, "reader positions")
    draws = data.get("reader_draws") if isinstance(data, dict) else None
    if not isinstance(draws, dict) or not all(
            isinstance(reader, str) and reader.isdigit() and isinstance(count, int) and not isinstance(count, bool)
            and count >= 0 for reader, count in draws.items()):
        raise DamagedRankState(f"{path}: reader_draws must map reader numbers to counts of draws (whole numbers >= 0); "
                               "resume from an earlier checkpoint")
    total = sum(draws.values())
    if samples_drawn is not None and total > samples_drawn:
        raise DamagedRankState(f"{path}: its readers made {total:,} draws, more than the {samples_drawn:,} samples the "
                               "whole run drew by this checkpoint (samples_drawn); the file is damaged: resume from an "
                               "earlier checkpoint")
    return data
