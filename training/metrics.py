"""Evaluation metrics computed from gathered numpy arrays (pure numpy, so they are easy to test and
training does not need scikit-learn).

Rare events dominate this project's evaluation: a reward falls on well under 1% of frames and most
binary keys are pressed on 0-2% of frames, so accuracy says nothing (always predicting "no event" is
99% accurate). The metrics here are threshold-free (ROC AUC, average precision) or class-balanced
(balanced accuracy), and a linear probe gives the bar a learned head should clear.

Undefined metrics are NaN, never a guess, and are reported as NaN:
- :func:`roc_auc` needs both classes; :func:`average_precision` needs at least one positive. A key that
  is never pressed in the evaluation data therefore has NaN AUC and NaN average precision.
- :func:`balanced_accuracy` needs at least two classes among the valid targets (one class alone says
  nothing about telling classes apart); :func:`majority_rate` and :func:`masked_mean` need one valid entry.

Every metric takes an optional boolean ``mask`` of the same shape as its inputs (True = counted);
:func:`per_offset` applies a metric to each multi-token-prediction offset (the last axis).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


def _select(mask: np.ndarray | None, *arrays: np.ndarray) -> list[np.ndarray]:
    """Flatten ``arrays`` (all the same shape) and keep the entries where ``mask`` (None: all)."""
    flat = [np.asarray(a).ravel() for a in arrays]
    if mask is None:
        return flat
    keep = np.asarray(mask, dtype=bool).ravel()
    if keep.size != flat[0].size:
        raise ValueError(f"metrics: mask has {keep.size} entries, the values have {flat[0].size}")
    return [a[keep] for a in flat]


# --------------------------------------------------------------------------------------------------
# Threshold-free scores of binary events
# --------------------------------------------------------------------------------------------------


def roc_auc(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Area under the ROC curve (Mann-Whitney U with average ranks for ties); NaN without both classes.

    scores, labels, mask: same shape; a higher score means "more likely an event". 0.5 is chance.
    """
    scores, labels = _select(mask, scores, labels)
    scores = scores.astype(np.float64)
    labels = labels.astype(bool)
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


def average_precision(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Average precision: ``sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds, highest first.

    ``P_k`` and ``R_k`` are precision and recall when everything scoring ``>=`` the k-th highest distinct
    score is called an event, so tied scores enter together (the step-wise area under the precision-recall
    curve, without interpolation). Unlike ROC AUC it depends on how rare the events are: a random score
    gets the positive rate, a perfect one 1. NaN without a positive; 1.0 when every entry is positive.
    """
    scores, labels = _select(mask, scores, labels)
    scores = scores.astype(np.float64)
    labels = labels.astype(bool)
    positives = int(labels.sum())
    if positives == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    sorted_scores, sorted_labels = scores[order], labels[order]
    true_pos = np.cumsum(sorted_labels)
    # The last index of each run of tied scores is where that threshold's counts are complete.
    last_of_run = np.r_[np.flatnonzero(np.diff(sorted_scores)), sorted_scores.size - 1]
    tp = true_pos[last_of_run].astype(np.float64)
    called = (last_of_run + 1).astype(np.float64)
    precision = tp / called
    recall = tp / positives
    recall_gain = np.diff(np.r_[0.0, recall])
    return float((recall_gain * precision).sum())


def event_metrics(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """ROC AUC, average precision and the counts behind them, for one kind of rare event.

    Returns ``{"auc", "average_precision", "positive_rate", "positives", "negatives"}``;
    ``positive_rate`` is the average precision of a random score (the bar average precision is read
    against). The counts say how much an AUC can be trusted: with 20 positives its standard error is
    several points.
    """
    scores, labels = _select(mask, scores, labels)
    labels = labels.astype(bool)
    positives = int(labels.sum())
    return {
        "auc": roc_auc(scores, labels),
        "average_precision": average_precision(scores, labels),
        "positive_rate": positives / labels.size if labels.size else float("nan"),
        "positives": float(positives),
        "negatives": float(labels.size - positives),
    }


# --------------------------------------------------------------------------------------------------
# Categorical predictions
# --------------------------------------------------------------------------------------------------


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


def balanced_accuracy(predictions: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean over the classes present in the valid targets of each class's recall.

    predictions, targets: same shape, class indices (a binary component: 0/1 or bool). Always predicting
    one class scores ``1 / (number of classes present)``, whatever the class frequencies, so the rare
    classes count as much as the common one. Predicted classes that never occur as a target add no term.
    NaN when fewer than two classes occur among the valid targets.
    """
    predictions, targets = _select(mask, predictions, targets)
    predictions = predictions.astype(np.int64)
    targets = targets.astype(np.int64)
    classes = np.unique(targets)
    if classes.size < 2:
        return float("nan")
    recalls = [float((predictions[targets == c] == c).mean()) for c in classes]
    return float(np.mean(recalls))


def categorical_metrics(predictions: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None) -> dict[str, float]:
    """Top-1 accuracy, the majority-class rate it must beat, balanced accuracy and the classes present.

    Returns ``{"top1", "majority", "balanced_accuracy", "classes_present", "count"}`` (NaN where undefined).
    """
    predictions, targets = _select(mask, predictions, targets)
    everything = np.ones(targets.shape, dtype=bool)
    return {
        "top1": masked_mean(predictions == targets, everything),
        "majority": majority_rate(targets, everything),
        "balanced_accuracy": balanced_accuracy(predictions, targets),
        "classes_present": float(np.unique(targets).size),
        "count": float(targets.size),
    }


def per_offset(metric: Callable[..., float], *arrays: np.ndarray, mask: np.ndarray | None = None) -> list[float]:
    """``metric`` of each multi-token-prediction offset: arrays ``(..., L + 1)``, one value per offset.

    ``per_offset(roc_auc, scores, labels, mask=mask)`` -> ``[auc at n = 0, ..., auc at n = L]``.
    """
    offsets = np.asarray(arrays[0]).shape[-1]
    results = []
    for n in range(offsets):
        sliced = [np.asarray(a)[..., n] for a in arrays]
        results.append(metric(*sliced, mask=None if mask is None else np.asarray(mask)[..., n]))
    return results


# --------------------------------------------------------------------------------------------------
# Linear-probe baseline
# --------------------------------------------------------------------------------------------------


def frame_pair_features(latents: np.ndarray, pool: int = 1) -> np.ndarray:
    """Per frame, the latents of the frame and their change since the previous frame.

    latents: ``(B, T, C, H, W)`` windows. Returns ``(B, T, 2 * C * H/pool * W/pool)`` float32:
    ``[z_t, z_t - z_{t-1}]`` after averaging ``pool x pool`` spatial blocks (``pool`` must divide H and W;
    use it to keep large latents affordable: 32x16x16 latents of 40,000 frames are 10 GB of float64 features
    unpooled). A window's first frame has no previous frame in the window, so its change is 0: the probe
    sees exactly the frames the model sees. A linear function of these features is any linear function of
    the current and previous frame.
    """
    z = np.asarray(latents, dtype=np.float32)
    if z.ndim != 5:
        raise ValueError(f"frame_pair_features: latents must be (B, T, C, H, W), got shape {z.shape}")
    b, t, c, h, w = z.shape
    if pool < 1 or h % pool or w % pool:
        raise ValueError(f"frame_pair_features: pool={pool} must divide the latent height {h} and width {w}")
    if pool > 1:
        z = z.reshape(b, t, c, h // pool, pool, w // pool, pool).mean(axis=(4, 6))
    z = z.reshape(b, t, -1)
    previous = np.concatenate([z[:, :1], z[:, :-1]], axis=1)
    return np.concatenate([z, z - previous], axis=-1)


@dataclass
class LinearProbe:
    """A fitted linear classifier on standardised features.

    ``mean``, ``scale``: ``(F,)`` standardisation of the training features; ``weight (F, K)``, ``bias (K,)``.
    Binary probes have ``K = 1`` (one logit, logistic); categorical probes have ``K = num_classes`` (softmax),
    and a class absent from the training labels has a ``-inf`` bias (it is never predicted).
    """

    mean: np.ndarray
    scale: np.ndarray
    weight: np.ndarray
    bias: np.ndarray

    @property
    def binary(self) -> bool:
        return self.weight.shape[1] == 1

    def logits(self, features: np.ndarray) -> np.ndarray:
        """``(N, F)`` -> ``(N,)`` logit for a binary probe, ``(N, K)`` logits for a categorical one."""
        x = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        out = x @ self.weight + self.bias
        return out[:, 0] if self.binary else out

    def predict(self, features: np.ndarray) -> np.ndarray:
        """``(N,)`` predicted class (binary: ``logit > 0``)."""
        logits = self.logits(features)
        return (logits > 0).astype(np.int64) if self.binary else logits.argmax(-1)


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = x.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(x - top).sum(axis=1, keepdims=True)))[:, 0]


def _lbfgs(
    objective: Callable[[np.ndarray], tuple[float, np.ndarray]], x0: np.ndarray, max_iter: int, tol: float, memory: int = 10
) -> np.ndarray:
    """Minimise a smooth convex function with L-BFGS and a backtracking (Armijo) line search.

    Written here because numpy has no optimiser and training should not depend on scipy or scikit-learn.
    Stops when the largest gradient entry is below ``tol`` or after ``max_iter`` iterations.
    """
    x = x0.copy()
    value, grad = objective(x)
    steps: list[tuple[np.ndarray, np.ndarray, float]] = []  # (s, y, 1 / y.s)
    for _ in range(max_iter):
        if np.abs(grad).max() <= tol:
            break
        # Two-loop recursion: direction = -H grad with H the L-BFGS inverse-Hessian estimate.
        q = grad.copy()
        alphas = []
        for s, y, rho in reversed(steps):
            alpha = rho * (s @ q)
            q -= alpha * y
            alphas.append(alpha)
        if steps:
            s, y, _ = steps[-1]
            q *= (s @ y) / (y @ y)
        else:
            q /= max(1.0, float(np.abs(grad).max()))  # a cautious first step, before any curvature is known
        for (s, y, rho), alpha in zip(steps, reversed(alphas)):
            q += s * (alpha - rho * (y @ q))
        direction = -q
        slope = float(grad @ direction)
        if slope >= 0:  # not a descent direction (numerical trouble): restart from the gradient
            steps.clear()
            direction, slope = -grad, -float(grad @ grad)
        step = 1.0
        while True:
            candidate = x + step * direction
            new_value, new_grad = objective(candidate)
            if new_value <= value + 1e-4 * step * slope:
                break
            step *= 0.5
            if step < 1e-12:
                return x
        s, y = candidate - x, new_grad - grad
        if s @ y > 1e-12:
            steps.append((s, y, 1.0 / float(s @ y)))
            del steps[:-memory]
        x, value, grad = candidate, new_value, new_grad
    return x


def fit_linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int | None = None,
    l2: float = 1e-3,
    balanced: bool = True,
    max_iter: int = 300,
    tol: float = 1e-6,
) -> LinearProbe:
    """Fit an L2-regularised logistic (binary) or softmax (categorical) regression.

    features: ``(N, F)``; labels: ``(N,)`` bool (binary probe) or int classes with ``num_classes`` given
    (softmax probe). Features are standardised with the training mean and standard deviation (constant
    features keep scale 1). The objective is ``sum_i w_i CE_i / sum_i w_i + l2 / 2 * |W|^2`` (the bias is
    not penalised), with ``w_i = 1`` or, when ``balanced``, ``w_i`` inversely proportional to the frequency
    of example i's class so that every class present carries the same total weight (a rare event would
    otherwise be fitted as "never"). This matches scikit-learn's ``LogisticRegression(C=1 / (l2 * sum(w)),
    class_weight="balanced")``. Raises ``ValueError`` when the labels hold fewer than two classes.
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != np.asarray(labels).size:
        raise ValueError(f"fit_linear_probe: features must be (N, F) with N = len(labels), got {x.shape}")
    binary = num_classes is None
    y = np.asarray(labels).ravel().astype(bool if binary else np.int64)
    k = 1 if binary else int(num_classes)
    classes, counts = np.unique(y, return_counts=True)
    if classes.size < 2:
        raise ValueError(f"fit_linear_probe: the labels hold {classes.size} class(es); a probe needs two or more")
    if not binary and (classes.min() < 0 or classes.max() >= k):
        raise ValueError(f"fit_linear_probe: labels must lie in [0, {k})")
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    x = (x - mean) / scale
    n, f = x.shape
    if balanced:
        per_class = n / (classes.size * counts)
        weights = per_class[np.searchsorted(classes, y)]
    else:
        weights = np.ones(n)
    weights = weights / weights.sum()

    if binary:
        sign = np.where(y, 1.0, -1.0)

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            w, b = theta[:f], theta[f]
            margin = sign * (x @ w + b)
            loss = float(weights @ np.logaddexp(0.0, -margin)) + 0.5 * l2 * float(w @ w)
            # d/dlogit of log(1 + exp(-sign * logit)) = -sign * sigmoid(-margin)
            d_logit = weights * -sign * np.exp(-np.logaddexp(0.0, margin))
            return loss, np.r_[x.T @ d_logit + l2 * w, d_logit.sum()]

        theta = _lbfgs(objective, np.zeros(f + 1), max_iter, tol)
        return LinearProbe(mean, scale, theta[:f, None], theta[f:])

    present = np.zeros(k, dtype=bool)
    present[classes] = True
    kp = int(present.sum())
    # Only the classes seen in training get parameters; the others are never predicted.
    column = np.cumsum(present) - 1
    target = column[y]

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w = theta[: f * kp].reshape(f, kp)
        b = theta[f * kp :]
        logits = x @ w + b
        log_norm = _logsumexp(logits)
        loss = float(weights @ (log_norm - logits[np.arange(n), target])) + 0.5 * l2 * float((w * w).sum())
        d_logits = np.exp(logits - log_norm[:, None])
        d_logits[np.arange(n), target] -= 1.0
        d_logits *= weights[:, None]
        return loss, np.r_[(x.T @ d_logits + l2 * w).ravel(), d_logits.sum(axis=0)]

    theta = _lbfgs(objective, np.zeros(f * kp + kp), max_iter, tol)
    weight = np.zeros((f, k))
    bias = np.full(k, -np.inf)
    weight[:, present] = theta[: f * kp].reshape(f, kp)
    bias[present] = theta[f * kp :]
    return LinearProbe(mean, scale, weight, bias)


def fit_probe_or_none(
    features: np.ndarray, labels: np.ndarray, num_classes: int | None = None, **fit_kwargs: float
) -> LinearProbe | None:
    """:func:`fit_linear_probe`, or None when the labels hold fewer than two classes (a key never pressed in
    training): there is nothing to tell apart."""
    if np.unique(np.asarray(labels)).size < 2:
        return None
    return fit_linear_probe(features, labels, num_classes=num_classes, **fit_kwargs)


def probe_scores(
    probe: LinearProbe | None, features: np.ndarray, labels: np.ndarray, num_classes: int | None = None
) -> dict[str, float]:
    """A fitted probe's held-out scores: binary (``num_classes`` None): ``event_metrics`` of its logits (AUC,
    average precision); categorical: ``categorical_metrics`` of its argmax (top-1, majority rate, balanced
    accuracy). Without a probe every score is NaN (the counts are still reported)."""
    labels = np.asarray(labels).ravel()
    if num_classes is None:
        if probe is None:
            return {**event_metrics(np.zeros(labels.size), labels), "auc": float("nan"), "average_precision": float("nan")}
        return event_metrics(probe.logits(features), labels)
    if probe is None:
        result = categorical_metrics(np.zeros(labels.size, dtype=np.int64), labels)
        return {**result, "top1": float("nan"), "balanced_accuracy": float("nan")}
    return categorical_metrics(probe.predict(features), labels)


def linear_probe_baseline(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    eval_features: np.ndarray,
    eval_labels: np.ndarray,
    num_classes: int | None = None,
    **fit_kwargs: float,
) -> dict[str, float]:
    """Fit a probe on the training split and score the held-out one: the bar for a learned head.

    Binary labels (``num_classes`` None): ``event_metrics`` of the held-out logits (AUC, average precision).
    Categorical: ``categorical_metrics`` of the held-out argmax (top-1, majority rate, balanced accuracy).
    When the training labels hold fewer than two classes (a key never pressed in training) no probe can be
    fitted and every score is NaN (the counts are still reported).
    """
    probe = fit_probe_or_none(train_features, train_labels, num_classes=num_classes, **fit_kwargs)
    return probe_scores(probe, eval_features, eval_labels, num_classes)
