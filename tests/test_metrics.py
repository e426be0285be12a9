"""Evaluation metrics (training/metrics.py) against hand-computed values, and the NaN rules of undefined cases.

scikit-learn computes these metrics; the expected values here are worked out by hand, never by scikit-learn."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from training.metrics import (
    average_precision,
    balanced_accuracy,
    categorical_metrics,
    event_metrics,
    fit_linear_probe,
    frame_pair_features,
    majority_rate,
    probe_scores,
    roc_auc,
)


# ---- average precision ----


def test_average_precision_hand_computed() -> None:
    # Hits at ranks 1 and 3: precision 1/1 and 2/3, each adds half the recall.
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    labels = np.array([True, False, True, False])
    assert average_precision(scores, labels) == pytest.approx((1.0 + 2.0 / 3.0) / 2.0)
    # A perfect ranking scores 1 whatever the positive rate.
    assert average_precision(np.array([3.0, 2.0, 1.0, 0.0]), np.array([1, 1, 0, 0])) == pytest.approx(1.0)


def test_average_precision_counts_tied_scores_together() -> None:
    # Threshold 0.5 calls two entries (one hit): P = 1/2, R = 1/2; threshold 0.2: P = 2/3, R = 1.
    scores = np.array([0.5, 0.5, 0.2])
    labels = np.array([True, False, True])
    assert average_precision(scores, labels) == pytest.approx(0.5 * 0.5 + 0.5 * 2.0 / 3.0)
    # One constant score is one threshold: AP is the positive rate (what a random score gets on average).
    labels = np.array([1, 0, 0, 0, 0, 1, 0, 0, 0, 0], dtype=bool)
    assert average_precision(np.zeros(10), labels) == pytest.approx(0.2)
    # Reversing the order of tied entries changes nothing.
    assert average_precision(scores[::-1], np.array([True, False, True])[::-1]) == pytest.approx(7.0 / 12.0)


def test_average_precision_undefined_without_positives_and_one_without_negatives() -> None:
    assert math.isnan(average_precision(np.array([0.3, 0.1]), np.array([False, False])))
    assert average_precision(np.array([0.3, 0.1]), np.array([True, True])) == 1.0
    # Nothing left after the mask, or a non-finite score (a diverged model): undefined, not an error.
    assert math.isnan(average_precision(np.array([0.3, 0.1]), np.array([True, False]), mask=np.array([False, False])))
    assert math.isnan(average_precision(np.array([0.3, np.nan]), np.array([True, False])))


# ---- ROC AUC with a mask, event metrics ----


def test_roc_auc_is_the_share_of_correctly_ordered_pairs_with_ties_counting_half() -> None:
    # Positives score 0.5 and 0.8, negatives 0.5 and 0.2. Pairs (positive, negative): (0.5, 0.5) tied -> 1/2,
    # (0.5, 0.2), (0.8, 0.5), (0.8, 0.2) ordered -> 1 each: 3.5 of 4.
    scores = np.array([0.5, 0.5, 0.2, 0.8])
    labels = np.array([True, False, False, True])
    assert roc_auc(scores, labels) == pytest.approx(3.5 / 4)
    # Reversed order: no pair ordered; one constant score: every pair tied.
    assert roc_auc(-np.array([3.0, 2.0, 1.0, 0.0]), np.array([1, 1, 0, 0])) == 0.0
    assert roc_auc(np.zeros(4), labels) == pytest.approx(0.5)
    # Only the order matters, not the scale.
    assert roc_auc(np.exp(10 * scores), labels) == pytest.approx(3.5 / 4)


def test_roc_auc_is_nan_without_both_classes_or_with_a_non_finite_score() -> None:
    scores = np.array([0.3, 0.1, 0.7])
    assert math.isnan(roc_auc(scores, np.zeros(3, dtype=bool)))  # a key never pressed
    assert math.isnan(roc_auc(scores, np.ones(3, dtype=bool)))  # every frame an event
    assert math.isnan(roc_auc(scores, np.array([True, False, False]), mask=np.array([False, True, True])))
    assert math.isnan(roc_auc(np.zeros(0), np.zeros(0, dtype=bool)))
    assert math.isnan(roc_auc(np.array([0.3, np.inf, 0.1]), np.array([True, False, False])))


def test_roc_auc_mask_drops_entries() -> None:
    scores = np.array([0.9, 0.1, 0.8, 0.7])
    labels = np.array([True, False, False, True])
    # All four: positives 0.9 and 0.7, negatives 0.1 and 0.8 -> pairs won 1 + 1 + 1 + 0 = 3 of 4.
    assert roc_auc(scores, labels) == pytest.approx(0.75)
    # Without the negative scoring 0.8 every positive beats every negative.
    assert roc_auc(scores, labels, mask=np.array([True, True, False, True])) == 1.0
    with pytest.raises(ValueError, match="mask"):
        roc_auc(scores, labels, mask=np.array([True, False]))


def test_event_metrics_of_a_key_never_pressed_are_nan_with_counts() -> None:
    result = event_metrics(np.array([0.2, -1.0, 0.5]), np.zeros(3, dtype=bool))
    assert math.isnan(result["auc"]) and math.isnan(result["average_precision"])
    assert (result["positives"], result["negatives"], result["positive_rate"]) == (0.0, 3.0, 0.0)


def test_event_metrics_hand_computed() -> None:
    scores = np.array([0.9, 0.1, 0.8, 0.7, 0.0])
    labels = np.array([True, False, False, True, False])
    mask = np.array([True, True, True, True, False])
    result = event_metrics(scores, labels, mask)
    assert result["auc"] == pytest.approx(0.75)
    assert result["average_precision"] == pytest.approx((1.0 + 2.0 / 3.0) / 2.0)
    assert (result["positives"], result["negatives"], result["positive_rate"]) == (2.0, 2.0, 0.5)


# ---- categorical ----


def test_balanced_accuracy_hand_computed() -> None:
    targets = np.array([0, 0, 0, 0, 1, 1])
    predictions = np.array([0, 0, 0, 1, 1, 0])
    # recall of class 0 = 3/4, of class 1 = 1/2
    assert balanced_accuracy(predictions, targets) == pytest.approx(0.625)
    # Always predicting the majority class: 1 / (classes present), although its top-1 is 4/6.
    assert balanced_accuracy(np.zeros(6, dtype=int), targets) == pytest.approx(0.5)
    # A predicted class that never occurs as a target adds no term: recalls 1/2 (class 0) and 1 (class 2). It is
    # common in an evaluation, so it does not warn either.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert balanced_accuracy(np.array([1, 0, 2, 2]), np.array([0, 0, 2, 2])) == pytest.approx(0.75)
    # Mask: only the first and last two entries count -> recalls 1 (class 0) and 1/2 (class 1).
    mask = np.array([True, False, False, False, True, True])
    assert balanced_accuracy(predictions, targets, mask) == pytest.approx(0.75)


def test_balanced_accuracy_is_nan_with_one_class() -> None:
    never_pressed = np.zeros(5, dtype=bool)
    assert math.isnan(balanced_accuracy(never_pressed, never_pressed))
    assert math.isnan(balanced_accuracy(np.array([1, 2]), np.array([3, 3])))
    assert math.isnan(balanced_accuracy(np.array([1]), np.array([1]), mask=np.array([False])))


def test_categorical_metrics_hand_computed() -> None:
    result = categorical_metrics(np.array([0, 0, 0, 1, 1, 0]), np.array([0, 0, 0, 0, 1, 1]))
    assert result["top1"] == pytest.approx(4 / 6)
    assert result["majority"] == pytest.approx(4 / 6)
    assert result["balanced_accuracy"] == pytest.approx(0.625)
    assert (result["classes_present"], result["count"]) == (2.0, 6.0)
    assert majority_rate(np.array([1, 1, 0]), np.ones(3, dtype=bool)) == pytest.approx(2 / 3)


# ---- linear probe ----


def test_frame_pair_features_hand_computed() -> None:
    # One window of 3 frames, one channel, 2x2 latents whose values are the frame number + position / 10.
    base = np.array([[0.0, 0.1], [0.2, 0.3]])
    latents = np.stack([base + t for t in range(3)])[None, :, None]  # (1, 3, 1, 2, 2)
    features = frame_pair_features(latents)
    assert features.shape == (1, 3, 8)
    np.testing.assert_allclose(features[0, 1], [1.0, 1.1, 1.2, 1.3, 1, 1, 1, 1], atol=1e-6)
    np.testing.assert_allclose(features[0, 0, 4:], 0.0)  # the window's first frame has no previous frame
    pooled = frame_pair_features(latents, pool=2)
    assert pooled.shape == (1, 3, 2)
    np.testing.assert_allclose(pooled[0, :, 0], [0.15, 1.15, 2.15], atol=1e-6)
    np.testing.assert_allclose(pooled[0, :, 1], [0.0, 1.0, 1.0], atol=1e-6)
    with pytest.raises(ValueError, match="pool"):
        frame_pair_features(latents, pool=3)


def _hand_optimum(l2: float) -> float:
    """The weight w > 0 that solves sigmoid(-w) = l2 * w, found by bisection (independent of any optimiser)."""
    lo, hi = 0.0, 20.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if 1.0 / (1.0 + math.exp(mid)) > l2 * mid else (lo, mid)
    return lo


def test_binary_probe_solves_the_hand_derived_optimum() -> None:
    # Two points x = -1 (no event) and x = +1 (event), already standardised, equal class weights: by symmetry
    # the bias is 0 and the weight solves d/dw [log(1 + exp(-w)) + l2/2 w^2] = 0, i.e. sigmoid(-w) = l2 * w.
    l2 = 0.1
    probe = fit_linear_probe(np.array([[-1.0], [1.0]]), np.array([False, True]), l2=l2, tol=1e-10)
    assert probe is not None and probe.binary
    assert probe.weight[0, 0] == pytest.approx(_hand_optimum(l2), abs=1e-6)
    assert probe.bias[0] == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_array_equal(probe.predict(np.array([[-3.0], [0.5]])), [0, 1])
    # The features are standardised first: the same points scaled by 10 and shifted by 4 give the same probe on
    # the standardised scale (mean 4, scale 10).
    scaled = fit_linear_probe(np.array([[-6.0], [14.0]]), np.array([False, True]), l2=l2, tol=1e-10)
    assert (scaled.mean[0], scaled.scale[0]) == pytest.approx((4.0, 10.0))
    assert scaled.weight[0, 0] == pytest.approx(probe.weight[0, 0], abs=1e-6)


def test_balanced_probe_weighs_each_class_alike() -> None:
    # One event at x = +1, three non-events at x = -1. Standardised (mean -1/2, standard deviation sqrt(3)/2)
    # they sit at a = sqrt(3) and c = -1/sqrt(3). Balanced, each class carries half the weight, so the bias's
    # stationarity sigmoid(-z_event) = sigmoid(z_other) gives z_other = -z_event; with it, the weight's reads
    # sigmoid(-u) (a - c) / 2 = l2 w for u = z_event = w (a - c) / 2, i.e. sigmoid(-u) = l2 * 3/4 * u.
    l2 = 0.1
    x, y = np.array([[1.0], [-1.0], [-1.0], [-1.0]]), np.array([True, False, False, False])
    logits = fit_linear_probe(x, y, l2=l2, tol=1e-10).logits(x)
    assert logits[0] == pytest.approx(_hand_optimum(0.75 * l2), abs=1e-5)
    np.testing.assert_allclose(logits[1:], -logits[0], atol=1e-5)
    # Unweighted, the three non-events outweigh the event: its logit is lower.
    assert fit_linear_probe(x, y, l2=l2, balanced=False, tol=1e-10).logits(x)[0] < logits[0] - 0.5


def test_two_class_categorical_probe_is_the_binary_one_on_the_classes_seen() -> None:
    # Classes 1 and 3 of 5 occur (x = -1 -> 1, x = +1 -> 3): the logit of class 3 against class 1 is the binary
    # probe's, the classes never seen get a -inf bias and are never predicted.
    l2 = 0.1
    probe = fit_linear_probe(np.array([[-1.0], [1.0]]), np.array([1, 3]), num_classes=5, l2=l2, tol=1e-10)
    assert probe is not None and not probe.binary and probe.weight.shape == (1, 5)
    assert probe.weight[0, 3] - probe.weight[0, 1] == pytest.approx(_hand_optimum(l2), abs=1e-6)
    assert probe.bias[3] - probe.bias[1] == pytest.approx(0.0, abs=1e-6)
    assert np.isneginf(probe.bias[[0, 2, 4]]).all()
    np.testing.assert_array_equal(probe.predict(np.array([[-2.0], [-0.1], [0.1], [5.0]])), [1, 1, 3, 3])


def test_softmax_probe_separates_classes_and_never_predicts_an_unseen_one() -> None:
    # Three well-separated clusters labelled 0, 2 and 4 of 6 classes.
    rng = np.random.default_rng(5)
    centres = {0: (-4.0, 0.0), 2: (4.0, 0.0), 4: (0.0, 4.0)}
    labels = np.repeat([0, 2, 4], 50)
    features = np.array([centres[c] for c in labels]) + rng.normal(0, 0.5, (150, 2))
    probe = fit_linear_probe(features, labels, num_classes=6, l2=1e-3)
    assert np.isneginf(probe.bias[[1, 3, 5]]).all() and np.isfinite(probe.bias[[0, 2, 4]]).all()
    np.testing.assert_array_equal(probe.predict(features), labels)
    np.testing.assert_array_equal(probe.predict(np.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 4.0]])), [0, 2, 4])
    with pytest.raises(ValueError, match=r"\[0, 6\)"):
        fit_linear_probe(features, np.where(labels == 4, 6, labels), num_classes=6)


def test_probe_fit_is_deterministic() -> None:
    rng = np.random.default_rng(8)
    features = rng.normal(size=(400, 6))
    events = features[:, 0] + rng.normal(size=400) > 2.0
    first, second = fit_linear_probe(features, events), fit_linear_probe(features, events)
    for name in ("mean", "scale", "weight", "bias"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))


def _probe_baseline(train_features: np.ndarray, train_labels: np.ndarray, eval_features: np.ndarray,
                    eval_labels: np.ndarray, num_classes: int | None = None) -> dict[str, float]:
    """Fit on the training split, score the held-out one (what `training.probe_baseline` does per target)."""
    probe = fit_linear_probe(train_features, train_labels, num_classes=num_classes)
    return probe_scores(probe, eval_features, eval_labels, num_classes)


def test_probe_on_frame_pairs_finds_jump_events_a_single_frame_cannot() -> None:
    # Events are jumps of channel 1 between consecutive frames; the level itself wanders, so the current frame
    # alone carries little information while (current, previous) carries all of it.
    rng = np.random.default_rng(6)

    def windows(count: int) -> tuple[np.ndarray, np.ndarray]:
        events = rng.random((count, 16)) < 0.05
        events[:, 0] = False  # a window's first frame has no previous frame to compare with
        level = np.cumsum(events * rng.uniform(0.5, 1.0, events.shape), axis=1) + rng.normal(0, 3, (count, 1))
        latents = rng.normal(0, 0.1, (count, 16, 2, 2, 2))
        latents[:, :, 1] += level[:, :, None, None]
        return latents, events

    train_latents, train_events = windows(300)
    eval_latents, eval_events = windows(200)
    train_features = frame_pair_features(train_latents).reshape(-1, 16)
    eval_features = frame_pair_features(eval_latents).reshape(-1, 16)
    pair = _probe_baseline(train_features, train_events.ravel(), eval_features, eval_events.ravel())
    single = _probe_baseline(train_features[:, :8], train_events.ravel(), eval_features[:, :8], eval_events.ravel())
    assert pair["auc"] > 0.97 and pair["average_precision"] > 0.8
    assert single["auc"] < 0.75
    assert pair["positives"] == eval_events.sum()


def test_probe_baseline_is_nan_for_a_key_never_pressed() -> None:
    features = np.random.default_rng(7).normal(size=(50, 3))
    never = np.zeros(50, dtype=bool)
    assert fit_linear_probe(features, never) is None  # one class: nothing to tell apart
    assert fit_linear_probe(features, np.full(50, 2), num_classes=3) is None
    pressed_in_eval = np.arange(50) % 10 == 0
    result = _probe_baseline(features, never, features, pressed_in_eval)
    assert math.isnan(result["auc"]) and math.isnan(result["average_precision"]) and result["positives"] == 5.0
    # Trained on presses, evaluated where the key is never pressed: the probe exists, its scores are undefined.
    result = _probe_baseline(features, pressed_in_eval, features, never)
    assert math.isnan(result["auc"]) and math.isnan(result["average_precision"]) and result["positives"] == 0.0
    result = _probe_baseline(features, np.zeros(50, dtype=int), features, np.arange(50) % 3, num_classes=3)
    assert math.isnan(result["top1"]) and math.isnan(result["balanced_accuracy"]) and result["classes_present"] == 3.0
    assert result["majority"] == pytest.approx(17 / 50)  # the counts and the majority rate are still reported
