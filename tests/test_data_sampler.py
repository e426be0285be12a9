"""MixtureSampler: epochs, mixture share, determinism, sharding, resume."""

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

    # What the training loop does on resume: the checkpoint's epoch and the draws consumed in it.
    resumed = MixtureSampler(500, RELEVANT, relevant_fraction=0.5, seed=9)
    resumed.resume_at(2, 137)
    resumed.set_epoch(2)  # what Accelerate's prepared DataLoader does on iteration: keeps the position
    assert len(resumed) == len(expected) - 137
    assert list(resumed) == expected[137:]
    # The resumed position is used once: iterating again, and the following epoch, start from the beginning.
    assert list(resumed) == expected
    resumed.set_epoch(3)
    sampler.set_epoch(3)
    assert list(resumed) == list(sampler)
    # Resuming at the very end of an epoch yields nothing; beyond it is refused.
    resumed.resume_at(2, len(expected))
    assert list(resumed) == []
    with pytest.raises(ValueError, match="outside epoch"):
        resumed.resume_at(2, len(expected) + 1)


def test_resume_then_shard_continues_the_global_batches():
    """The loop resumes at `batches_done * batch_size * num_processes` draws: the shards of the resumed samplers
    (one per process, as in a DDP run) then hold exactly the global batches not trained on yet."""
    sampler = MixtureSampler(300, RELEVANT[:40], relevant_fraction=0.5, seed=2)
    sampler.set_epoch(1)
    full = list(BatchSampler(sampler, 8, drop_last=True))
    done = 5  # optimiser steps of a 2-process run of 8 windows per process

    def resumed_shard(rank: int) -> list[list[tuple[int, int]]]:
        resumed = MixtureSampler(300, RELEVANT[:40], relevant_fraction=0.5, seed=2)
        resumed.resume_at(1, done * 8 * 2)
        return list(BatchSamplerShard(BatchSampler(resumed, 8, drop_last=True), num_processes=2, process_index=rank))

    shards = [resumed_shard(rank) for rank in (0, 1)]
    interleaved = [batch for pair in zip(*shards) for batch in pair]
    remaining = full[2 * done:]
    assert interleaved == remaining[: len(remaining) - len(remaining) % 2]


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
