"""Which input goes into which shard, decided before any decoding so that every worker count, every SLURM array
task and every resumed run agrees on the same shards.

Items are split by video id (a deterministic hash, so adding clips never moves old ones), ordered within a split
by a seeded hash (consecutive segments of one video must not sit together: a small shuffle buffer would see them
all at once, docs/reference/libraries.md#shuffle-before-sharding), and cut into shards of ``shard_size`` items.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, replace

from avmae.config import to_dict
from avmae.shard.errors import ParameterError
from avmae.shard.format import FORMAT_VERSION
from avmae.shard.inputs.items import ClipItem
from avmae.shard.params import ABSENT_FEATURES, BuildParams, FeatureParams


@dataclass(frozen=True)
class ShardPlan:
    name: str  # "<split>-<index:06d>": the tar is <name>.tar
    split: str
    items: tuple[ClipItem, ...]


def _unit_hash(text: str) -> float:
    """A number in [0, 1) that depends only on ``text``."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big") / 2**64


def unique_ids(items: list[ClipItem]) -> list[ClipItem]:
    """A list may name the same clip twice; both are kept, the repeats get ``~2``, ``~3``... so keys stay unique: a
    suffix that another input already has as its own id (``a, a, a~2``) is passed over (``a, a~3, a~2``)."""
    listed = {item.item_id for item in items}
    used: set[str] = set()
    repeats: Counter[str] = Counter()
    out = []
    for item in items:
        item_id = item.item_id
        if item_id in used:
            while item_id in used or item_id in listed:
                repeats[item.item_id] += 1
                item_id = f"{item.item_id}~{repeats[item.item_id] + 1}"
            item = replace(item, item_id=item_id)
        used.add(item_id)
        out.append(item)
    return out


def assign_splits(items: list[ClipItem], val_fraction: float, seed: int) -> list[ClipItem]:
    """Move a ``val_fraction`` share of the training videos to ``val``, chosen per video id."""
    if not 0.0 <= val_fraction < 1.0:
        raise ParameterError("val_fraction", f"must be in [0, 1), got {val_fraction}")
    if val_fraction == 0.0:
        return items
    return [replace(item, split="val") if item.split == "train" and _unit_hash(f"val:{seed}:{item.video_id}") < val_fraction
            else item for item in items]


def add_labelled_split(items: list[ClipItem], per_class: int, seed: int) -> list[ClipItem]:
    """Append copies of ``per_class`` training inputs of every class in split ``labelled``: the few labels of a
    semi-supervised run, which pretrains on all of ``train`` and fine-tunes on ``labelled``. The inputs are drawn in
    a seeded hash order, skipping rows without a file (they would only fail twice); an input with several labels
    counts for each, and is taken while any of its classes still needs one. The copies are decoded like any input
    (a few clips more to decode, and no loader has to filter samples)."""
    if per_class < 0:
        raise ParameterError("labelled_per_class", f"must be at least 0, got {per_class}")
    if per_class == 0:
        return items
    candidates = sorted((item for item in items if item.split == "train" and item.labels and item.path is not None),
                        key=lambda item: (_unit_hash(f"labelled:{seed}:{item.item_id}"), item.item_id))
    if not candidates:
        raise ParameterError("labelled_per_class", "needs training inputs with labels and files")
    taken: Counter[str] = Counter()
    copies = []
    for item in candidates:
        if any(taken[label] < per_class for label in item.labels):
            taken.update(item.labels)
            copies.append(replace(item, item_id=f"{item.item_id}~labelled", split="labelled"))
    return items + copies


def make_plan(items: list[ClipItem], build: BuildParams) -> list[ShardPlan]:
    if build.shard_size < 1:
        raise ParameterError("shard_size", f"must be at least 1, got {build.shard_size}")
    items = assign_splits(unique_ids(items), build.val_fraction, build.seed)
    items = add_labelled_split(items, build.labelled_per_class, build.seed)
    plans = []
    for split in sorted({item.split for item in items}):
        members = sorted((item for item in items if item.split == split),
                         key=lambda item: (_unit_hash(f"order:{build.seed}:{item.item_id}"), item.item_id))
        for index, first in enumerate(range(0, len(members), build.shard_size)):
            chunk = tuple(members[first:first + build.shard_size])
            plans.append(ShardPlan(name=f"{split}-{index:06d}", split=split, items=chunk))
    return plans


def fingerprint(plans: list[ShardPlan], features: FeatureParams, build: BuildParams) -> str:
    """Identity of a build: the same inputs, feature and build parameters give the same fingerprint. Resuming
    into a folder with another fingerprint is refused (its shards would mix two builds)."""
    feature_values = to_dict(features)
    # A feature parameter at the value its absence means (the storage type, the audio front end) is left out, so a
    # build begun before the option existed keeps its fingerprint and resumes; float32 and the scenic front end are
    # part of the identity.
    for name, default in ABSENT_FEATURES.items():
        if feature_values.get(name) == default:
            del feature_values[name]
    payload = {
        "format_version": FORMAT_VERSION,
        "features": feature_values,
        "build": to_dict(build),
        "shards": [[plan.name, [item.to_json() for item in plan.items]] for plan in plans],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()
