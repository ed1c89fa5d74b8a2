"""Audio <-> video retrieval from pooled embeddings, vectorised (CAV-MAE's is an O(N^2) Python loop,
docs/reference/evaluation.md#retrieval-recall).

Cosine similarity; the rank of the true pair (0-based) is its position in a stable descending sort of the scores: the
candidates scored higher, plus those scored the same that come before it. R@K = mean(rank < K); MR = median(rank) + 1,
as CAV-MAE defines them. Ties must not go to the true pair: a collapsed model (every embedding the same) would then
score R@1 = 1. Embeddings that hold inf or NaN compare false with everything, which would do the same: they are an
error naming the modality, not a score."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def ranks_of_true_pairs(queries: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """(N,) 0-based rank of candidate i among all candidates for query i."""
    similarity = F.normalize(queries.float(), dim=1) @ F.normalize(candidates.float(), dim=1).T
    true = similarity.diagonal().unsqueeze(1)
    index = torch.arange(len(similarity), device=similarity.device)
    before = index.unsqueeze(0) < index.unsqueeze(1)  # [i, j]: candidate j comes before candidate i
    return (similarity > true).sum(dim=1) + ((similarity == true) & before).sum(dim=1)


def _check_finite(embeddings: torch.Tensor, modality: str) -> None:
    bad = int((~torch.isfinite(embeddings)).any(dim=1).sum())
    if bad:
        raise ValueError(f"retrieval: {bad} of {len(embeddings)} {modality} embeddings hold inf or NaN (the model's "
                         "outputs are not finite); they cannot be ranked")


def recall_metrics(ranks: torch.Tensor, ks: tuple[int, ...] = (1, 5, 10)) -> dict[str, float]:
    ranks_np = ranks.cpu().numpy()
    out = {f"R@{k}": float((ranks_np < k).mean()) for k in ks}
    out["MR"] = float(np.median(ranks_np) + 1)
    return out


def retrieval_metrics(audio: torch.Tensor, video: torch.Tensor) -> dict[str, dict[str, float]]:
    """Both directions, with chance levels for reference (R@K of random ranking = K / N)."""
    _check_finite(audio, "audio")
    _check_finite(video, "video")
    count = len(audio)
    return {
        "audio_to_video": recall_metrics(ranks_of_true_pairs(audio, video)),
        "video_to_audio": recall_metrics(ranks_of_true_pairs(video, audio)),
        "chance": {**{f"R@{k}": min(1.0, k / count) for k in (1, 5, 10)}, "MR": (count + 1) / 2},
        "samples": count,
    }
