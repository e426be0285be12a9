"""Multi-token prediction targets and losses (offsets 0..L, masked past the window, each
offset a mean over its valid targets: docs/objectives.md)."""

import math

import pytest
import torch
import torch.nn.functional as F

from modeling_dreamer.objectives import twohot_bins, twohot_encode
from training.objectives import mtp_policy_loss, mtp_reward_loss, mtp_targets

SPACE = {"move": {"type": "categorical", "n": 3}, "jump": {"type": "binary"}}


def random_batch(batch: int, frames: int, horizon: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = {
        "move": torch.randn(batch, frames, horizon + 1, 3, generator=g, requires_grad=True),
        "jump": torch.randn(batch, frames, horizon + 1, 1, generator=g, requires_grad=True),
    }
    actions = {
        "move": torch.randint(0, 3, (batch, frames), generator=g),
        "jump": torch.rand(batch, frames, generator=g) > 0.5,
    }
    return logits, actions


def reference_policy_loss(logits, actions, valid) -> tuple[float, list[int]]:
    """Loops over (b, t, n): the mean over offsets with targets of each offset's mean joint NLL."""
    logits = {name: value.detach() for name, value in logits.items()}
    batch, frames, offsets, _ = logits["move"].shape
    per_offset, counts = [], []
    for n in range(offsets):
        total, count = 0.0, 0
        for b in range(batch):
            for t in range(frames):
                if t + n < frames and valid[b, t + n]:
                    move = -F.log_softmax(logits["move"][b, t, n].double(), -1)[actions["move"][b, t + n]]
                    p_jump = torch.sigmoid(logits["jump"][b, t, n, 0].double())
                    jump = -torch.log(p_jump if actions["jump"][b, t + n] else 1 - p_jump)
                    total, count = total + float(move + jump), count + 1
        counts.append(count)
        if count:
            per_offset.append(total / count)
    return sum(per_offset) / len(per_offset), counts


def test_targets_shift_and_mask_past_the_window():
    values = torch.tensor([[10, 11, 12, 13, 14]])
    valid = torch.tensor([[True, True, False, True, True]])
    targets, mask = mtp_targets(values, valid, horizon=8)
    assert targets.shape == mask.shape == (1, 5, 9)
    for t in range(5):
        for n in range(9):
            if t + n < 5:
                assert int(targets[0, t, n]) == 10 + t + n
            assert bool(mask[0, t, n]) == (t + n < 5 and t + n != 2)


def test_short_window_matches_hand_computed_loss_and_later_offsets_contribute_nothing():
    # T = 5, L = 8. Offset n at frame t has move logits (t - n, 0, 0) with target class 0 and a jump
    # logit (t - n) with target True, so its joint NLL is log(1 + 2 e^-(t-n)) + log(1 + e^-(t-n)).
    frames, horizon = 5, 8
    c = torch.arange(frames).view(frames, 1) - torch.arange(horizon + 1).view(1, horizon + 1)
    move = torch.zeros(1, frames, horizon + 1, 3)
    move[..., 0] = c.float()
    jump = c.float().view(1, frames, horizon + 1, 1).clone()
    move[:, :, 5:] = math.nan  # offsets 5..8 have no target in a 5-frame window
    jump[:, :, 5:] = math.nan
    move.requires_grad_(True)
    jump.requires_grad_(True)
    actions = {"move": torch.zeros(1, frames, dtype=torch.long), "jump": torch.ones(1, frames, dtype=torch.bool)}
    out = mtp_policy_loss({"move": move, "jump": jump}, actions, torch.ones(1, frames, dtype=torch.bool), SPACE)

    offset_means = []
    for n in range(frames):
        nll = [math.log(1 + 2 * math.exp(-(t - n))) + math.log(1 + math.exp(-(t - n))) for t in range(frames - n)]
        offset_means.append(sum(nll) / len(nll))
    expected = sum(offset_means) / len(offset_means)  # mean over the 5 offsets that have targets, no /L
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.per_offset_count.tolist() == [5, 4, 3, 2, 1, 0, 0, 0, 0]
    torch.testing.assert_close(out.per_offset_loss[:5], torch.tensor(offset_means, dtype=torch.float32))
    assert out.per_offset_loss[5:].tolist() == [0.0] * 4
    out.loss.backward()
    assert bool(torch.isfinite(move.grad).all()) and bool((move.grad[:, :, 5:] == 0).all())
    assert bool((jump.grad[:, :, 5:] == 0).all()) and bool((move.grad[:, :, :5] != 0).any())


def test_long_window_trains_all_nine_offsets_and_matches_loop_reference():
    logits, actions = random_batch(batch=2, frames=32, horizon=8)
    valid = torch.ones(2, 32, dtype=torch.bool)
    out = mtp_policy_loss(logits, actions, valid, SPACE)
    expected, counts = reference_policy_loss(logits, actions, valid)
    assert out.per_offset_count.tolist() == counts == [2 * (32 - n) for n in range(9)]
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    out.loss.backward()
    for n in range(9):
        assert bool((logits["move"].grad[:, :, n] != 0).any()) and bool((logits["jump"].grad[:, :, n] != 0).any())


def test_missing_action_masks_exactly_the_targets_pointing_at_it():
    logits, actions = random_batch(batch=2, frames=12, horizon=8, seed=1)
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[0, 6] = False
    actions["move"][0, 6] = -1  # an unlabeled frame may hold any placeholder
    _, mask = mtp_targets(actions["move"], valid, 8)
    _, full_mask = mtp_targets(actions["move"], torch.ones_like(valid), 8)
    removed = (full_mask & ~mask).nonzero().tolist()
    assert sorted(removed) == sorted([0, 6 - n, n] for n in range(7))
    out = mtp_policy_loss(logits, actions, valid, SPACE)
    expected, counts = reference_policy_loss(logits, actions, valid)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)
    assert out.per_offset_count.tolist() == counts


def test_accuracy_per_offset_and_component():
    # One frame pair (T = 2, L = 1): offset 0 has 2 targets, offset 1 has 1.
    move = torch.tensor([[[[5.0, 0, 0], [0, 5.0, 0]], [[0, 0, 5.0], [0, 0, 0]]]])  # argmax 0,1 | 2,0
    jump = torch.tensor([[[[3.0], [-3.0]], [[-3.0], [0.0]]]])  # predicts True,False | False,False
    actions = {"move": torch.tensor([[0, 1]]), "jump": torch.tensor([[True, False]])}
    out = mtp_policy_loss({"move": move, "jump": jump}, actions, torch.ones(1, 2, dtype=torch.bool), SPACE)
    # offset 0: move targets (0, 1) vs argmax (0, 2) -> 1/2; jump targets (T, F) vs (T, F) -> 2/2.
    # offset 1 (t = 0 -> frame 1): move target 1 vs argmax 1 -> 1; jump target F vs F -> 1.
    assert out.per_offset_accuracy["move"].tolist() == [0.5, 1.0]
    assert out.per_offset_accuracy["jump"].tolist() == [1.0, 1.0]


def test_no_valid_target_gives_zero_loss_with_a_connected_graph():
    logits, actions = random_batch(batch=1, frames=4, horizon=2)
    out = mtp_policy_loss(logits, actions, torch.zeros(1, 4, dtype=torch.bool), SPACE)
    assert out.loss.item() == 0.0 and out.per_offset_count.tolist() == [0, 0, 0]
    out.loss.backward()  # every head takes part (DDP needs it), with zero gradient
    assert bool((logits["move"].grad == 0).all())


def test_policy_loss_rejects_bad_labels_and_missing_components():
    logits, actions = random_batch(batch=1, frames=4, horizon=2)
    actions["move"][0, 1] = 3
    # Checked on the device (torch._assert_async, no wait in a training step): on a CPU it raises at once.
    with pytest.raises(RuntimeError, match=r"mtp_policy_loss: labeled 'move'"):
        mtp_policy_loss(logits, actions, torch.ones(1, 4, dtype=torch.bool), SPACE)
    with pytest.raises(ValueError, match="no logits or actions"):
        mtp_policy_loss({"move": logits["move"]}, actions, torch.ones(1, 4, dtype=torch.bool), SPACE)


def test_reward_loss_matches_loop_reference_and_counts_clamped_valid_targets():
    bins = twohot_bins(15, -2.0, 2.0)  # symexp(2) ~ 6.4: rewards of +-10 are clamped
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 6, 4, 15, generator=g)
    rewards = torch.tensor([[0.0, 1.0, -10.0, 0.5, 10.0, 0.0], [2.0, 0.0, 0.0, -1.0, 0.0, 10.0]])
    valid = torch.ones(2, 6, dtype=torch.bool)
    valid[1, 5] = False  # its clamped reward must not be counted
    out = mtp_reward_loss(logits, rewards, valid, bins)
    per_offset = []
    for n in range(4):
        terms = [
            float(-(twohot_encode(rewards[b, t + n], bins) * F.log_softmax(logits[b, t, n], -1)).sum())
            for b in range(2)
            for t in range(6 - n)
            if valid[b, t + n]
        ]
        per_offset.append(sum(terms) / len(terms))
    assert out.loss.item() == pytest.approx(sum(per_offset) / 4, rel=1e-5)
    # Valid clamped targets: frames 2 and 4 of example 0, seen from t = frame - n >= 0 for n = 0..3:
    # 3 times (t = 2, 1, 0) and 4 times (t = 4, 3, 2, 1).
    assert int(out.num_clamped) == 3 + 4


def test_offset_weights_give_offset_zero_its_share_and_renormalise_over_offsets_with_targets():
    from training.objectives import mtp_offset_weights

    counts = torch.tensor([5, 5, 4, 3, 0])  # offset 4 has no target (past the window)
    uniform = mtp_offset_weights(counts)
    assert uniform.tolist() == pytest.approx([0.25, 0.25, 0.25, 0.25, 0.0])
    # Offset 0 gets 0.5, offsets 1..3 share the other 0.5.
    assert mtp_offset_weights(counts, 0.5).tolist() == pytest.approx([0.5, 1 / 6, 1 / 6, 1 / 6, 0.0])
    # Offset 0 without targets (every frame's own target masked): the later offsets share everything.
    assert mtp_offset_weights(torch.tensor([0, 2, 2]), 0.5).tolist() == pytest.approx([0.0, 0.5, 0.5])
    # Only offset 0 has targets, or L = 0: it gets everything.
    assert mtp_offset_weights(torch.tensor([3, 0, 0]), 0.5).tolist() == pytest.approx([1.0, 0.0, 0.0])
    assert mtp_offset_weights(torch.tensor([3]), 0.5).tolist() == pytest.approx([1.0])
    assert mtp_offset_weights(torch.tensor([0, 0]), 0.5).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="first_offset_weight"):
        mtp_offset_weights(counts, 0.0)


def test_weighted_mtp_losses_are_the_weighted_sum_of_the_per_offset_means():
    bins = twohot_bins(15, -2.0, 2.0)
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 6, 4, 15, generator=g)
    rewards = torch.tensor([[0.0, 1.0, 0.0, 0.5, 0.0, 0.0], [2.0, 0.0, 0.0, -1.0, 0.0, 0.0]])
    valid = torch.ones(2, 6, dtype=torch.bool)
    uniform = mtp_reward_loss(logits, rewards, valid, bins)
    weighted = mtp_reward_loss(logits, rewards, valid, bins, first_offset_weight=0.7)
    m = uniform.per_offset_loss
    assert weighted.loss.item() == pytest.approx(0.7 * m[0].item() + 0.1 * m[1:].sum().item(), rel=1e-6)
    assert torch.equal(weighted.per_offset_loss, m)
    # Policy: same reduction.
    policy_logits, actions = random_batch(2, 6, 3)
    plain = mtp_policy_loss(policy_logits, actions, valid, SPACE)
    heavy = mtp_policy_loss(policy_logits, actions, valid, SPACE, first_offset_weight=0.5)
    p = plain.per_offset_loss
    assert heavy.loss.item() == pytest.approx(0.5 * p[0].item() + 0.5 * p[1:].mean().item(), rel=1e-6)
    # The gradient reaching offset 0's logits grows by 0.5 / (1/4) = 2x, the others' shrink by (0.5/3) / (1/4).
    plain.loss.backward()
    g_plain = policy_logits["move"].grad.clone()
    policy_logits["move"].grad = None
    heavy.loss.backward()
    g_heavy = policy_logits["move"].grad
    assert torch.allclose(g_heavy[:, :, 0], 2.0 * g_plain[:, :, 0], atol=1e-7)
    assert torch.allclose(g_heavy[:, :, 1:], (2.0 / 3.0) * g_plain[:, :, 1:], atol=1e-7)
