"""Linear probe: a linear classifier on frozen pooled features of a pretraining checkpoint (audio and video
features concatenated), trained on one split and scored on another. The cheap way to follow pretraining."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from avmae.eval.metrics import multilabel_metrics, single_label_metrics


def train_probe(features: torch.Tensor, labels: torch.Tensor, multilabel: bool, classes: int, steps: int = 300,
                lr: float = 0.05, weight_decay: float = 1e-4, seed: int = 0) -> torch.nn.Linear:
    """Full-batch AdamW on standardised features (a convex problem: the result hardly depends on the settings)."""
    torch.manual_seed(seed)
    probe = torch.nn.Linear(features.shape[1], classes)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        optimizer.zero_grad()
        logits = probe(features)
        loss = F.binary_cross_entropy_with_logits(logits, labels.float()) if multilabel else F.cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()
    return probe


def linear_probe(train: dict, test: dict, multilabel: bool, classes: int) -> dict:
    def stack(features: dict) -> torch.Tensor:
        return torch.cat([features["audio"], features["video"]], dim=1)

    x_train, x_test = stack(train), stack(test)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    probe = train_probe((x_train - mean) / std, train["label"], multilabel, classes)
    with torch.no_grad():
        scores = probe((x_test - mean) / std).numpy()
    labels = test["label"].numpy()
    metrics = multilabel_metrics(scores, labels) if multilabel else single_label_metrics(scores, labels)
    metrics.pop("per_class_ap", None)
    return {**metrics, "train_samples": int(len(x_train)), "feature_dim": int(x_train.shape[1])}
