"""State dicts of other systems as they come on disk: ``torch.save`` pickles (possibly wrapped in ``{'model': ...}``,
as MAE, AudioMAE and DeiT release them) or safetensors, keys possibly prefixed ``module.`` (``nn.DataParallel``)."""

from __future__ import annotations

from pathlib import Path

import torch

WRAPPERS = ("model", "state_dict", "module")  # MAE / AudioMAE: {'model': ...}; Lightning: {'state_dict': ...}


def unwrap(obj) -> dict[str, torch.Tensor]:
    """The tensor dict inside a checkpoint object, with a leading ``module.`` taken off every key."""
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in WRAPPERS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            raise ValueError(f"no state dict in this checkpoint: top-level keys {sorted(obj)[:8]}")
        obj = inner
    if not isinstance(obj, dict):
        raise ValueError(f"a checkpoint must hold a dict of tensors, got {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


class CheckpointError(ValueError):
    """A file that is not a usable checkpoint; the message names it and says what is wrong, on one line."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth`` / ``.pt`` / ``.bin`` pickle or of a ``.safetensors`` file. A pickle comes from
    elsewhere: it is loaded with ``weights_only=True``, so an object that would run code on unpickling is refused
    before anything of it runs."""
    import pickle
    import re

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return unwrap(load_file(str(path)))
        return unwrap(torch.load(path, map_location="cpu", weights_only=True))
    except pickle.UnpicklingError as err:
        # torch's message spans many lines and suggests weights_only=False, which is what must not happen here;
        # its useful part is the global the file wanted to call
        found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(err))
        wanted = f"it holds objects other than tensors ({found.group(1).strip().rstrip('.')})" if found else \
            "it holds objects other than tensors"
        raise CheckpointError(f"{path} is refused: {wanted}, and avmae loads checkpoints it did not write with "
                              "torch.load(weights_only=True) only, so that no code in them runs") from None
    except ValueError as err:  # unwrap: no tensors inside
        raise CheckpointError(f"{path}: {err}") from None
    except Exception as err:  # torch.load and safetensors raise whatever the garbage makes them raise
        first = str(err).strip().split("\n")[0].split(". ")[0] or type(err).__name__
        raise CheckpointError(f"{path} is not a checkpoint file (a torch.save pickle or safetensors): {first}"
                              ) from None
