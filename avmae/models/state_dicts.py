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


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a ``.pth`` / ``.pt`` / ``.bin`` pickle (loaded with ``weights_only=True``: no code runs) or of a
    ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file at {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return unwrap(load_file(str(path)))
    return unwrap(torch.load(path, map_location="cpu", weights_only=True))
