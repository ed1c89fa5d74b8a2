"""The contrastive term's negatives are the whole global batch: 2 gloo ranks give the loss and the gradients of
one process holding the whole batch (CAV-MAE's DataParallel only saw one GPU's share,
docs/reference/cavmae.md#contrastive-negatives-per-gpu)."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from avmae.models.losses import info_nce


def _features():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)


def _rank(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        audio, video = _features()
        audio = audio[rank * 3:(rank + 1) * 3].clone().requires_grad_(True)
        video = video[rank * 3:(rank + 1) * 3].clone().requires_grad_(True)
        loss = info_nce(audio, video, 0.1, bidirectional=True)
        loss.backward()
        own = info_nce(audio, video, 0.1, bidirectional=True, global_negatives=False)  # contrastive.negatives local
        results[rank] = (loss.item(), audio.grad.clone(), video.grad.clone(), own.item())
    finally:
        dist.destroy_process_group()


def test_two_ranks_equal_one_process_with_the_global_batch():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_rank, args=(port, results), nprocs=2, join=True)

    audio, video = _features()
    audio.requires_grad_(True)
    video.requires_grad_(True)
    loss = info_nce(audio, video, 0.1, bidirectional=True)
    loss.backward()
    loss = loss.item()
    per_rank = [results[0][0], results[1][0]]
    assert abs(sum(per_rank) / 2 - loss) < 1e-6  # the mean of the ranks' losses is the global loss
    # Each rank's backward sums every rank's loss through all_gather; data-parallel averaging halves it.
    for rank in (0, 1):
        rows = slice(rank * 3, (rank + 1) * 3)
        assert torch.allclose(results[rank][1] / 2, audio.grad[rows], atol=1e-6)
        assert torch.allclose(results[rank][2] / 2, video.grad[rows], atol=1e-6)
    # With only the local share as negatives (CAV-MAE's DataParallel), each rank's loss is its chunk's alone.
    with torch.no_grad():
        local = [info_nce(audio[r * 3:(r + 1) * 3], video[r * 3:(r + 1) * 3], 0.1, True).item() for r in (0, 1)]
    assert results[0][3] == pytest.approx(local[0], abs=1e-6) and results[1][3] == pytest.approx(local[1], abs=1e-6)
    assert abs(sum(local) / 2 - loss) > 1e-3
