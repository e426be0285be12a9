"""The mixture sampler: a uniform data pass with relevant draws mixed in.

What an epoch is here: the uniform stream walks one fresh permutation of all windows, so every
window is drawn as "uniform" exactly once per epoch (a true data pass, unlike the replacement
sampling of the earlier pipeline, code review item 8). Before each uniform draw, draws from the
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
        relevant_groups: optional groups of relevant windows (e.g. `WindowDataset.relevant_windows_by_sign()`:
            windows with a gain, windows with a penalty). Each relevant draw then picks a group with equal
            probability and takes that group's next window, so a rare kind of event (a death among hundreds
            of gold pickups) is drawn as often as a common one. Their union replaces `relevant_indices`.

    Resuming mid-epoch: `state_dict()` records `position`, the number of draws already consumed in
    the current epoch; after `load_state_dict`, the next iteration starts there. Use either this or
    `accelerate.skip_first_batches`, never both (they would skip twice).
    """

    def __init__(
        self,
        num_windows: int,
        relevant_indices: Sequence[int] | np.ndarray,
        relevant_fraction: float = 0.5,
        seed: int = 0,
        relevant_groups: Sequence[Sequence[int] | np.ndarray] | None = None,
    ) -> None:
        if relevant_groups is None:
            relevant_indices = np.asarray(relevant_indices, dtype=np.int64)
            relevant_groups = [relevant_indices]
        else:
            relevant_groups = [np.unique(np.asarray(g, dtype=np.int64)) for g in relevant_groups]
            relevant_indices = np.unique(np.concatenate(relevant_groups)) if relevant_groups else np.zeros(0, np.int64)
        self.relevant_groups = [g for g in relevant_groups if len(g)]  # without groups, one: the relevant windows
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
        self.position = 0  # draws handed out in the current epoch
        self._resume_from = 0
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
            # Each relevant draw picks a group (at random when there are several), then that group's next window.
            count = len(self.relevant_groups)
            group = rng.integers(count, size=num_relevant) if count > 1 else np.zeros(num_relevant, np.int64)
            drawn = np.empty(num_relevant, np.int64)
            for g, members in enumerate(self.relevant_groups):
                picks = group == g
                drawn[picks] = self._walk(rng, members, int(picks.sum()))
            windows[source == DrawSource.RELEVANT] = drawn
        self._cache = (epoch, windows, source)
        return windows, source

    @staticmethod
    def _walk(rng: np.random.Generator, members: np.ndarray, count: int) -> np.ndarray:
        """`count` draws from `members` walking successive fresh permutations (even coverage, no replacement
        within a lap)."""
        laps = -(-count // len(members))
        if laps == 0:
            return np.zeros(0, np.int64)
        return np.concatenate([rng.permutation(members) for _ in range(laps)])[:count]

    def importance_weights(self) -> np.ndarray:
        """`(N,)` float32 `p_uniform(w) / p_sampler(w)` of every window: weighting a window's loss by it makes
        the expected loss over the mixture's draws equal to that of uniform draws.

        A draw is uniform with probability `1 - p` and one of the K relevant windows with probability p, so
        `p_sampler(w) = (1 - p) / N + p / K` for relevant windows and `(1 - p) / N` for the others. With G
        groups, a relevant draw takes window w with probability `sum over the groups g holding w of 1 / (G K_g)`.
        """
        p = self.relevant_fraction if len(self.relevant_indices) else 0.0
        relevant_probability = np.zeros(self.num_windows)
        for members in self.relevant_groups:
            relevant_probability[members] += 1.0 / (len(self.relevant_groups) * len(members))
        return (1.0 / ((1.0 - p) + p * self.num_windows * relevant_probability)).astype(np.float32)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose sequence the next iteration yields (a new epoch starts at 0)."""
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self._resume_from = 0

    def __len__(self) -> int:
        """Draws the next iteration yields (the epoch's length, less a restored position)."""
        return len(self.epoch_sequence()[0]) - self._resume_from

    def __iter__(self) -> Iterator[tuple[int, int]]:
        windows, source = self.epoch_sequence()
        start, self._resume_from = self._resume_from, 0
        for position in range(start, len(windows)):
            self.position = position + 1
            yield int(windows[position]), int(source[position])  # plain ints: collated into a tensor

    def state_dict(self, position: int | None = None) -> dict:
        """Resumable state. `position` overrides the draws consumed in this epoch (see below).

        With a DataLoader that prefetches (workers, or Accelerate's look-ahead), the sampler has
        handed out more draws than the training loop consumed: pass
        `position = batches_done * batch_size * num_processes` in that case.
        """
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "relevant_fraction": self.relevant_fraction,
            "num_windows": self.num_windows,
            "num_relevant": len(self.relevant_indices),
            "relevant_groups": len(self.relevant_groups),
            "position": self.position if position is None else int(position),
        }

    def resume_at(self, epoch: int, position: int) -> None:
        """Make the next iteration yield epoch `epoch` from draw `position` on (draws already consumed, over
        all processes). Calling `set_epoch(epoch)` afterwards keeps the position."""
        if not 0 <= position <= len(self.epoch_sequence(epoch)[0]):
            raise ValueError(f"position {position} is outside epoch {epoch} of {len(self.epoch_sequence(epoch)[0])} draws")
        self.epoch = int(epoch)
        self.position = self._resume_from = int(position)

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`; the next iteration continues the same epoch at `position`."""
        if state.get("relevant_groups", len(self.relevant_groups)) != len(self.relevant_groups):
            raise ValueError(f"sampler state draws relevant windows from {state['relevant_groups']} group(s), "
                             f"this sampler from {len(self.relevant_groups)}: a different relevant_balance")
        if state["num_windows"] != self.num_windows or state["num_relevant"] != len(self.relevant_indices):
            raise ValueError(
                f"sampler state is for {state['num_windows']} windows ({state['num_relevant']} relevant), "
                f"this sampler has {self.num_windows} ({len(self.relevant_indices)}): different data or window length"
            )
        self.seed = int(state["seed"])
        self.relevant_fraction = float(state["relevant_fraction"])
        self.epoch = int(state["epoch"])
        self._cache = None
        self.position = self._resume_from = int(state["position"])
