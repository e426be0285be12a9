"""Evaluation metrics computed from gathered numpy arrays (pure numpy, so they are easy to test)."""

from __future__ import annotations

import numpy as np


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN without both classes."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=bool).ravel()
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    sorted_scores = scores[order]
    ranks = np.empty(scores.size, dtype=np.float64)
    # Average rank within each run of tied scores.
    boundaries = np.flatnonzero(np.diff(sorted_scores)) + 1
    starts = np.concatenate([[0], boundaries])
    ends = np.concatenate([boundaries, [scores.size]])
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = 0.5 * (start + end - 1) + 1.0
    rank_sum = ranks[labels].sum()
    return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def masked_mean(values: np.ndarray, mask: np.ndarray) -> float:
    """Mean of `values` where `mask`; NaN when nothing is valid."""
    mask = np.asarray(mask, dtype=bool)
    return float(np.asarray(values, dtype=np.float64)[mask].mean()) if mask.any() else float("nan")


def majority_rate(targets: np.ndarray, mask: np.ndarray) -> float:
    """Accuracy of always predicting the most frequent valid target."""
    valid = np.asarray(targets)[np.asarray(mask, dtype=bool)]
    if valid.size == 0:
        return float("nan")
    _, counts = np.unique(valid, return_counts=True)
    return float(counts.max() / valid.size)
