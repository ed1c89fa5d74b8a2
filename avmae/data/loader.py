"""One entry point for both loaders: ``build_loader(config, split, rank, world)`` returns an iterable of batches
in the contract of docs/loaders.md#the-batch-contract (``video`` (B, T, 3, H, W), ``audio`` (B, time, mel) normalised,
labels, ``key``, ``valid``), from DALI on a GPU or a PyTorch DataLoader (the torch backend) on a CPU."""

from __future__ import annotations

from typing import Any

import torch

from avmae.data.config import AugmentConfig, DataConfig
from avmae.data.eval_order import eval_batches
from avmae.data.host_memory import keep_large_allocations
from avmae.data.samples import normalise_video
from avmae.data.spec import DataSpec, load_spec
from avmae.data.torch_loader import torch_dataloader
from avmae.storage import set_storage_limits


BACKENDS = ("dali", "torch")
# Older names still accepted in configs and on command lines, and the backend each now means: the one place they map.
OLDER_BACKEND_NAMES = {"webdataset": "torch"}


def choose_backend(requested: str) -> str:
    """The backend that runs for ``data.backend``: ``auto`` is DALI when CUDA is present, torch otherwise."""
    requested = OLDER_BACKEND_NAMES.get(requested, requested)
    if requested == "auto":
        return "dali" if torch.cuda.is_available() else "torch"
    if requested not in BACKENDS:
        raise ValueError(f"unknown data backend {requested!r}: use auto, dali or torch")
    return requested


class Loader:
    """Batches of one split for one rank. Training iterates forever, with ``augment``'s frame choice, crop and flip
    (its defaults when None); evaluation yields ``len(self)`` batches and takes no augmentation."""

    def __init__(self, spec: DataSpec, config: DataConfig, *, train: bool, rank: int = 0, world: int = 1,
                 device: torch.device | None = None, start_batch: int = 0, augment: AugmentConfig | None = None,
                 reader_draws: dict[int, int] | None = None):
        if augment is not None and not train:
            raise ValueError("evaluation takes no augmentation: the augment section is for training only")
        augment = (augment or AugmentConfig()) if train else None
        shorter = config.eval_short_side or spec.features["short_side"]
        if not train and shorter < config.crop_size:  # evaluation crops the centre without resizing to it
            raise ValueError(f"evaluation frames of short side {shorter} are smaller than data.crop_size "
                             f"{config.crop_size}: set data.eval_short_side to at least the crop ({spec.root})")
        self.spec, self.config, self.train = spec, config, train
        self.device = device or torch.device("cpu")
        self.backend = choose_backend(config.backend)
        if self.device.type == "cpu" or self.backend == "dali":
            # CPU batches are normalised into fresh tensors, and the DALI feed packs every batch into fresh host
            # arrays (on any device): reuse their pages
            keep_large_allocations()
        if self.backend == "dali":
            from avmae.data.dali.loader import DaliLoader

            device_id = self.device.index if self.device.type == "cuda" else None
            if device_id is None and self.device.type == "cuda":
                device_id = torch.cuda.current_device()
            self._source = DaliLoader(spec, config, train=train, rank=rank, world=world, device_id=device_id,
                                      start_batch=start_batch, augment=augment, reader_draws=reader_draws)
        else:
            self._source = torch_dataloader(spec, config, train=train, rank=rank, world=world,
                                            pin_memory=self.device.type == "cuda", start_batch=start_batch,
                                            reader_draws=reader_draws, augment=augment)
        self._batches = None if train else eval_batches(spec.samples, world, config.batch_size)

    def __len__(self) -> int:
        if self._batches is None:
            raise TypeError("a training stream has no length: the trainer decides the number of steps")
        return self._batches

    def __iter__(self):
        for batch in self._source:
            batch = {k: (v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                     for k, v in batch.items()}
            batch["video"] = normalise_video(batch["video"], self.config)
            yield batch


def build_loader(config: DataConfig, split: str, *, train: bool, rank: int = 0, world: int = 1,
                 device: torch.device | None = None, expect: dict[str, Any] | None = None,
                 start_batch: int = 0, augment: AugmentConfig | None = None,
                 reader_draws: dict[int, int] | None = None) -> Loader:
    """A loader over ``config.shards`` / ``split``; ``expect`` are feature parameters the shards must have;
    ``start_batch`` continues a training stream after the batches a resumed run already consumed, and
    ``reader_draws`` are its readers' draws up to there (the last consumed batch of each reader's ``drawn``;
    without them, batches times the batch size, wrong once a sample was skipped); ``augment``: training's
    transforms (as ``Loader``)."""
    if not config.shards:
        raise ValueError("data.shards is not set: point it at a folder made by avmae-shard build")
    set_storage_limits(config.storage_timeout_s, config.storage_retries)  # from the manifest's read on
    spec = load_spec(config.shards, split, expect)
    return Loader(spec, config, train=train, rank=rank, world=world, device=device, start_batch=start_batch,
                  augment=augment, reader_draws=reader_draws)
