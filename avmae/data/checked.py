"""One sample read and checked in Python before any decoder sees it, the same for both backends: the members'
CRC32 (tar_reader), then the rules of shard/checking/sample_rules.py (each frame's JPEG markers and geometry, the
log-mel's shape and finiteness, the metadata's JSON and labels), which ``avmae-shard verify`` applies too. A failure is
a SampleError with one of faults.REASONS, so both backends skip and record the same samples for the same reasons;
and DALI, which cannot drop one sample of a batch, never meets a frame it would stop on (nor either backend's
collate a label).

The JPEG check walks the marker segments up to the start of scan (a few dozen bytes, no decode): a JPEG that
passes its CRC and this check but still fails to decode cannot come from our writer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from avmae.data.faults import SampleError
from avmae.data.spec import DataSpec
from avmae.data.tar_reader import IndexedShard, SampleBlock
from avmae.shard.checking.sample_rules import SampleProblem, SampleRules, checked_logmel, checked_metadata, frame_size
from avmae.shard.format import LOGMEL_MEMBER, METADATA_MEMBER, sample_members


@dataclass
class CheckedSample:
    shard: IndexedShard
    index: int
    frames: list[str]
    members: dict[str, bytes]
    frame_size: tuple[int, int]  # (height, width), the same for every frame
    logmel: np.ndarray  # as stored (the manifest's logmel_dtype)
    metadata: dict[str, Any]

    @property
    def key(self) -> str:
        return self.shard.keys[self.index]


class SampleChecker:
    """Reads samples of ``spec``'s shards with every check of shard/checking/sample_rules.py against the geometry and
    labels the manifest promises."""

    def __init__(self, spec: DataSpec):
        self.rules = SampleRules.of(spec.features, spec.label_mode, spec.label_names, spec.heads)

    def read(self, shard: IndexedShard, index: int, frames: list[str], block: SampleBlock | None = None
             ) -> CheckedSample:
        """``block``: the sample's bytes when a streaming reader read them ahead (remote shards)."""
        members = shard.read(index, sample_members(frames), block)  # raises on missing members, truncation, checksums
        try:
            size = frame_size(members, frames, self.rules)
            logmel = checked_logmel(members[LOGMEL_MEMBER], self.rules)
            metadata = checked_metadata(members[METADATA_MEMBER], self.rules)
        except SampleProblem as problem:
            raise SampleError(shard.tar, shard.keys[index], problem.member, problem.reason, problem.detail) from None
        return CheckedSample(shard, index, frames, members, size, logmel, metadata)
