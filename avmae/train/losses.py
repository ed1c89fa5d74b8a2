"""Fine-tuning losses on soft targets (mixup and label smoothing make every target soft)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def smooth(targets: torch.Tensor, amount: float) -> torch.Tensor:
    """CAV-MAE's label smoothing: positives (1 - a), every class + a / C."""
    if amount <= 0:
        return targets
    return targets * (1 - amount) + amount / targets.shape[-1]


def finetune_loss(logits: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], kind: str,
                  label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean over heads of BCE-with-logits (multi-label; mean over classes and samples as CAV-MAE, or with
    ``bce_sum`` summed over classes and averaged over samples as AV-MAE) or of softmax cross-entropy with soft
    targets (single-label, Epic-Kitchens verb and noun)."""
    losses = []
    for name, logit in logits.items():
        target = smooth(targets[name].to(logit.device), label_smoothing)
        logit = logit.float()
        if kind == "bce":
            losses.append(F.binary_cross_entropy_with_logits(logit, target))
        elif kind == "bce_sum":
            # Scenic's weighted_sigmoid_cross_entropy: summed over classes (docs/reference/avmae_scenic.md)
            losses.append(F.binary_cross_entropy_with_logits(logit, target, reduction="none").sum(-1).mean())
        else:
            losses.append(-(target * F.log_softmax(logit, dim=-1)).sum(dim=-1).mean())
    return torch.stack(losses).mean()
