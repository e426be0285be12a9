"""The mixture sampler: a uniform data pass with relevant draws mixed in.

What an epoch is here: the uniform stream walks one fresh permutation of all windows, so every
window is drawn as "uniform" exactly once per epoch (a true data pass: with replacement, some windows
would be drawn twice and others never in an "epoch"). Before each uniform draw, draws from the
relevant windows (those with a nonzero reward) are inserted, each draw being relevant with
probability `relevant_fraction` independently; an epoch therefore has about
`num_windows / (1 - relevant_fraction)` draws. Relevant draws walk successive fresh permutations of
the relevant windows, so they too cover their set evenly rather than with replacement.

The epoch's whole sequence is a function of (seed, epoch) only, so every Accelerate process
iterating the sampler sees the same sequence and keeps its own disjoint share of the batches.
"""

from __future__ import annotations

import enum
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class DrawSource(enum.IntEnum):
    """Where a draw of the mixture sampler came from; it travels with each example as `source`."""

    UNIFORM = 0  # the uniform pass over all windows
    RELEVANT = 1  # the windows that contain a nonzero reward

    @classmethod
    def parse(cls, name: str) -> "DrawSource":
        """`"uniform"` / `"relevant"` (as written in recipes) -> the member; ValueError otherwise."""
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown draw source {name!r}; use one of {[m.name.lower() for m in cls]}") from None


class MixtureSampler(Sampler):
    """Yields `(window_index, source)` with `source` a `DrawSource` value (0 uniform, 1 relevant).

    Args:
        num_windows: number of windows N (`len(WindowDataset)`).
        relevant_indices: windows that contain a nonzero reward (`WindowDataset.relevant_windows()`).
            If empty, no relevant draws are made (warned once) and an epoch is a plain permutation.
        relevant_fraction: probability p in [0, 1) that a draw comes from the relevant windows.
        seed: base seed; the epoch's sequence is drawn from `numpy.random.default_rng((seed, epoch))`.

    Resuming mid-epoch: `resume_at(epoch, position)` makes the next iteration start at draw `position` of
    that epoch (the training loop passes the draws it consumed, over all processes). Use either this or
    `accelerate.skip_first_batches`, never both (they would skip twice).
    """

    def __init__(
        self,
        num_windows: int,
        relevant_indices: Sequence[int] | np.ndarray,
        relevant_fraction: float = 0.5,
        seed: int = 0,
    ) -> None:
        if num_windows < 1:
            raise ValueError(f"num_windows must be >= 1, got {num_windows}")
        if not 0.0 <= relevant_fraction < 1.0:
            raise ValueError(f"relevant_fraction must be in [0, 1), got {relevant_fraction}")
        self.num_windows = int(num_windows)
        self.relevant_indices = np.asarray(relevant_indices, dtype=np.int64)
        if len(self.relevant_indices) and not (
            (self.relevant_indices >= 0).all() and (self.relevant_indices < num_windows).all()
        ):
            raise ValueError("relevant_indices must lie in [0, num_windows)")
        if relevant_fraction > 0 and len(self.relevant_indices) == 0:
            warnings.warn("MixtureSampler: no relevant windows (no nonzero reward); all draws are uniform", stacklevel=2)
        self.relevant_fraction = float(relevant_fraction)
        self.seed = int(seed)
        self.epoch = 0
        self._resume_from = 0  # draws of the current epoch the next iteration skips
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None

    def epoch_sequence(self, epoch: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The full sequence of an epoch: `(window_index (D,) int64, source (D,) int64)`."""
        epoch = self.epoch if epoch is None else epoch
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1], self._cache[2]
        rng = np.random.default_rng((self.seed, epoch))
        uniform = rng.permutation(self.num_windows)
        p = self.relevant_fraction if len(self.relevant_indices) else 0.0
        # Draws are i.i.d. relevant with probability p: the number of relevant draws before each
        # uniform draw is geometric (failures before the first success of probability 1 - p).
        extra = rng.geometric(1.0 - p, size=self.num_windows) - 1
        total = self.num_windows + int(extra.sum())
        source = np.full(total, DrawSource.RELEVANT, np.int64)
        uniform_positions = np.cumsum(extra + 1) - 1
        source[uniform_positions] = DrawSource.UNIFORM
        windows = np.empty(total, np.int64)
        windows[uniform_positions] = uniform
        num_relevant = total - self.num_windows
        if num_relevant:
            # Successive fresh permutations of the relevant windows: even coverage, no replacement within a lap.
            laps = -(-num_relevant // len(self.relevant_indices))
            drawn = np.concatenate([rng.permutation(self.relevant_indices) for _ in range(laps)])[:num_relevant]
            windows[source == DrawSource.RELEVANT] = drawn
        self._cache = (epoch, windows, source)
        return windows, source

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose sequence the next iteration yields (a new epoch starts at 0)."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self._resume_from = 0

    def __len__(self) -> int:
        """Draws the next iteration yields (the epoch's length, less a resumed position)."""
        return len(self.epoch_sequence()[0]) - self._resume_from

    def __iter__(self) -> Iterator[tuple[int, int]]:
        windows, source = self.epoch_sequence()
        start, self._resume_from = self._resume_from, 0
        for position in range(start, len(windows)):
            yield int(windows[position]), int(source[position])  # plain ints: collated into a tensor

    def resume_at(self, epoch: int, position: int) -> None:
        """Make the next iteration yield epoch `epoch` from draw `position` on (draws already consumed, over
        all processes). Calling `set_epoch(epoch)` afterwards keeps the position."""
        if not 0 <= position <= len(self.epoch_sequence(epoch)[0]):
            raise ValueError(f"position {position} is outside epoch {epoch} of {len(self.epoch_sequence(epoch)[0])} draws")
        self.epoch = int(epoch)
        self._resume_from = int(position)
