"""Evaluation metrics computed from gathered numpy arrays, with scikit-learn doing the arithmetic.

Rare events dominate this project's evaluation: a reward falls on well under 1% of frames and most
binary keys are pressed on 0-2% of frames, so accuracy says nothing (always predicting "no event" is
99% accurate). The metrics here are threshold-free (ROC AUC, average precision) or class-balanced
(balanced accuracy), and a linear probe gives the bar a learned head should clear.

scikit-learn computes the scores (`roc_auc_score`, `average_precision_score`, `balanced_accuracy_score`) and
fits the probe (`LogisticRegression`); this module decides what is undefined. Undefined metrics are NaN,
never a guess (scikit-learn would return a number with a warning for some of these cases):
- :func:`roc_auc` needs both classes; :func:`average_precision` needs at least one positive (1.0 when
  every entry is positive). A key that is never pressed in the evaluation data therefore has NaN AUC and NaN
  average precision.
- Both are NaN when a score is not finite (a diverged model), rather than an error in the evaluation.
- :func:`balanced_accuracy` needs at least two classes among the valid targets (one class alone says
  nothing about telling classes apart); :func:`majority_rate` and :func:`masked_mean` need one valid entry.
- :func:`fit_linear_probe` returns None when the training labels hold a single class (a key never pressed
  in training), and :func:`probe_scores` of None is NaN.

Every metric takes an optional boolean ``mask`` of the same shape as its inputs (True = counted).

scikit-learn is imported inside the functions that use it: importing it takes about 1.5 s, and most
importers of this module (the stages, for :func:`masked_mean`) never compute these scores.
"""

from __future__ import annotations

import warnings
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
    """Area under the ROC curve: the share of (event, non-event) pairs the scores order correctly, a tie
    counting half. NaN without both classes or with a non-finite score.

    scores, labels, mask: same shape; a higher score means "more likely an event". 0.5 is chance.
    """
    from sklearn.metrics import roc_auc_score

    scores, labels = _select(mask, scores, labels)
    labels = labels.astype(bool)
    positives = int(labels.sum())
    if positives == 0 or positives == labels.size or not np.isfinite(scores).all():
        return float("nan")
    return float(roc_auc_score(labels, scores.astype(np.float64)))


def average_precision(scores: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Average precision: ``sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds, highest first.

    ``P_k`` and ``R_k`` are precision and recall when everything scoring ``>=`` the k-th highest distinct
    score is called an event, so tied scores enter together (the step-wise area under the precision-recall
    curve, without interpolation: scikit-learn's ``average_precision_score``). Unlike ROC AUC it depends on
    how rare the events are: a random score gets the positive rate, a perfect one 1. NaN without a positive
    or with a non-finite score; 1.0 when every entry is positive.
    """
    from sklearn.metrics import average_precision_score

    scores, labels = _select(mask, scores, labels)
    labels = labels.astype(bool)
    if not labels.any() or not np.isfinite(scores).all():
        return float("nan")
    return float(average_precision_score(labels, scores.astype(np.float64)))


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
    from sklearn.metrics import balanced_accuracy_score

    predictions, targets = _select(mask, predictions, targets)
    predictions = predictions.astype(np.int64)
    targets = targets.astype(np.int64)
    if np.unique(targets).size < 2:
        return float("nan")
    with warnings.catch_warnings():
        # A predicted class absent from the targets is expected (a rare class predicted where it does not
        # occur); scikit-learn leaves it out of the mean, as documented above, and warns about it.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        return float(balanced_accuracy_score(targets, predictions))


def calibration_error(probabilities: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None,
                      bins: int = 10) -> float:
    """Expected calibration error of predicted probabilities for a binary label: with the probabilities split into
    ``bins`` equal-width bins over [0, 1], ``sum_b (n_b / N) |mean label in b - mean probability in b|``. 0 for a
    calibrated predictor; NaN without any (masked-in) example. Written here: scikit-learn has the reliability
    curve (`calibration_curve`) but not this weighted summary of it."""
    probabilities, labels = _select(mask, np.asarray(probabilities, np.float64), np.asarray(labels, bool))
    if len(probabilities) == 0:
        return float("nan")
    which = np.minimum((probabilities * bins).astype(int), bins - 1)
    error = 0.0
    for b in np.unique(which):
        inside = which == b
        error += inside.mean() * abs(labels[inside].mean() - probabilities[inside].mean())
    return float(error)


def r_squared(predictions: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Coefficient of determination ``1 - SS_res / SS_tot`` of predictions of a real-valued target (NaN without
    two distinct masked-in targets)."""
    predictions, targets = _select(mask, np.asarray(predictions, np.float64), np.asarray(targets, np.float64))
    total = ((targets - targets.mean()) ** 2).sum() if len(targets) else 0.0
    if len(targets) < 2 or total == 0:
        return float("nan")
    return float(1.0 - ((targets - predictions) ** 2).sum() / total)


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
    """A fitted linear classifier on standardised features, as plain arrays (cheap to apply, no scikit-learn
    object kept).

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


def fit_linear_probe(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int | None = None,
    l2: float = 1e-3,
    balanced: bool = True,
    max_iter: int = 300,
    tol: float = 1e-6,
) -> LinearProbe | None:
    """Fit an L2-regularised logistic (binary) or softmax (categorical) regression; None when the labels hold
    fewer than two classes (a key never pressed in training: there is nothing to tell apart).

    features: ``(N, F)``; labels: ``(N,)`` bool (binary probe) or int classes in ``[0, num_classes)`` with
    ``num_classes`` given (softmax probe). Features are standardised with the training mean and standard
    deviation (``StandardScaler``: constant features keep scale 1). The objective is
    ``sum_i w_i CE_i / sum_i w_i + l2 / 2 * |W|^2`` (the bias is not penalised), with ``w_i = 1`` or, when
    ``balanced``, ``w_i`` inversely proportional to the frequency of example i's class so that every class
    present carries the same total weight (a rare event would otherwise be fitted as "never"). Both weightings
    sum to N, so this is ``LogisticRegression(C=1 / (l2 * N))`` with L-BFGS, stopped when the largest gradient
    entry is below ``tol``, when the objective stops decreasing, or after ``max_iter`` iterations. L-BFGS draws nothing at random: the same data
    give the same probe.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != np.asarray(labels).size:
        raise ValueError(f"fit_linear_probe: features must be (N, F) with N = len(labels), got {x.shape}")
    binary = num_classes is None
    y = np.asarray(labels).ravel().astype(bool if binary else np.int64)
    classes = np.unique(y)
    if classes.size < 2:
        return None
    k = 1 if binary else int(num_classes)
    if not binary and (classes.min() < 0 or classes.max() >= k):
        raise ValueError(f"fit_linear_probe: labels must lie in [0, {k})")
    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=1.0 / (l2 * x.shape[0]), class_weight="balanced" if balanced else None,
                               solver="lbfgs", tol=tol, max_iter=max_iter)
    # One thread: the problem is small (tens of thousands of frames, hundreds of features), and on a busy
    # 2-core machine scikit-learn's OpenMP threads made a softmax probe of 32,768 frames take 13.5 s instead
    # of 0.5 s.
    with threadpool_limits(limits=1):
        model.fit(scaler.transform(x), y)
    mean, scale = scaler.mean_, scaler.scale_
    if binary:
        return LinearProbe(mean, scale, model.coef_.T.copy(), model.intercept_.copy())
    # Only the classes seen in training have parameters; the others get a -inf bias and are never predicted.
    weight = np.zeros((x.shape[1], k))
    bias = np.full(k, -np.inf)
    if classes.size == 2:
        # Two classes: scikit-learn fits one logistic logit for the second; the first keeps logit 0 (the same
        # argmax, and the same probabilities under a softmax).
        bias[classes[0]] = 0.0
        weight[:, classes[1]], bias[classes[1]] = model.coef_[0], model.intercept_[0]
    else:
        weight[:, classes], bias[classes] = model.coef_.T, model.intercept_
    return LinearProbe(mean, scale, weight, bias)


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
