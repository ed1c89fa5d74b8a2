"""Metrics exactly as the field defines them (docs/reference/evaluation.md), vectorised in numpy.

- Average precision per class equals scikit-learn's ``average_precision_score`` (step-wise, ties grouped at each
  distinct score). A class without positives has no AP: it is excluded from ``mAP`` and counted; ``mAP_sklearn``
  scores it 0 as scikit-learn >= 1.1 does, which is what CAV-MAE / AudioMAE report on subsets.
- Top-k accuracy for single-label data; Epic-Kitchens action accuracy from the outer product of the verb and noun
  softmaxes (Scenic's convention).
"""

from __future__ import annotations

import numpy as np


def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(C,) AP of each column; NaN where a class has no positive."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets) > 0
    order = np.argsort(-scores, axis=0, kind="stable")
    sorted_scores = np.take_along_axis(scores, order, axis=0)
    hits = np.take_along_axis(targets, order, axis=0).astype(np.float64)
    true_positives = np.cumsum(hits, axis=0)
    ranks = np.arange(1, scores.shape[0] + 1, dtype=np.float64)[:, None]
    positives = true_positives[-1]
    # Thresholds sit at the last row of each run of tied scores.
    last_of_tie = np.ones_like(sorted_scores, dtype=bool)
    last_of_tie[:-1] = sorted_scores[:-1] != sorted_scores[1:]
    precision = true_positives / ranks
    recall = np.divide(true_positives, positives, out=np.zeros_like(true_positives), where=positives > 0)
    recall_at = np.where(last_of_tie, recall, np.nan)
    # Recall gained since the previous threshold, times the precision at this threshold.
    previous = np.vstack([np.zeros((1, scores.shape[1])), recall_at[:-1]])
    previous = _forward_fill(previous)
    gains = np.where(last_of_tie, (recall - previous) * precision, 0.0)
    ap = gains.sum(axis=0)
    ap[positives == 0] = np.nan
    return ap


def _forward_fill(values: np.ndarray) -> np.ndarray:
    """Replace NaNs by the last non-NaN value above them (0 at the top)."""
    mask = np.isnan(values)
    index = np.where(~mask, np.arange(values.shape[0])[:, None], 0)
    np.maximum.accumulate(index, axis=0, out=index)
    filled = np.take_along_axis(values, index, axis=0)
    return np.nan_to_num(filled, nan=0.0)


def roc_auc(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """(C,) ROC AUC of each column (average rank of positives, ties counted half); NaN without both classes."""
    from scipy.stats import rankdata

    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets) > 0
    ranks = rankdata(scores, axis=0)
    positives = targets.sum(axis=0)
    negatives = targets.shape[0] - positives
    rank_sum = (ranks * targets).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - positives * (positives + 1) / 2) / (positives * negatives)
    auc[(positives == 0) | (negatives == 0)] = np.nan
    return auc


def multilabel_metrics(scores: np.ndarray, targets: np.ndarray) -> dict:
    """mAP (classes with positives), mAP_sklearn (empty classes as 0), mAUC and d-prime, and the class counts."""
    from scipy.stats import norm

    ap = average_precision(scores, targets)
    auc = roc_auc(scores, targets)
    empty = int(np.isnan(ap).sum())
    mean_auc = float(np.nanmean(auc)) if not np.isnan(auc).all() else float("nan")
    return {
        "mAP": float(np.nanmean(ap)) if empty < len(ap) else float("nan"),
        "mAP_sklearn": float(np.nan_to_num(ap, nan=0.0).mean()),
        "mAUC": mean_auc,
        "d_prime": float(np.sqrt(2) * norm.ppf(mean_auc)) if not np.isnan(mean_auc) else float("nan"),
        "classes": int(len(ap)), "classes_without_positives": empty, "samples": int(scores.shape[0]),
        "per_class_ap": ap,
    }


def top_k_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of samples whose label is among the k highest scores (ties broken by class index)."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == np.asarray(labels)[:, None]).any(axis=1).mean())


def single_label_metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
    return {"top1": top_k_accuracy(scores, labels, 1), "top5": top_k_accuracy(scores, labels, 5),
            "samples": int(len(labels)), "classes": int(scores.shape[1])}


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def epic_metrics(verb_scores: np.ndarray, noun_scores: np.ndarray, verbs: np.ndarray, nouns: np.ndarray) -> dict:
    """Verb and noun top-1/top-5, and action top-1/top-5 over the verb x noun outer product of softmaxes."""
    joint = softmax(verb_scores)[:, :, None] * softmax(noun_scores)[:, None, :]
    actions = np.asarray(verbs) * noun_scores.shape[1] + np.asarray(nouns)
    flat = joint.reshape(len(joint), -1)
    return {
        "verb_top1": top_k_accuracy(verb_scores, verbs, 1), "verb_top5": top_k_accuracy(verb_scores, verbs, 5),
        "noun_top1": top_k_accuracy(noun_scores, nouns, 1), "noun_top5": top_k_accuracy(noun_scores, nouns, 5),
        "action_top1": top_k_accuracy(flat, actions, 1), "action_top5": top_k_accuracy(flat, actions, 5),
        "samples": int(len(verbs)),
    }
