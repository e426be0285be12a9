"""The timing diagnostic: at which frame offset does each signal's events line up with changes in the latents?

Labels read from a game engine and the pixels a tokenizer encodes are not always on the same frame (engine
labels typically lead the pixels by about a frame). The mapping file gives each signal a frame `offset`; this
estimates it from the data. For a frame t whose previous frame t-1 also has a latent, the latent change is
`change[t] = ||z[t] - z[t-1]||` (L2 over all C*H*W values). For a signal with events on label frames f_i
(before any offset) and a candidate offset k, the score is

    score(k) = mean_i change[f_i + k] / mean_t change[t]

(1 = no more change than on an average frame), over the events whose frame f_i + k has a change; `z(k)` is the
same difference in standard errors, `(mean_i change[f_i + k] - mean_t change[t]) / (std_t change[t] / sqrt(n_k))`.
The best offset is the one with the highest score. A signal the latents do not show (a key press the encoder
cannot see) scores about 1 everywhere and its best offset means nothing: read `z`. A press can also correlate
with what follows it (a spell, a hit, gold two frames later): its best offset is then that of its consequence.
So only the reward terms are checked against the mapping (`mismatches`, warnings); actions are reported.

    python -m data.timing --latents-dir L --tables-dir T [--events-dir E] --mapping MAP.yaml [--offsets -3 3]

prints the table and writes the JSON (`--output`); `python -m data.prepare --tables-dir ...` puts the same
result in `prepare_report.json` (`timing`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

from modeling_dreamer.errors import DataError

DEFAULT_OFFSETS = (-3, 3)
# A mismatch is reported when the best offset stands this many standard errors above the average frame and
# the mapping's offset scores less than half of that: the data clearly disagree with the mapping.
MISMATCH_Z = 5.0
_BLOCK = 1024


def latent_change(latents: np.ndarray, frame_index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`(frames (M,) int64, change (M,) float64)`: `||z[t] - z[t-1]||` for each frame t whose frame t-1 has a
    latent. `latents (N, C, H, W)` (any float type), `frame_index (N,)` ascending. Computed in blocks of rows,
    so a long video of large latents needs no float32 copy of itself."""
    frame_index = np.asarray(frame_index, np.int64)
    flat = latents.reshape(len(latents), -1)
    follows = np.flatnonzero(np.diff(frame_index) == 1) + 1
    change = np.empty(len(follows))
    for start in range(0, len(follows), _BLOCK):
        rows = follows[start:start + _BLOCK]
        step = flat[rows].astype(np.float32) - flat[rows - 1].astype(np.float32)
        change[start:start + _BLOCK] = np.sqrt((step.astype(np.float64) ** 2).sum(axis=1))
    return frame_index[follows], change


class TimingTally:
    """Sums of the latent change at each signal's event frames + k, per offset k, gathered video by video."""

    def __init__(self, offsets: tuple[int, int] = DEFAULT_OFFSETS):
        low, high = offsets
        if low > high:
            raise ValueError(f"offsets must be (low, high) with low <= high, got {offsets}")
        self.offsets = list(range(int(low), int(high) + 1))
        self.frames = 0
        self.change_sum = 0.0
        self.change_sq = 0.0
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.events: dict[str, int] = {}

    def add(self, latents: np.ndarray, frame_index: np.ndarray, signals: dict[str, np.ndarray]) -> None:
        """One video: its latents `(N, C, H, W)`, frame numbers `(N,)`, and `{signal: label frames (K,)}`."""
        frames, change = latent_change(latents, frame_index)
        self.frames += len(change)
        self.change_sum += float(change.sum())
        self.change_sq += float((change ** 2).sum())
        for name, events in signals.items():
            events = np.asarray(events, np.int64)
            sums = self.sums.setdefault(name, np.zeros(len(self.offsets)))
            counts = self.counts.setdefault(name, np.zeros(len(self.offsets), np.int64))
            self.events[name] = self.events.get(name, 0) + len(events)
            if not len(frames) or not len(events):
                continue
            for j, k in enumerate(self.offsets):
                at = np.searchsorted(frames, events + k)
                hit = (at < len(frames)) & (frames[np.minimum(at, len(frames) - 1)] == events + k)
                sums[j] += change[at[hit]].sum()
                counts[j] += int(hit.sum())

    def result(self, mapping_offsets: dict[str, int] | None = None, checked: set[str] | None = None) -> dict:
        """The report's `timing` block (docs/data.md): per signal the score, z and events used per offset,
        the best offset, the mapping's offset, and `mismatches` where the data clearly disagree with it, for the
        signals in `checked` (all when None)."""
        mean = self.change_sum / self.frames if self.frames else 0.0
        variance = max(self.change_sq / self.frames - mean ** 2, 0.0) if self.frames else 0.0
        std = math.sqrt(variance)
        signals, best_offsets, mismatches = {}, {}, []
        for name in self.sums:
            sums, counts = self.sums[name], self.counts[name]
            with np.errstate(invalid="ignore", divide="ignore"):
                means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
            score = {str(k): _finite(means[j] / mean) if mean > 0 else None for j, k in enumerate(self.offsets)}
            z = {str(k): _finite((means[j] - mean) / (std / math.sqrt(counts[j]))) if counts[j] and std > 0 else None
                 for j, k in enumerate(self.offsets)}
            ranked = [k for k in self.offsets if score[str(k)] is not None]
            # Highest score; on a tie the offset nearest 0.
            best = max(ranked, key=lambda k: (score[str(k)], -abs(k))) if ranked else None
            entry = {
                "events": self.events[name],
                "score": score,
                "z": z,
                "events_used": {str(k): int(counts[j]) for j, k in enumerate(self.offsets)},
                "best_offset": best,
                "best_score": score[str(best)] if best is not None else None,
                "best_z": z[str(best)] if best is not None else None,
            }
            if mapping_offsets is not None and name in mapping_offsets:
                chosen = mapping_offsets[name]
                entry["mapping_offset"] = chosen
                best_z, chosen_z = entry["best_z"], z.get(str(chosen))
                if (checked is None or name in checked) and best is not None and best != chosen and best_z is not None and best_z >= MISMATCH_Z and (
                        chosen_z is None or chosen_z < best_z / 2):
                    mismatches.append(
                        f"{name}: its events line up best with the latents at offset {best:+d} (score "
                        f"{entry['best_score']:.3f}, z {best_z:.1f}), but the mapping says {chosen:+d} "
                        f"(z {'n/a' if chosen_z is None else f'{chosen_z:.1f}'})"
                    )
            signals[name] = entry
            best_offsets[name] = best
        return {
            "offsets": self.offsets,
            "frames": self.frames,
            "mean_change": mean,
            "std_change": std,
            "signals": signals,
            "best_offsets": best_offsets,
            "mismatches": mismatches,
        }


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def mapping_offsets(mapping) -> dict[str, int]:
    """`{signal: offset}` of the signals `data.tables.timing_signals` names."""
    offsets = {f"rewards.{name}": term.offset for name, term in mapping.rewards.items()}
    offsets.update({f"actions.{name}": c.offset for name, c in mapping.actions.items() if c.kind == "binary"})
    return offsets


def checked_signals(mapping) -> set[str]:
    """The signals whose disagreement with the mapping is a warning: the reward terms. A reward is a change of
    the game state, which the latents show; a key press often is not shown itself, yet it correlates with what
    follows it (a spell, then a hit, then gold two frames later), so its best offset is no evidence about its own
    timing and is only reported."""
    return {f"rewards.{name}" for name in mapping.rewards}


def format_table(result: dict) -> str:
    """The result as a text table: one row per signal, the score per offset, the best one marked."""
    offsets = result["offsets"]
    width = max([len(name) for name in result["signals"]] + [6])
    lines = [f"{'signal':<{width}} {'events':>7} " + " ".join(f"{k:>+7d}" for k in offsets) + "   best  mapping"]
    for name, entry in result["signals"].items():
        cells = []
        for k in offsets:
            value = entry["score"][str(k)]
            text = "-" if value is None else f"{value:.3f}"
            cells.append(f"{text + ('*' if k == entry['best_offset'] else ''):>7}")
        best = "-" if entry["best_offset"] is None else f"{entry['best_offset']:+d}"
        chosen = entry.get("mapping_offset")
        lines.append(f"{name:<{width}} {entry['events']:>7} " + " ".join(cells) +
                     f"   {best:>4}  {'' if chosen is None else f'{chosen:+d}':>7}")
    lines.append(f"score = mean latent change at event frame + offset / mean over all {result['frames']} frames "
                 f"({result['mean_change']:.4g}); * = best")
    return "\n".join(lines)


def diagnose(
    latents_dir: str | Path,
    tables_dir: str | Path,
    mapping_path: str | Path,
    events_dir: str | Path | None = None,
    offsets: tuple[int, int] = DEFAULT_OFFSETS,
    videos: list[str] | None = None,
) -> dict:
    """Score every video that has latents and a table (or the named `videos`); returns `TimingTally.result`
    with `videos` added."""
    from data.importers import load_packed_latents
    from data.mapping import load_mapping
    from data.tables import find_table, find_table_videos, read_labels, timing_signals

    mapping = load_mapping(mapping_path)
    latents_dir, tables_dir = Path(latents_dir), Path(tables_dir)
    paired, _, _ = find_table_videos(latents_dir, tables_dir)
    if videos:
        unknown = sorted(set(videos) - set(paired))
        if unknown:
            raise DataError(f"{latents_dir}: no latents and table for video(s) {unknown}")
        paired = sorted(set(videos))
    if not paired:
        raise DataError(f"{latents_dir}: no video has both <id>.npz here and a table in {tables_dir}")
    tally = TimingTally(offsets)
    for video_id in paired:
        packed = load_packed_latents(latents_dir / f"{video_id}.npz")
        events = Path(events_dir) / f"{video_id}.jsonl" if events_dir is not None else None
        labels = read_labels(video_id, find_table(tables_dir, video_id), events, mapping)
        tally.add(packed.latents, packed.frame_indices, timing_signals(labels, mapping))
    return {**tally.result(mapping_offsets(mapping), checked_signals(mapping)), "videos": paired}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m data.timing", description=__doc__.split("\n")[0])
    parser.add_argument("--latents-dir", required=True)
    parser.add_argument("--tables-dir", required=True)
    parser.add_argument("--events-dir")
    parser.add_argument("--mapping", required=True)
    parser.add_argument("--offsets", type=int, nargs=2, default=list(DEFAULT_OFFSETS), metavar=("LOW", "HIGH"),
                        help="the offsets to score, inclusive (default -3 3)")
    parser.add_argument("--videos", nargs="+", help="score these videos only")
    parser.add_argument("--output", help="write the result as JSON here")
    args = parser.parse_args(argv)
    if args.offsets[0] > args.offsets[1]:
        parser.error(f"--offsets LOW HIGH needs LOW <= HIGH, got {args.offsets}")
    try:
        result = diagnose(args.latents_dir, args.tables_dir, args.mapping, args.events_dir, tuple(args.offsets), args.videos)
    except DataError as error:
        print(f"data.timing: error: {error}", file=sys.stderr)
        return 1
    print(format_table(result))
    for message in result["mismatches"]:
        print(f"data.timing: warning: {message}", file=sys.stderr)
    if args.output:
        Path(args.output).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
