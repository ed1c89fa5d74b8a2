"""The parameters of a Scenic (JAX / Flax) checkpoint, read with plain ``msgpack``: no JAX, no Flax.

Scenic saves a TrainState with Flax's legacy writer (``flax.training.checkpoints.save_checkpoint`` with Orbax off,
google-research/scenic ``scenic/train_lib/train_utils.py`` ``save_checkpoint``): one file holding
``flax.serialization.to_bytes(state)``, a msgpack map nested by module path. Flax encodes (flax
``flax/serialization.py``, ``_msgpack_ext_pack`` / ``_msgpack_ext_unpack``):

- an array as ExtType code 1 whose payload is the msgpack list ``[shape, dtype name, raw C-order bytes]``;
- a numpy scalar as ExtType code 3 with the same payload and shape ``[]``; a complex number as code 2 ``[re, im]``;
- an array over 2**30 bytes as ``{"__msgpack_chunked_array__": true, "shape": {...}, "chunks": {...}}``, the
  flattened array cut into pieces, tuples written as maps ``{"0": ..., "1": ...}``.

Two TrainState layouts exist, and Scenic's own reader (``scenic/train_lib/pretrain_utils.py``
``restore_pretrained_checkpoint``) takes the params from either: ``params`` (the optax TrainState of
``scenic.train_lib``) or ``optimizer/target`` (the ``flax.optim`` TrainState of the older train library). A tree
whose only child is ``params`` is a pre-Linen checkpoint, renamed as Flax's ``convert_pre_linen`` does. Everything
else (optimiser moments, step counters, RNG keys, timing metadata) is skipped in the stream without being decoded:
its leaves carry the same names as the parameters, so they must never be mistaken for them, and a ViT-L's Adam
moments are twice its parameters' memory.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CHUNKED = "__msgpack_chunked_array__"
EXT_ARRAY, EXT_COMPLEX, EXT_SCALAR = 1, 2, 3


class ScenicCheckpointError(ValueError):
    """A file that is not a readable Scenic / Flax msgpack checkpoint; the message names it in one line."""


@dataclass
class ScenicParams:
    params: dict[str, np.ndarray]  # "module/submodule/name" -> array, as Flax names them
    layout: str  # where the params were: "params" (optax TrainState) or "optimizer/target" (flax.optim)
    pre_linen: bool  # the tree had a single "params" child and was renamed as Flax's convert_pre_linen does
    ignored: list[str]  # the other top-level fields of the TrainState, never read


def _decode_ext(code: int, data: bytes):
    import msgpack

    if code == EXT_ARRAY or code == EXT_SCALAR:
        shape, dtype, buffer = msgpack.unpackb(data, raw=False)
        array = np.frombuffer(buffer, dtype=np.dtype(dtype)).reshape(shape)
        return array.copy() if code == EXT_ARRAY else array[()]
    if code == EXT_COMPLEX:
        real, imag = msgpack.unpackb(data, raw=False)
        return complex(real, imag)
    raise ValueError(f"msgpack extension type {code} (Flax writes only 1, 2 and 3)")


def _unchunk(tree):
    """Chunked arrays back to arrays, anywhere in the tree (flax ``_unchunk_array_leaves_in_place``)."""
    if not isinstance(tree, dict):
        return tree
    if tree.get(CHUNKED) is True:
        shape = [tree["shape"][str(i)] for i in range(len(tree["shape"]))]
        chunks = [np.asarray(tree["chunks"][str(i)]).reshape(-1) for i in range(len(tree["chunks"]))]
        return np.concatenate(chunks).reshape(shape)
    return {key: _unchunk(value) for key, value in tree.items()}


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def convert_pre_linen(tree):
    """Flax's ``convert_pre_linen`` (``flax/training/checkpoints.py``): pre-Linen modules were numbered across all
    submodule classes, Linen numbers each class (name prefix) on its own, in natural order of the old names."""
    if not isinstance(tree, dict):
        return tree
    renamed, counts = {}, {}
    for name in sorted(tree, key=_natural_key):
        new = name
        match = re.match(r"^(.*)_(\d+)$", name)
        if match:
            prefix = match.group(1)
            new = f"{prefix}_{counts.get(prefix, 0)}"
            counts[prefix] = counts.get(prefix, 0) + 1
        renamed[new] = convert_pre_linen(tree[name])
    return renamed


def _flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "/"))  # an empty map (a module without parameters) adds nothing
        else:
            flat[name] = np.asarray(value)
    return flat


# Flax cuts arrays into chunks of at most 2**30 bytes (flax serialization.py MAX_CHUNK_SIZE), so no single msgpack
# object of a checkpoint is larger than that and its payload header; the reader's buffer must hold one object.
MAX_OBJECT_BYTES = 2**31 - 1
READ_BYTES = 16 * 2**20


def _read_trainstate(path: Path, handle) -> tuple[dict, list[str]]:
    """The TrainState's ``params`` or ``optimizer/target`` decoded, and the names of the fields skipped unread: the
    optimiser moments of a ViT-L are twice its parameters, and are never decoded."""
    import msgpack

    unpacker = msgpack.Unpacker(handle, ext_hook=_decode_ext, raw=False, strict_map_key=False,
                                max_buffer_size=MAX_OBJECT_BYTES, read_size=READ_BYTES)
    try:
        fields = unpacker.read_map_header()
    except msgpack.OutOfData:
        raise ScenicCheckpointError(f"{path} is empty: not a Flax msgpack checkpoint") from None
    except ValueError:
        raise ScenicCheckpointError(f"{path} is not a Flax msgpack checkpoint (it does not start with a msgpack map "
                                    "of named fields)") from None
    state, ignored = {}, []
    for _ in range(fields):
        key = unpacker.unpack()
        if key == "params":
            state["params"] = unpacker.unpack()
        elif key == "optimizer":  # flax.optim: {target: params, state: {step, param_states}}
            state["optimizer"] = {}
            for _ in range(unpacker.read_map_header()):
                name = unpacker.unpack()
                if name == "target":
                    state["optimizer"]["target"] = unpacker.unpack()
                else:
                    unpacker.skip()
                    ignored.append(f"optimizer/{name}")
        else:
            unpacker.skip()
            ignored.append(str(key))
    try:
        unpacker.skip()
    except msgpack.OutOfData:
        return state, sorted(ignored)
    raise ScenicCheckpointError(f"{path} is not a Flax msgpack checkpoint (bytes follow its msgpack map)")


def read_trainstate(path: str | Path) -> tuple[dict, list[str]]:
    """The params-holding fields of a Flax msgpack checkpoint, arrays as numpy (chunked arrays joined), and the
    fields skipped; a one-line error naming ``path`` when it is a directory, not msgpack, or cut short."""
    import msgpack

    path = Path(path)
    if path.is_dir():
        raise ScenicCheckpointError(f"{path} is a directory, an Orbax checkpoint or a checkpoint folder: avmae reads "
                                    "Flax's single-file msgpack checkpoint (Scenic's released 'checkpoint' file); give "
                                    "that file")
    if not path.exists():
        raise ScenicCheckpointError(f"{path}: no such file")
    try:
        with open(path, "rb") as handle:
            state, ignored = _read_trainstate(path, handle)
    except msgpack.OutOfData:
        raise ScenicCheckpointError(f"{path} is not a readable Flax msgpack checkpoint: cut short (truncated)") from None
    except (ValueError, TypeError, msgpack.UnpackException) as err:
        if isinstance(err, ScenicCheckpointError):
            raise
        raise ScenicCheckpointError(f"{path} is not a readable Flax msgpack checkpoint: damaged ({err})") from None
    return _unchunk(state), ignored


def read_scenic_params(path: str | Path) -> ScenicParams:
    """The parameters of a Scenic checkpoint, flat by Flax path, from either TrainState layout."""
    state, ignored = read_trainstate(path)
    optimizer = state.get("optimizer") or {}
    if isinstance(state.get("params"), dict) and state["params"]:
        tree, layout = state["params"], "params"
    elif isinstance(optimizer.get("target"), dict) and optimizer["target"]:
        tree, layout = optimizer["target"], "optimizer/target"
    else:
        raise ScenicCheckpointError(f"{path}: no params found (neither 'params' nor 'optimizer/target'; fields "
                                    f"{sorted(set(state) | set(ignored))[:8]})")
    if layout == "params" and "optimizer" in state:
        ignored = sorted(ignored + ["optimizer"])
    pre_linen = set(tree) == {"params"} and isinstance(tree["params"], dict)
    if pre_linen:
        tree = convert_pre_linen(tree["params"])
    params = _flatten(tree)
    if not params:
        raise ScenicCheckpointError(f"{path}: the params at '{layout}' hold no arrays")
    return ScenicParams(params, layout, pre_linen, ignored)
