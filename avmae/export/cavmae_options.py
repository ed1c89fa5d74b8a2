"""What a CAV-MAE checkpoint does not record, as whoever converts it answers: ``CavmaeOptions``. Each field is also a
flag of ``avmae-convert cavmae`` (avmae/cli/flags.py reads name, choices, default and help off the field). This module
imports no torch, so that the command's ``--help`` stays quick.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from avmae.shard.format import ClassifierLabelMode


@dataclass(frozen=True)
class CavmaeOptions:
    """The run the model belongs to and its label mode; None: CAV-MAE's own settings, and the label mode the run
    config's loss implies (``classifier_label_mode``)."""

    config: Path | None = field(default=None, metadata={
        "help": "run YAML the model belongs to (default: cavmae_base with CAV-MAE's data settings)"})
    label_mode: ClassifierLabelMode | None = field(default=None, metadata={
        "help": "of a fine-tuned checkpoint: multi (AudioSet) or single (VGGSound); default: as the `config`'s "
                "finetune.loss says (bce: multi, ce: single)"})
