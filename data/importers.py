"""Read the user's per-video files (docs/data.md) into per-frame arrays aligned with latents.

Two inputs per video:
- `<latents_dir>/<video_id>.npz`: `latents (N, C, H, W)` float16, `frame_indices (N,)` ascending.
- `<features_dir>/<video_id>/features.json`: one entry per frame, looked up by `frame_idx`.

Everything is keyed by frame number, never by array position (the earlier pipeline's rewards drifted off their
frames where latents were missing): a frame's
reward, death and actions are read from the features entry whose `frame_idx` equals the latent's
frame number. A reward or death on a frame without a latent is carried to the next frame that has
one only across a short gap (`carry_events`, at most `max_carry_frames` missing frames); events
before the first latent frame, after the last one or inside a longer gap are dropped and reported,
never piled onto one frame ("nothing lost, nothing invented", docs/data.md).

Every value that is read is validated after its cast to the type it is stored in, and every error
names the file, and the frame and key where there is one ("nothing silently wrong"): numbers must
be finite and fit float32 (gold, rewards), frame numbers must fit int32, booleans must be JSON
booleans or 0/1, health-bar positions numbers or null.
"""

from __future__ import annotations

import json
import math
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.schema import RewardSpec
from modeling_dreamer.errors import DataError

INT32_MAX = int(np.iinfo(np.int32).max)
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT16_MAX = float(np.finfo(np.float16).max)

# The largest jump allowed between consecutive frame numbers of one video (features entries and
# latents together). Frames are laid over a dense grid of frame numbers, so one absurd frame_idx
# (2**31 - 1 in a 4,000-frame video) would otherwise allocate gigabytes; a real pause in a
# recording keeps its frame numbering, so real jumps are short. 10,000 frames is 8 minutes at 20 fps.
DEFAULT_MAX_FRAME_GAP = 10_000

# The longest run of frames without a latent that a reward or death event is carried across, to
# the next latent frame. 3 frames is 150 ms at 20 fps: what follows an event (the gold counter, the
# death screen) is still on screen, so the next latent still shows it. Across a longer gap the
# reward would be learned on a frame that does not show its cause (docs/data.md, "carrying and dropping").
DEFAULT_MAX_CARRY_FRAMES = 3

# A video whose latents leave more than this fraction of its labelled frames outside their span
# (before the first latent frame or after the last) is refused as a truncated latent pack, unless
# `allow_truncated_latents`; above TRUNCATION_WARNING_FRACTION (and more than `max_carry_frames`
# frames) it is a warning. A frame or two at the ends is normal (an encoder that starts late).
DEFAULT_MAX_UNCOVERED_FRACTION = 0.5
TRUNCATION_WARNING_FRACTION = 0.01

# Where an event went (`CarriedEvents.fate`).
ON_FRAME, CARRIED, BEFORE_FIRST, AFTER_LAST, IN_LONG_GAP = 0, 1, 2, 3, 4
DROP_KINDS = {"before": BEFORE_FIRST, "after": AFTER_LAST, "long_gap": IN_LONG_GAP}


@dataclass
class PackedLatents:
    """One video's latents: `latents (N, C, H, W)` float16, `frame_indices (N,)` int32 ascending."""

    latents: np.ndarray
    frame_indices: np.ndarray


@dataclass
class VideoFeatures:
    """One features.json: the frame entries by frame number, and the header."""

    path: Path
    header: dict
    frames: dict[int, dict]
    first_frame: int
    last_frame: int


@dataclass
class VideoFrames:
    """One video, one entry per frame that has a latent (arrays of length N, in frame order).

    `actions[name]` is int64 for categorical components and bool for binary ones; `has_action` is
    False on frames without a features entry (their actions are unknown, not zero).
    """

    video_id: str
    frame_index: np.ndarray  # (N,) int32
    latents: np.ndarray  # (N, C, H, W) float16
    reward: np.ndarray  # (N,) float32
    death: np.ndarray  # (N,) bool
    actions: dict[str, np.ndarray]
    has_action: np.ndarray  # (N,) bool
    stats: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class CarriedEvents:
    """Where each event landed (`carry_events`), summed per latent row.

    Per row (N = number of latent frames): `reward (N,)` float64, the sum of the rewards landing on
    the row; `events (N,)` and `deaths (N,)` int64, how many events and deaths landed there.
    Per event (E events): `row (E,)` int64, the row it landed on (-1 if dropped); `fate (E,)` int8,
    ON_FRAME, CARRIED, BEFORE_FIRST, AFTER_LAST or IN_LONG_GAP. `report` sums events, reward and
    deaths by fate: `{"on_frame": {...}, "carried": {...}, "dropped": {"events", "reward", "deaths",
    "before": {...}, "after": {...}, "long_gap": {...}}}`, each `{...}` being
    `{"events": int, "reward": float, "deaths": int}`.
    """

    reward: np.ndarray
    events: np.ndarray
    deaths: np.ndarray
    row: np.ndarray
    fate: np.ndarray
    report: dict


def carry_events(
    event_frames: np.ndarray,
    event_rewards: np.ndarray,
    event_deaths: np.ndarray,
    latent_frames: np.ndarray,
    max_carry_frames: int = DEFAULT_MAX_CARRY_FRAMES,
) -> CarriedEvents:
    """Put reward and death events on the latent frames: the one carrying rule of every importer.

    `event_frames (E,)` int: the frame number of each event (any order); `event_rewards (E,)` float:
    its reward; `event_deaths (E,)` int or bool: the deaths it holds (0 or 1 for a frame);
    `latent_frames (N,)` int: the frame numbers that have a latent, strictly ascending, N >= 1.

    An event on a latent frame stays there. An event on a frame without a latent moves to the next
    latent frame if the run of missing frames it is in (between two latent frames) is at most
    `max_carry_frames` long; otherwise it is dropped: before the first latent frame, after the last
    one, or inside a longer gap. Nothing is dropped silently (the report sums each kind) and
    nothing is piled onto the last frame.
    """
    frames = np.asarray(event_frames, np.int64)
    rewards = np.asarray(event_rewards, np.float64)
    deaths = np.asarray(event_deaths, np.int64)
    latent_frames = np.asarray(latent_frames, np.int64)
    if not (frames.shape == rewards.shape == deaths.shape) or frames.ndim != 1:
        raise ValueError(f"event arrays must be 1-D of one length, got {frames.shape} {rewards.shape} {deaths.shape}")
    if latent_frames.ndim != 1 or len(latent_frames) == 0 or (np.diff(latent_frames) <= 0).any():
        raise ValueError("latent_frames must be a non-empty, strictly ascending 1-D array")
    if max_carry_frames < 0:
        raise ValueError(f"max_carry_frames must be >= 0, got {max_carry_frames}")
    rows = len(latent_frames)

    # The first latent frame at or after each event.
    next_row = np.searchsorted(latent_frames, frames, side="left")
    on_frame = (next_row < rows) & (latent_frames[np.minimum(next_row, rows - 1)] == frames)
    fate = np.full(len(frames), IN_LONG_GAP, np.int8)
    fate[on_frame] = ON_FRAME
    fate[~on_frame & (next_row == 0)] = BEFORE_FIRST
    fate[next_row == rows] = AFTER_LAST
    inside = ~on_frame & (next_row > 0) & (next_row < rows)
    # Missing frames between the latent frames around the event.
    gap = latent_frames[np.minimum(next_row, rows - 1)] - latent_frames[np.maximum(next_row - 1, 0)] - 1
    fate[inside & (gap <= max_carry_frames)] = CARRIED

    landed = (fate == ON_FRAME) | (fate == CARRIED)
    row = np.where(landed, next_row, -1)
    per_row_reward = np.zeros(rows)
    np.add.at(per_row_reward, row[landed], rewards[landed])
    per_row_events = np.bincount(row[landed], minlength=rows).astype(np.int64)
    per_row_deaths = np.bincount(row[landed], weights=deaths[landed], minlength=rows).astype(np.int64)

    def tally(mask: np.ndarray) -> dict:
        return {"events": int(mask.sum()), "reward": float(rewards[mask].sum()), "deaths": int(deaths[mask].sum())}

    dropped = ~landed
    report = {
        "on_frame": tally(fate == ON_FRAME),
        "carried": tally(fate == CARRIED),
        "dropped": {**tally(dropped), **{name: tally(fate == code) for name, code in DROP_KINDS.items()}},
    }
    return CarriedEvents(per_row_reward, per_row_events, per_row_deaths, row, fate, report)


def read_latent_shape(path: str | Path) -> tuple[int, ...] | None:
    """The per-frame shape `latents.shape[1:]` of a packed-latents file, read from the array header only.

    Lets `prepare` compare every video's shape before importing any (numpy has no call that reads
    an `.npz` member's shape without reading its data). Returns None when the file cannot be read
    this way (corrupt, not an `.npz`, no `latents`): the full read then reports the problem.
    """
    try:
        with zipfile.ZipFile(path) as archive, archive.open("latents.npy") as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape = np.lib.format.read_array_header_1_0(member)[0]
            elif version == (2, 0):
                shape = np.lib.format.read_array_header_2_0(member)[0]
            else:
                return None
    except (zipfile.BadZipFile, OSError, ValueError, KeyError, EOFError):
        return None
    return tuple(int(d) for d in shape[1:]) if len(shape) == 4 else None


def load_packed_latents(path: str | Path, expected_shape: tuple[int, int, int] | None = None) -> PackedLatents:
    """Read and validate `<video_id>.npz`; raise DataError naming `path` on any problem.

    `expected_shape` is the `(C, H, W)` every video must have (declared by the user or the shape
    most videos have). Latents are returned as float16 whatever float type the file holds; a value
    that does not fit float16 (|x| > 65504) is refused like NaN and inf.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: latents file not found")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            # np.load reads a .npy file (whatever its name) as one bare array.
            raise DataError(
                f"{path}: a single .npy array of shape {getattr(loaded, 'shape', '?')}, not an .npz archive "
                f"with 'latents' and 'frame_indices' (write it with numpy.savez)"
            )
        with loaded as npz:
            missing = {"latents", "frame_indices"} - set(npz.files)
            if missing:
                raise DataError(f"{path}: missing array(s) {sorted(missing)} (found {sorted(npz.files)})")
            latents, frame_indices = npz["latents"], npz["frame_indices"]
    except DataError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as error:
        raise DataError(f"{path}: cannot read packed latents (corrupt or not an .npz file: {error})") from error

    if latents.ndim != 4:
        raise DataError(f"{path}: latents must have shape (N, C, H, W), got {latents.shape}")
    if min(latents.shape[1:]) < 1:
        raise DataError(f"{path}: latents have an empty frame shape {tuple(latents.shape[1:])}")
    if not np.issubdtype(latents.dtype, np.floating):
        raise DataError(f"{path}: latents must be floating point, got dtype {latents.dtype}")
    if expected_shape is not None and tuple(latents.shape[1:]) != tuple(expected_shape):
        raise DataError(
            f"{path}: latent shape mismatch: frames are {tuple(latents.shape[1:])}, expected {tuple(expected_shape)}"
        )
    if frame_indices.ndim != 1 or not np.issubdtype(frame_indices.dtype, np.integer):
        raise DataError(f"{path}: frame_indices must be a 1-D integer array, got {frame_indices.dtype} {frame_indices.shape}")
    if len(frame_indices) != len(latents):
        raise DataError(f"{path}: {len(latents)} latents but {len(frame_indices)} frame_indices")
    if len(frame_indices) == 0:
        raise DataError(f"{path}: no frames")
    if frame_indices.min() < 0:
        raise DataError(f"{path}: negative frame index {int(frame_indices.min())}")
    if int(frame_indices.max()) > INT32_MAX:
        # Checked before the cast to the stored int32, which would wrap silently.
        raise DataError(f"{path}: frame index {int(frame_indices.max())} does not fit int32 (max {INT32_MAX})")
    steps = np.diff(frame_indices.astype(np.int64))
    if (steps == 0).any():
        i = int(np.argmax(steps == 0))
        raise DataError(f"{path}: duplicate frame index {int(frame_indices[i])} at positions {i} and {i + 1}")
    if (steps < 0).any():
        i = int(np.argmax(steps < 0))
        raise DataError(
            f"{path}: frame_indices not sorted: frame {int(frame_indices[i])} at position {i} "
            f"is followed by frame {int(frame_indices[i + 1])}"
        )

    with np.errstate(over="ignore", invalid="ignore"):
        latents = latents.astype(np.float16, copy=False)
    # Checked in blocks of rows: one bool per value for the whole video would be half its size again.
    flat = latents.reshape(len(latents), -1)
    finite = np.concatenate([np.isfinite(flat[start : start + 1024]).all(axis=1) for start in range(0, len(flat), 1024)])
    if not finite.all():
        bad = frame_indices[~finite]
        raise DataError(
            f"{path}: latents contain NaN or inf on {len(bad)} frame(s), first at frame {int(bad[0])} "
            f"(after the cast to the stored float16, where |x| > {FLOAT16_MAX:g} becomes inf)"
        )
    return PackedLatents(latents=latents, frame_indices=frame_indices.astype(np.int32))


def load_features(path: str | Path) -> VideoFeatures:
    """Read and validate one features.json; raise DataError naming `path` on any problem.

    Checks the structure and every `frame_idx` (an integer in 0..2**31 - 1, unique); the values of
    the other keys are checked by `import_video` as it reads them.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: features file not found")
    try:
        document = json.loads(path.read_text())
    except RecursionError as error:
        raise DataError(f"{path}: not valid features JSON (nested too deeply)") from error
    except (ValueError, UnicodeDecodeError) as error:  # JSONDecodeError, and ints over Python's digit limit
        raise DataError(f"{path}: not valid JSON ({error})") from error
    except OSError as error:
        raise DataError(f"{path}: cannot read features file ({error.strerror or error})") from error
    if not isinstance(document, dict) or not isinstance(document.get("frames"), list):
        raise DataError(f"{path}: expected a JSON object with a 'frames' list")

    frames: dict[int, dict] = {}
    for position, frame in enumerate(document["frames"]):
        index = frame.get("frame_idx") if isinstance(frame, dict) else None
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index <= INT32_MAX:
            raise DataError(
                f"{path}: frames[{position}] has no valid 'frame_idx' (an integer in 0..{INT32_MAX}; got {index!r})"
            )
        if index in frames:
            raise DataError(f"{path}: duplicate frame_idx {index} (frames[{position}])")
        frames[index] = frame
    if not frames:
        raise DataError(f"{path}: 'frames' is empty")
    header = {key: value for key, value in document.items() if key != "frames"}
    return VideoFeatures(path=path, header=header, frames=frames, first_frame=min(frames), last_frame=max(frames))


def health_bar_dead_frames(bar_visible: np.ndarray, min_frames: int) -> np.ndarray:
    """`(G,)` bool: the frames the health-bar rule counts as dead (docs/data.md).

    `bar_visible`: `(G,)` bool over consecutive frame numbers. A frame is dead when it lies in a
    run of at least `min_frames` frames without the bar that follows a frame with it; shorter runs
    are flicker, and a run at the very start (nothing seen before it) is not a death.
    """
    absent = ~np.asarray(bar_visible, bool)
    dead = np.zeros(len(absent), bool)
    starts = np.flatnonzero(absent[1:] & ~absent[:-1]) + 1
    if len(starts) == 0:
        return dead
    # The absent run starting at s ends at the first visible frame after s (or the end).
    visible_after = np.flatnonzero(~absent)
    ends = np.searchsorted(visible_after, starts)
    run_end = np.where(ends < len(visible_after), visible_after[np.minimum(ends, len(visible_after) - 1)], len(absent))
    for start, end in zip(starts, run_end):
        if end - start >= min_frames:
            dead[start:end] = True
    return dead


def _onsets(dead: np.ndarray) -> np.ndarray:
    """`(G,)` bool: True at each false -> true transition of `dead` (never at frame 0)."""
    dead = np.asarray(dead, bool)
    onsets = np.zeros(len(dead), bool)
    onsets[1:] = dead[1:] & ~dead[:-1]
    return onsets


def death_onsets_from_health_bar(bar_visible: np.ndarray, min_frames: int) -> np.ndarray:
    """Death onsets from health-bar visibility (docs/data.md).

    `bar_visible`: `(G,)` bool over consecutive frame numbers. Returns `(G,)` bool, True at each
    frame t where the bar was visible at t-1 and stays absent for at least `min_frames` frames from
    t: one event per death, flicker shorter than `min_frames` ignored. An absence at the very
    start (nothing seen before it) or cut short by the end of the video is not a death.
    """
    return _onsets(health_bar_dead_frames(bar_visible, min_frames))


def death_onsets_from_is_dead(is_dead: np.ndarray) -> np.ndarray:
    """`(G,)` bool: True at each false -> true transition of `is_dead` (not at frame 0)."""
    return _onsets(is_dead)


def _forward_fill(values: np.ndarray, known: np.ndarray, initial: bool) -> np.ndarray:
    """Replace unknown entries of a bool array by the last known value (`initial` before any)."""
    last_known = np.maximum.accumulate(np.where(known, np.arange(len(values)), -1))
    return np.where(last_known >= 0, values[np.maximum(last_known, 0)], initial)


def _as_float(value: object) -> float:
    """`float(value)` for a JSON number; inf for an integer too large for a float."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _FrameReader:
    """Reads and validates the values of one features.json, one frame at a time.

    Each reader returns None for a key that is missing (or null) and counts it in `missing`;
    a present value of the wrong type or range raises DataError naming file, frame and key.
    """

    def __init__(self, path: Path):
        self.path = path
        self.missing: Counter = Counter()
        self.keys_seen: set[str] = set()

    def error(self, frame: dict, key: str, expected: str, value: object) -> DataError:
        return DataError(f"{self.path}: frame {frame['frame_idx']}: '{key}' must be {expected}, got {value!r}")

    def number(self, frame: dict, key: str) -> float | None:
        """A finite number that fits float32 (the stored reward type), or None."""
        value = frame.get(key)
        if value is None:
            self.missing[key] += 1
            return None
        if not _is_number(value):
            raise self.error(frame, key, "a finite number", value)
        number = _as_float(value)
        if not math.isfinite(number) or abs(number) > FLOAT32_MAX:
            raise self.error(frame, key, f"a finite number within float32 range (|x| <= {FLOAT32_MAX:.4g})", value)
        return number

    def flag(self, frame: dict, key: str) -> bool | None:
        """A JSON boolean or the integer 0 / 1, or None. Strings ("false", "no") and other numbers
        are refused: `bool("false")` is True, so accepting them would silently invert labels."""
        value = frame.get(key)
        if value is None:
            self.missing[key] += 1
            return None
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise self.error(frame, key, "true/false (or 0/1)", value)

    def category(self, frame: dict, key: str, n: int) -> int | None:
        """An integer in 0..n-1, or None."""
        value = frame.get(key)
        if value is None:
            self.missing[key] += 1
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < n:
            raise self.error(frame, key, f"an integer in 0..{n - 1}", value)
        return value

    def bar_visible(self, frame: dict) -> bool | None:
        """Whether the health bar is shown: both present keys non-null. None if both keys are missing."""
        keys = [key for key in ("health_bar_x", "health_bar_y") if key in frame]
        if not keys:
            self.missing["health_bar_x"] += 1
            return None
        for key in keys:
            value = frame[key]
            if value is not None and not (_is_number(value) and math.isfinite(_as_float(value))):
                raise self.error(frame, key, "a number or null (no health bar seen)", value)
        return all(frame[key] is not None for key in keys)


def carrying_stats(placed: CarriedEvents, coverage: dict, death_count: np.ndarray, label_rewards: np.ndarray,
                   row_rewards: np.ndarray, event_rewards: np.ndarray) -> dict:
    """A video's stats of what `carry_events` did (both importers report them alike): carried and dropped events,
    the latents' coverage of the labels, deaths merged onto one row, and the reward totals and extremes."""
    return {
        "carried_events": placed.report["carried"]["events"],
        "carried_reward": placed.report["carried"]["reward"],
        "carried_deaths": placed.report["carried"]["deaths"],
        "dropped": placed.report["dropped"],
        "coverage": coverage,
        "merged_deaths": int(np.maximum(death_count - 1, 0).sum()),
        # Every reward of the labels, kept (on the rows) or dropped: kept + dropped = this.
        "reward_total": float(label_rewards.sum()),
        "reward_kept": float(row_rewards.sum()),
        # The extremes of single events, dropped ones included: the twohot range covers them.
        "event_reward_min": float(event_rewards.min()) if len(event_rewards) else None,
        "event_reward_max": float(event_rewards.max()) if len(event_rewards) else None,
    }


def check_frame_gaps(
    features: VideoFeatures, packed: PackedLatents, latents_path: Path, max_frame_gap: int
) -> None:
    """Refuse a jump of more than `max_frame_gap` between consecutive known frame numbers."""
    feature_frames = np.fromiter(features.frames, np.int64, len(features.frames))
    known = np.union1d(feature_frames, packed.frame_indices.astype(np.int64))
    jumps = np.diff(known)
    if len(jumps) and jumps.max() > max_frame_gap:
        i = int(np.argmax(jumps > max_frame_gap))
        before, after = int(known[i]), int(known[i + 1])
        holder = features.path if after in features.frames else latents_path
        raise DataError(
            f"{holder}: frame {after} is {after - before} frames after the previous known frame {before} of "
            f"this video (more than max_frame_gap = {max_frame_gap}); a wrong frame number? "
            f"(if the gap is real, raise --max-frame-gap)"
        )


def _reward_error(path: Path, frame: int, reward: float, what: str) -> DataError:
    return DataError(
        f"{path}: frame {frame}: reward {reward:.6g} ({what}) is not finite or outside float32 range "
        f"(|x| <= {FLOAT32_MAX:.4g}), the type rewards are stored in"
    )


def import_video(
    video_id: str,
    latents_path: str | Path,
    features_path: str | Path,
    action_space: dict[str, dict],
    action_keys: dict[str, str],
    reward_spec: RewardSpec,
    expected_shape: tuple[int, int, int] | None = None,
    max_frame_gap: int = DEFAULT_MAX_FRAME_GAP,
    max_carry_frames: int = DEFAULT_MAX_CARRY_FRAMES,
    max_uncovered_fraction: float = DEFAULT_MAX_UNCOVERED_FRACTION,
    allow_truncated_latents: bool = False,
) -> VideoFrames:
    """Join one video's latents and features by frame number.

    Steps: lay the features over the grid of frame numbers `first_frame..last_frame`; detect deaths;
    compute the reward per frame; place reward and death events with `carry_events` (on their
    frame, carried across a gap of at most `max_carry_frames`, or dropped and reported); read
    actions where the features entry exists.

    Truncated latent packs: if more than `max_uncovered_fraction` of the labelled frames (features
    entries) lie outside the span of the latent frames, DataError naming the latents file, unless
    `allow_truncated_latents`; then, and above TRUNCATION_WARNING_FRACTION, a warning in
    `VideoFrames.warnings` naming the video and both frame ranges.

    Deaths: a frame's dead state is its `is_dead` where the frame has that key, and the health-bar
    rule's state elsewhere; a death is each false -> true transition. So a file with `is_dead` on
    every frame uses it alone, a file without it uses the health bar alone, and in a file with
    `is_dead` on some frames only, no death on the other frames is lost (the stats count the frames
    and deaths of each kind).
    """
    latents_path = Path(latents_path)
    packed = load_packed_latents(latents_path, expected_shape)
    features = load_features(features_path)
    path = features.path
    first, last = features.first_frame, features.last_frame
    frame_index = packed.frame_indices
    outside = (frame_index < first) | (frame_index > last)
    if outside.any():
        bad = frame_index[outside]
        raise DataError(
            f"{latents_path}: latents for {len(bad)} frame(s) the features do not cover "
            f"(frames {int(bad.min())}..{int(bad.max())}; {path} covers {first}..{last})"
        )
    check_frame_gaps(features, packed, latents_path, max_frame_gap)

    size = last - first + 1
    has_entry = np.zeros(size, bool)
    gold = np.zeros(size)
    bar_visible, bar_known = np.ones(size, bool), np.zeros(size, bool)
    is_dead, is_dead_known = np.zeros(size, bool), np.zeros(size, bool)
    uses_is_dead = any("is_dead" in frame for frame in features.frames.values())
    actions_grid = {
        name: np.zeros(size, np.int64 if spec["type"] == "categorical" else bool) for name, spec in action_space.items()
    }
    reader = _FrameReader(path)

    for index, frame in features.frames.items():
        g = index - first
        has_entry[g] = True
        reader.keys_seen.update(frame)
        gold[g] = reader.number(frame, "gold_gained") or 0.0
        # Health bar: null means "no bar seen"; a missing key means "unknown" (state carried over).
        visible = reader.bar_visible(frame)
        if visible is not None:
            bar_known[g], bar_visible[g] = True, visible
        if uses_is_dead:
            dead = reader.flag(frame, "is_dead")
            if dead is not None:
                is_dead_known[g], is_dead[g] = True, dead
        for name, spec in action_space.items():
            key = action_keys[name]
            if spec["type"] == "categorical":
                value = reader.category(frame, key, spec["n"])
            else:
                value = reader.flag(frame, key)
            if value is not None:
                actions_grid[name][g] = value

    bar_visible = _forward_fill(bar_visible, bar_known, initial=True)
    bar_dead = health_bar_dead_frames(bar_visible, reward_spec.death_min_frames)
    health_bar_deaths = _onsets(bar_dead)
    deaths = _onsets(np.where(is_dead_known, is_dead, bar_dead))
    if not is_dead_known.any():
        death_rule = "health_bar"
    elif is_dead_known.all():
        death_rule = "is_dead"
    else:
        death_rule = "is_dead+health_bar"

    # Rewards are stored as float32: a reward that does not fit is an error, never an inf.
    reward_grid = reward_spec.reward(gold, deaths)
    bad = ~np.isfinite(reward_grid) | (np.abs(reward_grid) > FLOAT32_MAX)
    if bad.any():
        g = int(np.argmax(bad))
        raise _reward_error(path, first + g, float(reward_grid[g]), "gold_scale * gold_gained + death_penalty * death")

    # An event is a frame with gold or a death (both on one frame are one event, netted).
    rows = len(frame_index)
    has_latent = np.zeros(size, bool)
    has_latent[frame_index - first] = True
    event_grid = np.flatnonzero((gold != 0) | deaths)
    placed = carry_events(event_grid + first, reward_grid[event_grid], deaths[event_grid], frame_index, max_carry_frames)
    reward = placed.reward
    bad = ~np.isfinite(reward) | (np.abs(reward) > FLOAT32_MAX)
    if bad.any():
        row = int(np.argmax(bad))
        raise _reward_error(path, int(frame_index[row]), float(reward[row]), "the sum of the rewards carried onto this frame")
    death_count = placed.deaths
    coverage, warnings = latent_coverage(
        video_id, latents_path, features, frame_index, placed.report["dropped"],
        max_carry_frames, max_uncovered_fraction, allow_truncated_latents,
    )
    event_rewards = reward_grid[event_grid]

    positions = frame_index - first
    stats = {
        "frames": rows,
        "feature_frames": int(has_entry.sum()),
        "gaps": int((np.diff(frame_index) > 1).sum()),
        "frames_without_latent": int(size - rows),
        "frames_without_features": int((~has_entry[positions]).sum()),
        "actions_lost_without_latent": int((has_entry & ~has_latent).sum()),
        "death_rule": death_rule,
        "deaths": int(deaths.sum()),
        "deaths_from_is_dead": int((deaths & is_dead_known).sum()),
        "deaths_from_health_bar": int((deaths & ~is_dead_known).sum()),
        # Frames whose dead state came from the health bar in a file that has is_dead elsewhere.
        "frames_without_is_dead": int((~is_dead_known).sum()) if uses_is_dead else 0,
        "health_bar_deaths": int(health_bar_deaths.sum()),
        "events": len(event_grid),
        **carrying_stats(placed, coverage, death_count, reward_grid, reward, event_rewards),
        "gold_events": int((gold != 0).sum()),
        "missing_keys": dict(reader.missing),
        "keys_seen": sorted(reader.keys_seen),
        "header_video_id": features.header.get("video_id"),
    }
    return VideoFrames(
        video_id=video_id,
        frame_index=frame_index,
        latents=packed.latents,
        reward=reward.astype(np.float32),
        death=death_count > 0,
        actions={name: grid[positions] for name, grid in actions_grid.items()},
        has_action=has_entry[positions],
        stats=stats,
        warnings=warnings,
    )


def latent_coverage(
    video_id: str,
    latents_path: Path,
    features: VideoFeatures,
    frame_index: np.ndarray,
    dropped: dict,
    max_carry_frames: int,
    max_uncovered_fraction: float,
    allow_truncated_latents: bool,
) -> tuple[dict, list[str]]:
    """How much of a video's labels its latents cover: `(coverage stats, warnings)`.

    `frame_index (N,)`: the latent frame numbers, ascending. Raises DataError naming the latents
    file when more than `max_uncovered_fraction` of the labelled frames lie before the first or
    after the last latent frame (a truncated latent pack), unless `allow_truncated_latents`.
    """
    labelled = np.fromiter(features.frames, np.int64, len(features.frames))
    first_latent, last_latent = int(frame_index[0]), int(frame_index[-1])
    before = int((labelled < first_latent).sum())
    after = int((labelled > last_latent).sum())
    fraction = (before + after) / len(labelled)
    coverage = {
        "label_frames": len(labelled),
        "label_range": [features.first_frame, features.last_frame],
        "latent_frames": len(frame_index),
        "latent_range": [first_latent, last_latent],
        "labels_before_latents": before,
        "labels_after_latents": after,
        "uncovered_fraction": fraction,
    }
    description = (
        f"its labels ({features.path}) have {len(labelled)} frames ({features.first_frame}..{features.last_frame}) "
        f"but its latents {len(frame_index)} frames ({first_latent}..{last_latent}): {before + after} labelled "
        f"frames ({100 * fraction:.1f}%) lie outside the latents' span ({before} before, {after} after)"
    )
    lost = (
        f"{dropped['before']['events'] + dropped['after']['events']} reward/death event(s) there, reward "
        f"{dropped['before']['reward'] + dropped['after']['reward']:.6g}, "
        f"{dropped['before']['deaths'] + dropped['after']['deaths']} death(s), are dropped"
    )
    if fraction > max_uncovered_fraction and not allow_truncated_latents:
        raise DataError(
            f"{latents_path}: truncated latent pack? video '{video_id}': {description}, more than "
            f"--max-uncovered-fraction {max_uncovered_fraction:g}; {lost} if it is imported. Re-encode the video, "
            f"or pass --allow-truncated-latents to import it anyway"
        )
    warnings = []
    if before + after > max(max_carry_frames, TRUNCATION_WARNING_FRACTION * len(labelled)):
        warnings.append(
            f"video '{video_id}' ({latents_path}) may be a truncated latent pack: {description}; {lost} "
            f"(report: per_video.{video_id}.dropped)"
        )
    coverage["truncated"] = bool(warnings)
    return coverage, warnings


def find_videos(latents_dir: str | Path, features_dir: str | Path) -> tuple[list[str], list[str], list[str]]:
    """Pair `<latents_dir>/<id>.npz` with `<features_dir>/<id>/features.json`.

    Returns `(paired, without_features, without_latents)`, each a sorted list of video ids.
    """
    latents_dir, features_dir = Path(latents_dir), Path(features_dir)
    for folder, what in ((latents_dir, "latents"), (features_dir, "features")):
        if not folder.is_dir():
            raise DataError(f"{folder}: {what} directory not found")
    latent_ids = {path.stem for path in latents_dir.glob("*.npz")}
    feature_ids = {path.parent.name for path in features_dir.glob("*/features.json")}
    return (
        sorted(latent_ids & feature_ids),
        sorted(latent_ids - feature_ids),
        sorted(feature_ids - latent_ids),
    )
