"""MixtureSampler (DESIGN.md section 8): epochs, mixture share, determinism, sharding, resume."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler

from data.sampler import MixtureSampler

RELEVANT = np.arange(0, 500, 7)  # 72 of 500 windows


def test_relevant_share_matches_fraction():
    sampler = MixtureSampler(500, RELEVANT, relevant_fraction=0.5, seed=1)
    sources = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        sources += [source for _, source in sampler]
    assert abs(np.mean(sources) - 0.5) < 0.02
    sampler = MixtureSampler(500, RELEVANT, relevant_fraction=0.2, seed=1)
    assert abs(np.mean([source for _, source in sampler]) - 0.2) < 0.04  # one epoch only: wider


def test_uniform_stream_is_one_permutation_per_epoch():
    sampler = MixtureSampler(500, RELEVANT, relevant_fraction=0.5, seed=0)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        draws = list(sampler)
        assert len(draws) == len(sampler)
        uniform = [window for window, source in draws if source == 0]
        relevant = [window for window, source in draws if source == 1]
        assert sorted(uniform) == list(range(500))
        assert set(relevant) <= set(RELEVANT.tolist())
        # Relevant draws walk permutations of the relevant set: counts differ by at most one.
        counts = np.bincount(relevant, minlength=500)[RELEVANT]
        assert counts.max() - counts.min() <= 1


def test_deterministic_from_seed_and_epoch():
    first, second = MixtureSampler(300, RELEVANT[:40], seed=5), MixtureSampler(300, RELEVANT[:40], seed=5)
    assert list(first) == list(second)
    epoch0 = list(first)
    first.set_epoch(1)
    assert list(first) != epoch0
    assert list(MixtureSampler(300, RELEVANT[:40], seed=6)) != epoch0


@pytest.mark.parametrize("batch_size, drop_last, even_batches", [(8, False, False), (8, True, True), (5, True, True)])
def test_accelerate_shards_are_disjoint_and_cover_the_sequence(batch_size, drop_last, even_batches):
    sampler = MixtureSampler(300, RELEVANT[:40], relevant_fraction=0.5, seed=2)
    sampler.set_epoch(3)
    full = list(BatchSampler(sampler, batch_size, drop_last))
    shards = [
        list(BatchSamplerShard(BatchSampler(sampler, batch_size, drop_last), num_processes=2, process_index=rank, even_batches=even_batches))
        for rank in (0, 1)
    ]
    # Accelerate gives batch k of the global sequence to rank k % 2: interleaving the shards must
    # rebuild the sequence (each draw position exactly once, so the shards are disjoint).
    interleaved = [batch for pair in zip(*shards) for batch in pair]
    interleaved += shards[0][len(shards[1]) :]
    usable = len(full) - (len(full) % 2 if drop_last else 0)
    assert interleaved == full[:usable]


def test_resume_mid_epoch_continues_identically():
    sampler = MixtureSampler(500, RELEVANT, relevant_fraction=0.5, seed=9)
    sampler.set_epoch(2)
    expected = list(sampler)
    iterator = iter(sampler)
    consumed = [next(iterator) for _ in range(137)]
    state = sampler.state_dict()
    assert state["position"] == 137 and state["epoch"] == 2

    resumed = MixtureSampler(500, RELEVANT, relevant_fraction=0.5, seed=0)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # what Accelerate's prepared DataLoader does on iteration
    assert len(resumed) == len(expected) - 137
    assert consumed + list(resumed) == expected
    # The following epoch starts from its beginning.
    resumed.set_epoch(3)
    sampler.set_epoch(3)
    assert list(resumed) == list(sampler)


def test_resume_with_explicit_position_and_mismatched_data():
    sampler = MixtureSampler(100, [1, 2, 3], seed=0)
    full = list(sampler)
    state = sampler.state_dict(position=40)
    resumed = MixtureSampler(100, [1, 2, 3], seed=0)
    resumed.load_state_dict(state)
    assert list(resumed) == full[40:]
    with pytest.raises(ValueError, match="different data or window length"):
        MixtureSampler(99, [1, 2, 3]).load_state_dict(state)


def test_no_relevant_windows_falls_back_to_uniform():
    with pytest.warns(UserWarning, match="no relevant windows"):
        sampler = MixtureSampler(50, [], relevant_fraction=0.5)
    draws = list(sampler)
    assert len(sampler) == 50 and sorted(w for w, _ in draws) == list(range(50))
    assert all(source == 0 for _, source in draws)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MixtureSampler(50, [], relevant_fraction=0.0)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="relevant_fraction"):
        MixtureSampler(10, [1], relevant_fraction=1.0)
    with pytest.raises(ValueError, match="relevant_indices"):
        MixtureSampler(10, [10])


def test_importance_weights_undo_the_mixture() -> None:
    sampler = MixtureSampler(10, [2, 5], relevant_fraction=0.5, seed=0)
    weights = sampler.importance_weights()
    # Relevant windows are drawn with probability 0.5 / 10 + 0.5 / 2 = 0.3, the others with 0.05: the weights
    # 1/3 and 2 bring every window back to the uniform 1/10.
    expected = np.full(10, 2.0)
    expected[[2, 5]] = 1.0 / 3.0
    np.testing.assert_allclose(weights, expected, rtol=1e-6)
    # Empirically: over many epochs, draws x weights per window approach the uniform count.
    counts = np.zeros(10)
    for epoch in range(400):
        sampler.set_epoch(epoch)
        windows, _ = sampler.epoch_sequence()
        counts += np.bincount(windows, minlength=10)
    share = counts * weights / (counts * weights).sum()
    np.testing.assert_allclose(share, 0.1, atol=0.01)
    # No oversampling, or nothing to oversample: every weight is 1.
    np.testing.assert_allclose(MixtureSampler(4, [1], relevant_fraction=0.0).importance_weights(), 1.0)
    with pytest.warns(UserWarning):
        np.testing.assert_allclose(MixtureSampler(4, [], relevant_fraction=0.5).importance_weights(), 1.0)


def test_relevant_groups_are_drawn_equally_often() -> None:
    # 40 windows with a gain, 2 with a penalty (window 99 has both): relevant draws pick a group at random.
    gains, penalties = np.arange(60, 100), np.array([5, 99])
    sampler = MixtureSampler(300, [], relevant_fraction=0.5, seed=3, relevant_groups=[gains, penalties])
    assert sampler.relevant_indices.tolist() == [5] + list(range(60, 100))
    drawn = []
    for epoch in range(10):
        sampler.set_epoch(epoch)
        windows, source = sampler.epoch_sequence()
        assert sorted(windows[source == 0].tolist()) == list(range(300))  # the uniform pass is untouched
        drawn.append(windows[source == 1])
    drawn = np.concatenate(drawn)
    from_penalties = np.isin(drawn, penalties).mean()
    # Half of the draws come from the penalty group, plus the gain group's draws of window 99 (1/40 of its half).
    assert abs(from_penalties - (0.5 + 0.5 / 40)) < 0.03
    # Without groups the two penalty windows would get 2/41 of the relevant draws.
    plain = MixtureSampler(300, np.union1d(gains, penalties), relevant_fraction=0.5, seed=3)
    plain_windows, plain_source = plain.epoch_sequence()
    assert np.isin(plain_windows[plain_source == 1], penalties).mean() < 0.1
    # A sampler state records the grouping, and a sampler with another grouping refuses it.
    with pytest.raises(ValueError, match="group"):
        plain.load_state_dict(sampler.state_dict())
    # Resuming mid-epoch continues the grouped sequence exactly.
    sampler.set_epoch(4)
    expected = list(sampler)
    resumed = MixtureSampler(300, [], relevant_fraction=0.5, seed=3, relevant_groups=[gains, penalties])
    resumed.load_state_dict(sampler.state_dict(position=101))
    assert expected[:101] + list(resumed) == expected


def test_importance_weights_with_groups() -> None:
    sampler = MixtureSampler(10, [], relevant_fraction=0.5, seed=0, relevant_groups=[[2, 5], [5, 7]])
    # A relevant draw takes window 2 with probability 1/2 * 1/2, window 5 with 1/4 + 1/4, window 7 with 1/4;
    # p_sampler = 0.5 / 10 + 0.5 * that, and the weight is (1 / 10) / p_sampler.
    expected = np.full(10, 2.0)
    expected[[2, 7]] = 0.1 / (0.05 + 0.125)
    expected[5] = 0.1 / (0.05 + 0.25)
    np.testing.assert_allclose(sampler.importance_weights(), expected, rtol=1e-6)
    counts = np.zeros(10)
    for epoch in range(400):
        sampler.set_epoch(epoch)
        counts += np.bincount(sampler.epoch_sequence()[0], minlength=10)
    share = counts * expected / (counts * expected).sum()
    np.testing.assert_allclose(share, 0.1, atol=0.01)
