"""The agent stage's evaluation metrics (`training.stages.agent.agent_metrics`, `reward_event_probabilities`)
and the probe baseline (`training.probe_baseline`), against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from modeling_dreamer.distributions import twohot_bins
from training.probe_baseline import ProbeBaseline, probe_pool
from training.stages.agent import agent_metrics, reward_event_probabilities

SPACE = {"move": {"type": "categorical", "n": 3}, "jump": {"type": "binary"}, "never": {"type": "binary"}}


def test_event_probabilities_are_the_mass_off_the_zero_bins() -> None:
    bins = twohot_bins(5, -2.0, 2.0)  # centres -2, -1, 0, 1, 2: a reward of 0 is the middle bin
    probs = torch.tensor([0.1, 0.2, 0.4, 0.25, 0.05])
    out = reward_event_probabilities(probs.log(), bins)
    assert out["reward_event_prob"].item() == pytest.approx(0.6)
    assert out["reward_positive_prob"].item() == pytest.approx(0.3)
    assert out["reward_negative_prob"].item() == pytest.approx(0.3)
    # 0 between two bins (centres -1.5, -0.5, 0.5, 1.5): both neighbours encode it.
    bins = twohot_bins(4, -1.5, 1.5)
    out = reward_event_probabilities(torch.tensor([0.1, 0.3, 0.5, 0.1]).log(), bins)
    assert out["reward_event_prob"].item() == pytest.approx(0.2)
    assert out["reward_positive_prob"].item() == pytest.approx(0.1)
    assert out["reward_negative_prob"].item() == pytest.approx(0.1)


def arrays_for_metrics() -> dict[str, np.ndarray]:
    """One window of 4 frames, MTP offsets 0 and 1 (offset 1 of the last frame is past the window)."""
    mask = np.array([[[True, True], [True, True], [True, True], [True, False]]])
    reward_true = np.array([[[0.0, 1.0], [1.0, 0.0], [0.0, -2.0], [-2.0, 0.0]]])
    return {
        "reward_pred": np.array([[[0.1, 0.2], [0.5, 0.0], [0.0, -0.1], [-1.0, 0.0]]]),
        "reward_event_prob": np.array([[[0.2, 0.1], [0.9, 0.3], [0.1, 0.2], [0.6, 0.9]]]),
        "reward_positive_prob": np.array([[[0.1, 0.0], [0.8, 0.0], [0.0, 0.0], [0.3, 0.0]]]),
        "reward_negative_prob": np.array([[[0.1, 0.0], [0.1, 0.0], [0.1, 0.0], [0.3, 0.0]]]),
        "reward_true": reward_true,
        "reward_mask": mask,
        "reward_clamped": np.zeros_like(mask),
        "action_pred/move": np.array([[[0, 0], [1, 0], [0, 0], [0, 0]]]),
        "action_true/move": np.array([[[0, 1], [1, 2], [2, 0], [0, 0]]]),
        "action_mask/move": mask,
        "action_pred/jump": np.array([[[0, 0], [1, 0], [0, 0], [0, 0]]]),
        "action_prob/jump": np.array([[[0.1, 0.5], [0.7, 0.2], [0.4, 0.3], [0.3, 0.0]]]),
        "action_true/jump": np.array([[[0, 1], [1, 0], [0, 1], [1, 0]]]),
        "action_mask/jump": mask,
        "action_pred/never": np.zeros((1, 4, 2), dtype=np.int64),
        "action_prob/never": np.array([[[0.1, 0.2], [0.3, 0.4], [0.2, 0.1], [0.0, 0.0]]]),
        "action_true/never": np.zeros((1, 4, 2), dtype=np.int64),
        "action_mask/never": mask,
    }


def test_agent_metrics_hand_computed() -> None:
    m = agent_metrics(arrays_for_metrics(), SPACE)
    # Offset 0 events at frames 1 and 3 (scores 0.9, 0.6) against non-events 0.2, 0.1: every pair ordered.
    assert m["reward_auc"] == 1.0 and m["reward_ap"] == 1.0
    # Offset 1 (frames 0..2): events at frames 0 and 2 (0.1, 0.2), non-event at frame 1 (0.3): AUC 0; AP:
    # ranked 0.3 (no), 0.2 (yes: precision 1/2), 0.1 (yes: precision 2/3) -> (1/2 + 2/3) / 2.
    assert m["reward_auc/offset_1"] == 0.0
    assert m["reward_ap/offset_1"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    # |E[r]| at offset 0: events 0.5, 1.0 against 0.1, 0.0.
    assert m["reward_auc_decoded"] == 1.0
    assert m["reward_mae"] == pytest.approx((0.1 + 0.5 + 0.0 + 1.0) / 4)
    # Positive rewards at offset 0: frame 1 (0.8) against 0.1, 0.0, 0.3 -> 1; negative: frame 3 (0.3) against
    # 0.1, 0.1, 0.1 -> 1.
    assert m["reward_auc_positive"] == 1.0 and m["reward_auc_negative"] == 1.0
    assert m["reward_event_rate"] == 0.5
    # Categorical: offset 0 predictions 0, 1, 0, 0 against 0, 1, 2, 0: top-1 3/4, majority 2/4, recalls of
    # classes 0, 1, 2 = 1, 1, 0 -> balanced accuracy 2/3.
    assert m["bc_top1/move"] == 0.75 and m["bc_majority/move"] == 0.5
    assert m["bc_balanced_accuracy/move"] == pytest.approx(2 / 3)
    assert "bc_auc/move" not in m
    # Binary: presses at frames 1 and 3 (0.7, 0.3) against 0.1, 0.4: pairs (0.7 > 0.1, 0.7 > 0.4, 0.3 > 0.1,
    # 0.3 < 0.4) -> AUC 3/4; AP: ranked 0.7 (yes, 1/1), 0.4 (no), 0.3 (yes, 2/3), 0.1 -> (1 + 2/3) / 2.
    assert m["bc_auc/jump"] == 0.75
    assert m["bc_ap/jump"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["bc_press_rate/jump"] == 0.5 and m["bc_top1/jump"] == 0.75
    assert "bc_balanced_accuracy/jump" not in m
    # A key never pressed in the evaluation data: top-1 is the majority rate, AUC and AP are undefined.
    assert m["bc_top1/never"] == 1.0 and m["bc_press_rate/never"] == 0.0
    assert math.isnan(m["bc_auc/never"]) and math.isnan(m["bc_ap/never"])
    assert math.isnan(m["bc_auc/never/offset_1"])


def test_probe_pool_keeps_at_most_the_feature_budget() -> None:
    assert probe_pool(8, 4, 4) == 1  # 128 values
    assert probe_pool(32, 16, 16, max_features=512) == 4  # 32 x 4 x 4 = 512
    assert probe_pool(64, 6, 6, max_features=100) == 6  # nothing fits: the largest common divisor


class JumpWindows:
    """Windows whose reward is 1 exactly where channel 0 jumps by 2 since the previous frame."""

    def __init__(self, count: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.items = []
        for _ in range(count):
            level = np.cumsum(np.where(rng.random(8) < 0.2, 2.0, 0.0))
            latents = rng.normal(0.0, 1.0, (8, 2, 2, 2)).astype(np.float32) * 0.1 + 0.5
            latents[:, 0] += level[:, None, None] + rng.uniform(0.0, 10.0)  # a random start: only the change tells
            jump = np.r_[False, np.diff(level) > 0]
            self.items.append({"latents": latents, "reward": jump.astype(np.float32),
                               "has_action": np.ones(8, bool), "move": (jump * 2).astype(np.int64),
                               "jump": jump, "never": np.zeros(8, bool)})

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]


def test_probe_baseline_finds_frame_to_frame_jumps_and_reports_undefined_components() -> None:
    train, held_out = JumpWindows(200, seed=0), JumpWindows(60, seed=1)
    probes = ProbeBaseline.fit(train, SPACE, level=1.0, pool=1, max_windows=150, seed=0)
    assert probes.train_frames == 150 * 8 and probes.actions["never"] is None
    from training.metrics import frame_pair_features

    latents = np.stack([item["latents"] for item in held_out.items])
    features = frame_pair_features(latents).reshape(-1, 16)
    reward = np.concatenate([item["reward"] for item in held_out.items])
    everything = np.ones(reward.size, bool)
    actions = {name: (np.concatenate([item[name] for item in held_out.items]), everything) for name in SPACE}
    m = probes.metrics(features, reward, everything, actions, SPACE)
    assert m["probe/reward_auc"] > 0.99 and m["probe/bc_auc/jump"] > 0.99
    # Per kind: gains against frames without reward; these windows hold no penalty, so that AUC is undefined.
    assert m["probe/reward_auc_positive"] == pytest.approx(m["probe/reward_auc"])
    assert math.isnan(m["probe/reward_auc_negative"])
    # A penalty where the first gain was, ranked by the same score against the frames without reward only.
    signed = reward.copy()
    signed[np.flatnonzero(reward)[0]] = -1.0
    s = probes.metrics(features, signed, everything, actions, SPACE)
    logits = probes.reward.logits(features)
    without = reward == 0
    expected = float((logits[np.flatnonzero(reward)[0]] > logits[without]).mean())  # one penalty: its rank share
    assert s["probe/reward_auc_negative"] == pytest.approx(expected)
    assert m["probe/bc_top1/move"] > 0.95
    assert math.isnan(m["probe/bc_auc/never"]) and math.isnan(m["probe/bc_ap/never"])


def test_probe_reward_auc_over_noise_draws() -> None:
    """The probe's AUC on fresh observations of the same frames: at signal level 1 every draw is the clean AUC
    (hand-computed); with noise the draws differ and stay in [0, 1]; no probe gives NaN."""
    from training.metrics import LinearProbe, frame_pair_features
    from training.probe_baseline import reward_auc_over_draws

    # 1 window of 4 frames, 1 channel, 1 x 1: the probe's score is the current value (weight on z_t only).
    clean = np.array([0.0, 3.0, 1.0, 2.0], dtype=np.float32).reshape(1, 4, 1, 1, 1)
    reward = np.array([[0.0, 1.0, 0.0, 0.5]])  # events at frames 1 (score 3) and 3 (score 2)
    mask = np.array([[True, True, True, True]])
    probe = LinearProbe(mean=np.zeros(2), scale=np.ones(2), weight=np.array([[1.0], [0.0]]), bias=np.zeros(1))
    assert frame_pair_features(clean).shape == (1, 4, 2)
    exact = reward_auc_over_draws(probe, clean, reward, mask, level=1.0, pool=1, draws=3, seed=0)
    assert np.all(exact == 1.0)  # both events above both other frames
    reward_swapped = np.array([[1.0, 0.0, 0.5, 0.0]])  # events at scores 0 and 1, others 3 and 2: AUC 0
    assert np.all(reward_auc_over_draws(probe, clean, reward_swapped, mask, 1.0, 1, 2, 0) == 0.0)
    assert np.isnan(reward_auc_over_draws(None, clean, reward, mask, 0.5, 1, 2, 0)).all()

    rng = np.random.default_rng(0)
    many = rng.normal(size=(1, 400, 1, 1, 1)).astype(np.float32)
    events = (np.arange(400) % 7 == 0)[None].astype(np.float64)
    noisy = reward_auc_over_draws(probe, many, events, np.ones((1, 400), bool), 0.5, 1, 4, 0)
    assert len(set(noisy.round(6))) > 1 and np.all((noisy >= 0) & (noisy <= 1))
