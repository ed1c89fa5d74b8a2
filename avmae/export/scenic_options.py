"""What a Scenic AV-MAE checkpoint does not record, as whoever converts it answers: ``ScenicOptions``. Each field is
also a flag of ``avmae-convert scenic`` (avmae/cli/flags.py reads name, choices, default and help off the field). This
module imports no torch, so that the command's ``--help`` stays quick.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from avmae.shard.format import ClassifierLabelMode

# Scenic's encoder_strategy and decoder_strategy (scenic/projects/av_mae/vivit_multimodal.py) -> avmae's encoder
# fusion and decoder kind
ENCODER_STRATEGIES = {"separate_encoders_and_concat": "mid", "separate_encoders": "late",
                      "concat_and_encode": "early", "same_encoder": "shared"}
DECODER_STRATEGIES = {"same_decoder": "shared", "separate_decoders": "separate", "concat_and_decode": "joint"}

EncoderStrategy = Literal[tuple(ENCODER_STRATEGIES)]  # the names above
DecoderStrategy = Literal[tuple(DECODER_STRATEGIES)]


@dataclass(frozen=True)
class ScenicOptions:
    """None: the checkpoint's parameters tell, or Scenic's recipes' value is taken and listed as assumed."""

    fusion_layer: int | None = field(default=None, metadata={
        "help": "MBT: first bottleneck layer (default 18 for 527 classes, 16 for 309; needed for any other class "
                "count)"})
    label_mode: ClassifierLabelMode | None = field(default=None, metadata={
        "help": "MBT: multi (sigmoid, AudioSet) or single (softmax, VGGSound); default from the class count (527: "
                "multi, 309: single)"})
    encoder_strategy: EncoderStrategy | None = field(default=None, metadata={
        "help": "pretraining: the config's encoder_strategy; needed only for one 'Transformer' stack "
                "(concat_and_encode and same_encoder have the same names)"})
    decoder_strategy: DecoderStrategy | None = field(default=None, metadata={
        "help": "pretraining: the config's decoder_strategy (default for one 'Decoder' stack: same_decoder, both "
                "released recipes)"})
    inpainting: bool = field(default=False, metadata={
        "help": "pretraining: the model was trained with use_inpainting (not recorded in the parameters)"})
