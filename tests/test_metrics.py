"""Evaluation metrics (training/metrics.py) against hand-computed values and, where installed, scikit-learn."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.metrics import (
    average_precision,
    balanced_accuracy,
    categorical_metrics,
    event_metrics,
    fit_linear_probe,
    frame_pair_features,
    linear_probe_baseline,
    majority_rate,
    per_offset,
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


def test_average_precision_matches_scikit_learn_with_ties() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(3)
    scores = np.round(rng.normal(size=400), 1)  # many ties
    labels = rng.random(400) < 0.05
    assert average_precision(scores, labels) == pytest.approx(sklearn_metrics.average_precision_score(labels, scores))


# ---- ROC AUC with a mask, event metrics ----


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
    # A predicted class that never occurs as a target adds no term: recalls 1/2 (class 0) and 1 (class 2).
    assert balanced_accuracy(np.array([1, 0, 2, 2]), np.array([0, 0, 2, 2])) == pytest.approx(0.75)
    # Mask: only the first and last two entries count -> recalls 1 (class 0) and 1/2 (class 1).
    mask = np.array([True, False, False, False, True, True])
    assert balanced_accuracy(predictions, targets, mask) == pytest.approx(0.75)


def test_balanced_accuracy_is_nan_with_one_class() -> None:
    never_pressed = np.zeros(5, dtype=bool)
    assert math.isnan(balanced_accuracy(never_pressed, never_pressed))
    assert math.isnan(balanced_accuracy(np.array([1, 2]), np.array([3, 3])))
    assert math.isnan(balanced_accuracy(np.array([1]), np.array([1]), mask=np.array([False])))


def test_balanced_accuracy_matches_scikit_learn() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(4)
    targets = rng.choice(18, size=500, p=np.r_[0.5, np.full(17, 0.5 / 17)])
    predictions = np.where(rng.random(500) < 0.6, targets, rng.integers(0, 18, 500))
    expected = sklearn_metrics.balanced_accuracy_score(targets, predictions)
    assert balanced_accuracy(predictions, targets) == pytest.approx(expected)


def test_categorical_metrics_hand_computed() -> None:
    result = categorical_metrics(np.array([0, 0, 0, 1, 1, 0]), np.array([0, 0, 0, 0, 1, 1]))
    assert result["top1"] == pytest.approx(4 / 6)
    assert result["majority"] == pytest.approx(4 / 6)
    assert result["balanced_accuracy"] == pytest.approx(0.625)
    assert (result["classes_present"], result["count"]) == (2.0, 6.0)
    assert majority_rate(np.array([1, 1, 0]), np.ones(3, dtype=bool)) == pytest.approx(2 / 3)


def test_per_offset_applies_the_metric_to_each_offset() -> None:
    # (N = 4, L + 1 = 3): offset 0 ranks perfectly, offset 1 backwards, offset 2 has no positive.
    scores = np.array([[0.9, 0.1, 0.5], [0.8, 0.2, 0.5], [0.1, 0.9, 0.5], [0.2, 0.8, 0.5]])
    labels = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0], [0, 0, 0]], dtype=bool)
    aucs = per_offset(roc_auc, scores, labels)
    assert aucs[:2] == [1.0, 0.0] and math.isnan(aucs[2])
    # The mask of an offset is its own slice: dropping the second row of offset 0 only.
    mask = np.ones((4, 3), dtype=bool)
    mask[1, 0] = False
    aps = per_offset(average_precision, scores, labels, mask=mask)
    assert aps[0] == 1.0 and aps[1] == pytest.approx((1 / 3 + 2 / 4) / 2) and math.isnan(aps[2])


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


def test_binary_probe_solves_the_hand_derived_optimum() -> None:
    # Two points x = -1 (no event) and x = +1 (event), already standardised, equal class weights: by symmetry
    # the bias is 0 and the weight solves d/dw [log(1 + exp(-w)) + l2/2 w^2] = 0, i.e. sigmoid(-w) = l2 * w.
    l2 = 0.1
    lo, hi = 0.0, 20.0
    for _ in range(200):  # bisection, independent of the probe's optimiser
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if 1.0 / (1.0 + math.exp(mid)) > l2 * mid else (lo, mid)
    probe = fit_linear_probe(np.array([[-1.0], [1.0]]), np.array([False, True]), l2=l2, tol=1e-10)
    assert probe.weight[0, 0] == pytest.approx(lo, abs=1e-6)
    assert probe.bias[0] == pytest.approx(0.0, abs=1e-6)
    np.testing.assert_array_equal(probe.predict(np.array([[-3.0], [0.5]])), [0, 1])


def test_probes_match_scikit_learn_logistic_regression() -> None:
    linear_model = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(5)
    x = rng.normal(size=(1500, 12)) * rng.uniform(0.5, 3.0, size=12) + 2.0
    standardised = (x - x.mean(0)) / x.std(0)
    l2 = 1e-2
    rare = (x[:, 0] - x[:, 3] + rng.normal(size=1500)) > 3.5  # about 4% positives
    probe = fit_linear_probe(x, rare, l2=l2, tol=1e-9)
    reference = linear_model.LogisticRegression(C=1 / (l2 * 1500), class_weight="balanced", tol=1e-12,
                                                max_iter=10_000).fit(standardised, rare)
    np.testing.assert_allclose(probe.weight[:, 0], reference.coef_[0], atol=1e-5)
    np.testing.assert_allclose(probe.bias, reference.intercept_, atol=1e-5)
    # Softmax over 5 classes, class 3 never in the training labels: it gets no parameters and a -inf bias.
    classes = np.argmax(standardised[:, :5] + rng.normal(size=(1500, 5)), axis=1)
    classes[classes == 3] = 4
    probe = fit_linear_probe(x, classes, num_classes=5, l2=l2, tol=1e-9)
    reference = linear_model.LogisticRegression(C=1 / (l2 * 1500), class_weight="balanced", tol=1e-12,
                                                max_iter=10_000).fit(standardised, classes)
    np.testing.assert_allclose(probe.weight[:, [0, 1, 2, 4]], reference.coef_.T, atol=1e-5)
    assert probe.bias[3] == -np.inf and not (probe.predict(x) == 3).any()
    np.testing.assert_array_equal(probe.predict(x), reference.predict(standardised))


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
    pair = linear_probe_baseline(train_features, train_events.ravel(), eval_features, eval_events.ravel())
    single = linear_probe_baseline(train_features[:, :8], train_events.ravel(), eval_features[:, :8], eval_events.ravel())
    assert pair["auc"] > 0.97 and pair["average_precision"] > 0.8
    assert single["auc"] < 0.75
    assert pair["positives"] == eval_events.sum()


def test_probe_baseline_is_nan_for_a_key_never_pressed() -> None:
    features = np.random.default_rng(7).normal(size=(50, 3))
    never = np.zeros(50, dtype=bool)
    with pytest.raises(ValueError, match="class"):
        fit_linear_probe(features, never)
    pressed_in_eval = np.arange(50) % 10 == 0
    result = linear_probe_baseline(features, never, features, pressed_in_eval)
    assert math.isnan(result["auc"]) and math.isnan(result["average_precision"]) and result["positives"] == 5.0
    # Trained on presses, evaluated where the key is never pressed: the probe exists, its scores are undefined.
    result = linear_probe_baseline(features, pressed_in_eval, features, never)
    assert math.isnan(result["auc"]) and math.isnan(result["average_precision"]) and result["positives"] == 0.0
    result = linear_probe_baseline(features, np.zeros(50, dtype=int), features, np.arange(50) % 3, num_classes=3)
    assert math.isnan(result["top1"]) and math.isnan(result["balanced_accuracy"]) and result["classes_present"] == 3.0
