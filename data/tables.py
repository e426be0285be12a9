"""Per-frame tables and event streams -> per-frame arrays aligned with latents, as a mapping file says.

Per video (docs/data.md, "Per-frame tables and event streams"):
- `<tables_dir>/<video_id>.parquet`, `.jsonl` or `.csv`: one row per frame number (the mapping's
  `table.frame_column`), strictly ascending, gaps allowed, any other columns; null (or NaN) is an unread value;
- `<events_dir>/<video_id>.jsonl` (when the mapping reads events): one JSON object per line with a time (or frame)
  field and any others;
- `<latents_dir>/<video_id>.npz`: the packed latents (`data.importers.load_packed_latents`).

Two steps. `read_labels` turns one video's table and events into labels on its grid of label frames (before any
offset): reward events per term, action values per component, the state vector. `import_table_video` then moves
each signal by its frame offset and puts it on the latent frames: rewards and deaths with
`data.importers.carry_events` (the one carrying rule: carried across at most `max_carry_frames` missing frames,
else dropped and reported), actions and state by frame number (never carried: they belong to their frame).

An unread value is unknown, never zero: a null cumulative reading defers the increase to the next frame with a
reading, a null health counts as alive, a null state value is masked, a null action reading makes the frame's
action unknown (`has_action` False). Every error is a DataError naming the file, the frame or line, the column
or field, and the mapping key that reads it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data.importers import (
    DEFAULT_MAX_CARRY_FRAMES,
    DEFAULT_MAX_FRAME_GAP,
    DEFAULT_MAX_UNCOVERED_FRACTION,
    DROP_KINDS,
    FLOAT32_MAX,
    INT32_MAX,
    VideoFeatures,
    VideoFrames,
    check_frame_gaps,
    latent_coverage,
    carry_events,
    carrying_stats,
    load_packed_latents,
)
from data.mapping import ActionComponent, Mapping, RewardTerm
from modeling_dreamer.errors import DataError

TABLE_SUFFIXES = (".parquet", ".jsonl", ".csv")

# Where an event's frame lies (`EventStream.place`).
MAPPED, BEFORE_VIDEO, AFTER_VIDEO, UNMATCHED = 0, 1, 2, 3
PLACES = {"before_video": BEFORE_VIDEO, "after_video": AFTER_VIDEO, "unmatched": UNMATCHED}

# Event times are decimal numbers written by a logger: a frame whose time equals an event's time up to this
# much float noise is "at" it.
TIME_EPSILON = 1e-9


@dataclass
class LabelTable:
    """One video's table: `frames (R,)` int64 strictly ascending, and the raw values (`None` = null) of the
    columns the mapping reads, `columns[name]` a list of R values. `line(i)` names row i in errors."""

    path: Path
    frames: np.ndarray
    columns: dict[str, list]
    available: list[str]
    first_line: int = 1  # the file line (1-based) of row 0: 2 for CSV (header), 1 for JSON Lines, 0 for Parquet

    def where(self, row: int) -> str:
        return f"frame {int(self.frames[row])}"


@dataclass
class EventStream:
    """One video's events in file order: `events` (E dicts), `lines (E,)` their line numbers,
    `frame (E,)` int64 label frame (-1 unless mapped), `place (E,)` int8 MAPPED / BEFORE_VIDEO / AFTER_VIDEO /
    UNMATCHED, `order (E,)` the indices sorted by (frame, time, line): the order in which values are held."""

    path: Path
    events: list[dict]
    lines: np.ndarray
    frame: np.ndarray
    place: np.ndarray
    order: np.ndarray


@dataclass
class VideoLabels:
    """One video's labels on its grid of label frames `first..last` (G frames), before offsets.

    `has_row (G,)`: the table has the frame. `reward_events[term] = (frames (E,) int64, values (E,) float64)`.
    `actions[name] (G,)` int64 or bool; `action_known[name] (G,)` bool (False where a column reading is null or
    the table lacks the frame; always True for event-driven components: no event is a known "no press");
    `action_events[name] (K,)` the label frames an event set (or a binary column fired). `state (G, S)` float64,
    `state_known (G, S)` bool. `stats`: table rows, null readings per column, event places.
    """

    video_id: str
    table: LabelTable
    events: EventStream | None
    first: int
    last: int
    has_row: np.ndarray
    reward_events: dict[str, tuple[np.ndarray, np.ndarray]]
    actions: dict[str, np.ndarray]
    action_known: dict[str, np.ndarray]
    action_events: dict[str, np.ndarray]
    state: np.ndarray
    state_known: np.ndarray
    stats: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class TableVideoFrames(VideoFrames):
    """`VideoFrames` plus the state vector: `state (N, S)` float32 (0 where unknown), `state_mask (N, S)` bool
    (False where the value was not read); both None when the mapping declares no state."""

    state: np.ndarray | None = None
    state_mask: np.ndarray | None = None


# --- finding files ------------------------------------------------------------------------------------------


def find_table(tables_dir: Path, video_id: str) -> Path | None:
    """`<tables_dir>/<video_id>.{parquet,jsonl,csv}`; DataError if there are several (which one is meant?)."""
    found = [tables_dir / f"{video_id}{suffix}" for suffix in TABLE_SUFFIXES if (tables_dir / f"{video_id}{suffix}").is_file()]
    if len(found) > 1:
        raise DataError(f"{found[0]}: video '{video_id}' has several tables ({', '.join(p.name for p in found)}); keep one")
    return found[0] if found else None


def find_table_videos(latents_dir: str | Path, tables_dir: str | Path) -> tuple[list[str], list[str], list[str]]:
    """Pair `<latents_dir>/<id>.npz` with a table `<tables_dir>/<id>.<suffix>`.

    Returns `(paired, without_table, without_latents)`, sorted video ids.
    """
    latents_dir, tables_dir = Path(latents_dir), Path(tables_dir)
    for folder, what in ((latents_dir, "latents"), (tables_dir, "tables")):
        if not folder.is_dir():
            raise DataError(f"{folder}: {what} directory not found")
    latent_ids = {path.stem for path in latents_dir.glob("*.npz")}
    table_ids = {path.stem for suffix in TABLE_SUFFIXES for path in tables_dir.glob(f"*{suffix}")}
    return sorted(latent_ids & table_ids), sorted(latent_ids - table_ids), sorted(table_ids - latent_ids)


# --- reading a table ----------------------------------------------------------------------------------------


def read_table(path: str | Path, mapping: Mapping) -> LabelTable:
    """Read one table (by its suffix) and validate its frame column; only the mapping's columns are kept."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: table not found")
    needed = mapping.columns_read()
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        (available, columns), first_line = _read_jsonl_table(path, needed), 1
    elif suffix in (".parquet", ".csv"):
        available, columns = _read_arrow_table(path, needed, suffix)
        first_line = 2 if suffix == ".csv" else 0
    else:
        raise DataError(f"{path}: unknown table format '{suffix}' (one of {list(TABLE_SUFFIXES)})")
    for column, key in needed.items():
        if column not in available:
            raise DataError(
                f"{path}: column '{column}' not found (read by {mapping.path}: {key}); the table has columns {available}"
            )
    raw = columns[mapping.frame_column]
    if not raw:
        raise DataError(f"{path}: the table has no rows")
    frames = np.empty(len(raw), np.int64)
    for row, value in enumerate(raw):
        number = _integral(value)
        if number is None or not 0 <= number <= INT32_MAX:
            line = f"row {row}" + (f" (line {row + first_line})" if first_line else "")
            raise DataError(
                f"{path}: {line}: frame column '{mapping.frame_column}' ({mapping.path}: table.frame_column) must be "
                f"an integer in 0..{INT32_MAX}, got {value!r}"
            )
        frames[row] = number
    steps = np.diff(frames)
    if (steps <= 0).any():
        row = int(np.argmax(steps <= 0))
        problem = "repeats" if steps[row] == 0 else "comes after"
        raise DataError(
            f"{path}: frame column '{mapping.frame_column}': frame {int(frames[row + 1])} (row {row + 1}) {problem} "
            f"frame {int(frames[row])} (row {row}); rows must be sorted by frame number, one row per frame"
        )
    return LabelTable(path, frames, {c: columns[c] for c in needed}, available, first_line)


def _read_jsonl_table(path: Path, needed: dict[str, str]) -> tuple[list[str], dict[str, list]]:
    rows = _read_jsonl(path, "one row per frame")
    available: dict[str, None] = {}
    for _, row in rows:
        available.update(dict.fromkeys(row))
    return list(available), {column: [row.get(column) for _, row in rows] for column in needed}


def _read_arrow_table(path: Path, needed: dict[str, str], suffix: str) -> tuple[list[str], dict[str, list]]:
    import pyarrow as pa

    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            available = list(pq.read_schema(path).names)
            table = pq.read_table(path, columns=[c for c in needed if c in available])
        else:
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path)
            available = list(table.column_names)
    except (pa.ArrowException, OSError, ValueError) as error:
        raise DataError(f"{path}: cannot read the table (corrupt or not {suffix[1:]}: {error})") from error
    return available, {c: table.column(c).to_pylist() for c in needed if c in available}


def _read_jsonl(path: Path, what: str) -> list[tuple[int, dict]]:
    """`[(line number, object)]` of a JSON Lines file; blank lines are skipped."""
    objects = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    value = json.loads(line)
                except (ValueError, RecursionError) as error:
                    raise DataError(f"{path}: line {number}: not valid JSON ({error})") from error
                if not isinstance(value, dict):
                    raise DataError(f"{path}: line {number}: expected a JSON object ({what}), got {line.strip()[:80]!r}")
                objects.append((number, value))
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error})") from error
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror or error})") from error
    return objects


def _integral(value: object) -> int | None:
    """An integer (or an integral float, as pandas writes integer columns with nulls), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _is_null(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


class _Columns:
    """Typed reads of a table's columns: `(values (R,), known (R,) bool)`; a null (or NaN) is unknown.

    A value of the wrong type is a DataError naming the table, the frame, the column and the mapping key.
    Counts the null readings per column in `nulls`.
    """

    def __init__(self, table: LabelTable, mapping: Mapping):
        self.table = table
        self.mapping = mapping
        self.nulls: dict[str, int] = {}

    def _values(self, column: str) -> list:
        values = self.table.columns[column]
        self.nulls[column] = sum(1 for v in values if _is_null(v))
        return values

    def error(self, row: int, column: str, key: str, expected: str, value: object) -> DataError:
        return DataError(
            f"{self.table.path}: {self.table.where(row)}: column '{column}' ({self.mapping.path}: {key}) must be "
            f"{expected}, got {value!r}"
        )

    def numbers(self, column: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        values = self._values(column)
        out, known = np.zeros(len(values)), np.zeros(len(values), bool)
        for row, value in enumerate(values):
            if _is_null(value):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
                raise self.error(row, column, key, "a finite number or null", value)
            out[row], known[row] = float(value), True
        return out, known

    def flags(self, column: str, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Booleans, or the integers 0 / 1 ("false" or 2 are refused: `bool("false")` is True)."""
        values = self._values(column)
        out, known = np.zeros(len(values), bool), np.zeros(len(values), bool)
        for row, value in enumerate(values):
            if _is_null(value):
                continue
            if isinstance(value, bool):
                out[row] = value
            elif _integral(value) in (0, 1):
                out[row] = bool(value)
            else:
                raise self.error(row, column, key, "true/false (or 0/1) or null", value)
            known[row] = True
        return out, known

    def integers(self, column: str, key: str, n: int) -> tuple[np.ndarray, np.ndarray]:
        values = self._values(column)
        out, known = np.zeros(len(values), np.int64), np.zeros(len(values), bool)
        for row, value in enumerate(values):
            if _is_null(value):
                continue
            number = _integral(value)
            if number is None or not 0 <= number < n:
                raise self.error(row, column, key, f"an integer in 0..{n - 1} or null", value)
            out[row], known[row] = number, True
        return out, known

    def is_boolean(self, column: str) -> bool:
        return any(isinstance(v, bool) for v in self.table.columns[column])


# --- reading events -----------------------------------------------------------------------------------------


def read_events(path: str | Path, mapping: Mapping, table: LabelTable, columns: "_Columns | None" = None) -> EventStream:
    """Read one event stream and map every event to a label frame (`mapping.events`, `EventTiming`).

    An event with neither a time nor a frame, or with one that is not a finite number (an integer frame), is a
    DataError naming the file and line. Events outside the table's frames are kept with their place
    (before, after, or in a gap of the table's times farther than the tolerance: unmatched). The table's time
    column is read (and checked) through `columns` when the events are mapped by it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: events file not found (the mapping {mapping.path} reads events; write an empty "
                        f"file for a video without any)")
    timing = mapping.events
    columns = columns or _Columns(table, mapping)
    # Checked even for a video without events: a time column that runs backwards is a broken table.
    by_table = _table_times(table, columns, mapping) if timing.fps is None and mapping.time_column is not None else None
    items = _read_jsonl(path, "one event per line")
    count = len(items)
    lines = np.array([number for number, _ in items], np.int64)
    frame = np.full(count, -1, np.int64)
    times = np.full(count, np.nan)
    by_time = np.zeros(count, bool)
    for i, (number, event) in enumerate(items):
        explicit = event.get(timing.frame_field) if timing.frame_field is not None else None
        if explicit is not None:
            value = _integral(explicit)
            if value is None:
                raise DataError(f"{path}: line {number}: event field '{timing.frame_field}' ({mapping.path}: "
                                f"events.frame_field) must be an integer frame number, got {explicit!r}")
            frame[i] = value
            continue
        moment = event.get(timing.time_field)
        if moment is None:
            named = f"'{timing.time_field}' (time)" + (f" nor '{timing.frame_field}' (frame)" if timing.frame_field else "")
            raise DataError(f"{path}: line {number}: event without time: it has no {named} "
                            f"({mapping.path}: events.time_field): {json.dumps(event)[:120]}")
        if isinstance(moment, bool) or not isinstance(moment, (int, float)) or not math.isfinite(float(moment)):
            raise DataError(f"{path}: line {number}: event field '{timing.time_field}' ({mapping.path}: "
                            f"events.time_field) must be a finite number, got {moment!r}")
        times[i], by_time[i] = float(moment), True
        if timing.fps is None and mapping.time_column is None:
            raise DataError(f"{path}: line {number}: event has a time but no frame field, and the mapping "
                            f"{mapping.path} gives no time -> frame rule (events.fps or table.time_column)")

    first, last = int(table.frames[0]), int(table.frames[-1])
    place = np.full(count, MAPPED, np.int8)
    if by_time.any():
        t = times[by_time]
        if timing.fps is not None:
            # The first frame at or after t; rounded first so that 0.15 s at 20 fps is frame 3, not 4.
            mapped = np.ceil(np.round((t - timing.start_time) * timing.fps, 6)).astype(np.int64)
        else:
            mapped, gap = _frames_by_time(table, by_table, t, timing.tolerance)
            place[np.flatnonzero(by_time)[gap]] = UNMATCHED
        frame[by_time] = mapped
    outside = place == MAPPED
    place[outside & (frame < first)] = BEFORE_VIDEO
    place[outside & (frame > last)] = AFTER_VIDEO
    frame[place != MAPPED] = -1
    order = np.lexsort((lines, np.where(by_time, times, -np.inf), frame))
    return EventStream(path, [event for _, event in items], lines, frame, place, order)


def _table_times(table: LabelTable, columns: "_Columns", mapping: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """`(rows (K,), times (K,))`: the table rows that have a time, and their times (non-decreasing, else
    DataError naming the table and both frames)."""
    column, key = mapping.time_column, "table.time_column"
    values, known = columns.numbers(column, key)
    rows = np.flatnonzero(known)
    if len(rows) == 0:
        raise DataError(f"{table.path}: time column '{column}' ({mapping.path}: {key}) has no reading")
    frame_times = values[rows]
    back = np.diff(frame_times) < 0
    if back.any():
        i = int(np.argmax(back))
        raise DataError(
            f"{table.path}: time column '{column}' ({mapping.path}: {key}) goes back in time: {float(frame_times[i + 1])!r} at "
            f"{table.where(rows[i + 1])} after {float(frame_times[i])!r} at {table.where(rows[i])}"
        )
    return rows, frame_times


def _frames_by_time(table: LabelTable, by_table: tuple[np.ndarray, np.ndarray], t: np.ndarray,
                    tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """`(frames (K,), gap (K,) bool)`: the first table frame whose time is at or after each event time `t (K,)`,
    and whether none is within `tolerance` (then the frame is before/after the video or -1 in a gap).
    `by_table`: `_table_times`."""
    rows, frame_times = by_table
    index = np.searchsorted(frame_times, t - TIME_EPSILON, side="left")
    inside = index < len(rows)
    frames = np.where(inside, table.frames[rows[np.minimum(index, len(rows) - 1)]], int(table.frames[-1]) + 1)
    late = inside & (frame_times[np.minimum(index, len(rows) - 1)] - t >= tolerance)
    # Too far before the first frame's time: before the video; elsewhere: a gap in the table's times.
    frames = np.where(late & (index == 0), int(table.frames[0]) - 1, frames)
    gap = late & (index > 0)
    return frames, gap


def _event_number(stream: EventStream, index: int, name: str, key: str, mapping: Mapping) -> float:
    value = stream.events[index].get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise DataError(f"{stream.path}: line {int(stream.lines[index])}: event field '{name}' ({mapping.path}: {key}) "
                        f"must be a finite number, got {value!r}")
    return float(value)


# --- labels of one video ------------------------------------------------------------------------------------


def read_labels(video_id: str, table_path: str | Path, events_path: str | Path | None, mapping: Mapping,
                max_frame_gap: int = DEFAULT_MAX_FRAME_GAP) -> VideoLabels:
    """One video's table and events -> `VideoLabels` on its label frames (no latents, no offsets).

    A jump of more than `max_frame_gap` between consecutive table frames is refused before the grid of frames
    is allocated: one wrong frame number (2**31 - 1) would otherwise ask for gigabytes.
    """
    table = read_table(table_path, mapping)
    jumps = np.diff(table.frames)
    if len(jumps) and jumps.max() > max_frame_gap:
        i = int(np.argmax(jumps > max_frame_gap))
        raise DataError(
            f"{table.path}: frame {int(table.frames[i + 1])} is {int(jumps[i])} frames after the previous row's frame "
            f"{int(table.frames[i])} (more than max_frame_gap = {max_frame_gap}); a wrong frame number? "
            f"(if the gap is real, raise --max-frame-gap)"
        )
    columns = _Columns(table, mapping)
    stream = None
    if mapping.uses_events():
        if events_path is None:
            raise DataError(f"{mapping.path}: the mapping reads events; give --events-dir")
        stream = read_events(events_path, mapping, table, columns)
    first, last = int(table.frames[0]), int(table.frames[-1])
    size = last - first + 1
    rows = table.frames - first
    has_row = np.zeros(size, bool)
    has_row[rows] = True
    matched: dict[str, np.ndarray] = {}
    details: dict[str, dict] = {}

    def events_of(signal: str, match) -> np.ndarray:
        """Indices (in hold order) of the mapped events matching `match`; counts the outside ones."""
        hits = np.array([i for i in stream.order if match.matches(stream.events[i])], np.int64)
        matched[signal] = hits
        return hits[stream.place[hits] == MAPPED] if len(hits) else hits

    reward_events = {}
    for name, term in mapping.rewards.items():
        reward_events[name] = _term_events(term, table, stream, columns, mapping, size, first,
                                           events_of(f"rewards.{name}", term.match) if term.match is not None else None)
    actions, known, fired = {}, {}, {}
    for name, component in mapping.actions.items():
        hits = events_of(f"actions.{name}", component.match) if component.from_events else None
        actions[name], known[name], fired[name], details[name] = _component_values(
            component, table, stream, columns, mapping, size, first, hits
        )
    state = np.zeros((size, len(mapping.state)))
    state_known = np.zeros((size, len(mapping.state)), bool)
    for j, (name, entry) in enumerate(mapping.state.items()):
        values, ok = columns.numbers(entry.column, f"state.{name}.column")
        if entry.divide_by is not None:
            divisor, divisor_ok = columns.numbers(entry.divide_by, f"state.{name}.divide_by")
            ok = ok & divisor_ok & (divisor != 0)
            values = np.divide(values, divisor, out=np.zeros_like(values), where=ok)
        values = values * entry.scale
        too_big = ok & (np.abs(values) > FLOAT32_MAX)
        if too_big.any():
            row = int(np.argmax(too_big))
            raise DataError(f"{table.path}: {table.where(row)}: state '{name}' ({mapping.path}: state.{name}) is "
                            f"{values[row]:.6g}, beyond float32 (the stored type)")
        state[rows, j], state_known[rows, j] = np.where(ok, values, 0.0), ok

    event_stats = None
    if stream is not None:
        event_stats = {"read": len(stream.events), "mapped": int((stream.place == MAPPED).sum()),
                       **{kind: int((stream.place == code).sum()) for kind, code in PLACES.items()}}
    signal_outside = {signal: _places(stream, hits) for signal, hits in matched.items()}
    stats = {
        "table": str(table.path),
        "table_rows": len(table.frames),
        "label_range": [first, last],
        "frames_without_table": int(size - len(table.frames)),
        "null_readings": dict(sorted(columns.nulls.items())),
        "events": event_stats,
        "signal_events": signal_outside,
        "action_details": details,
    }
    warnings = [
        f"video '{video_id}': column '{column}' of {table.path} is null on all {len(table.frames)} rows "
        f"(read by {mapping.columns_read()[column]}); its signal is unknown throughout"
        for column, nulls in sorted(columns.nulls.items()) if nulls == len(table.frames)
    ]
    return VideoLabels(video_id, table, stream, first, last, has_row, reward_events, actions, known, fired,
                       state, state_known, stats, warnings)


def _places(stream: EventStream | None, hits: np.ndarray) -> dict:
    """How many of a signal's matched events are in the video and outside it."""
    if stream is None:
        return {}
    places = stream.place[hits] if len(hits) else np.zeros(0, np.int8)
    return {"matched": int(len(hits)), "mapped": int((places == MAPPED).sum()),
            **{kind: int((places == code).sum()) for kind, code in PLACES.items()}}


def _term_events(term: RewardTerm, table: LabelTable, stream: EventStream | None, columns: _Columns, mapping: Mapping,
                 size: int, first: int, hits: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """`(label frames (E,) int64, rewards (E,) float64)` of one reward term, before its offset."""
    where = f"rewards.{term.name}"
    if term.kind == "increase":
        values, known = columns.numbers(term.column, f"{where}.column")
        read = np.flatnonzero(known)
        # The increase since the previous reading lands on the frame of the new reading: an unread value
        # (null, or a frame the table lacks) defers it, never drops it.
        rise = np.diff(values[read])
        counted = (rise > 0) & (rise >= term.min_increase)
        frames = table.frames[read[1:][counted]]
        return frames.astype(np.int64), term.scale * rise[counted]
    if term.kind == "event":
        frames = stream.frame[hits] if len(hits) else np.zeros(0, np.int64)
        amounts = np.full(len(hits), term.value)
        if term.value_field is not None:
            amounts *= np.array([_event_number(stream, i, term.value_field, f"{where}.value_field", mapping) for i in hits])
        return frames.astype(np.int64), amounts
    # death: alive at t-1, dead for at least min_frames frames from t; unread (null, no row) counts as alive.
    key = f"{where}.column"
    if term.dead_at_or_below is None and term.dead_at_or_above is None:
        if not columns.is_boolean(term.column):
            raise DataError(f"{table.path}: column '{term.column}' ({mapping.path}: {key}) is not boolean; give "
                            f"{where}.dead_at_or_below (or dead_at_or_above) to say which values are dead")
        dead_rows, known = columns.flags(term.column, key)
    else:
        values, known = columns.numbers(term.column, key)
        dead_rows = values <= term.dead_at_or_below if term.dead_at_or_below is not None else values >= term.dead_at_or_above
    dead = np.zeros(size, bool)
    dead[(table.frames - first)[known]] = dead_rows[known]
    k = term.min_frames
    if size <= k:
        return np.zeros(0, np.int64), np.zeros(0)
    run = np.concatenate([[0], np.cumsum(dead)])
    t = np.arange(1, size - k + 1)
    onset = ~dead[t - 1] & (run[t + k] - run[t] == k)
    frames = t[onset] + first
    return frames.astype(np.int64), np.full(len(frames), term.penalty)


def _component_values(component: ActionComponent, table: LabelTable, stream: EventStream | None, columns: _Columns,
                      mapping: Mapping, size: int, first: int, hits: np.ndarray | None):
    """`(values (G,), known (G,) bool, event frames (K,), stats)` of one action component on the label frames."""
    where = f"actions.{component.name}"
    rows = table.frames - first
    binary = component.kind == "binary"
    values = np.zeros(size, bool if binary else np.int64)
    stats: dict = {}
    if not component.from_events:
        known = np.zeros(size, bool)
        if binary:
            read, ok = columns.flags(component.column, f"{where}.column")
        elif component.grid is not None:
            grid = component.grid
            x, x_ok = columns.numbers(grid.x, f"{where}.grid.x")
            y, y_ok = columns.numbers(grid.y, f"{where}.grid.y")
            ok = x_ok & y_ok
            read = np.zeros(len(ok), np.int64)
            read[ok], stats["clipped"] = grid.bin(x[ok], y[ok])
        else:
            read, ok = columns.integers(component.column, f"{where}.column", component.n)
        values[rows[ok]] = read[ok]
        known[rows] = ok
        fired = np.flatnonzero(values != 0) + first
        return values, known, fired.astype(np.int64), stats

    known = np.ones(size, bool)
    frames = stream.frame[hits] if len(hits) else np.zeros(0, np.int64)
    fired = np.unique(frames)
    stats["collisions"] = int(len(frames) - len(fired))
    if binary:
        values[fired - first] = True
        return values, known, fired, stats
    if component.grid is not None:
        grid = component.grid
        x = np.array([_event_number(stream, i, grid.x, f"{where}.grid.x", mapping) for i in hits])
        y = np.array([_event_number(stream, i, grid.y, f"{where}.grid.y", mapping) for i in hits])
        classes, stats["clipped"] = grid.bin(x, y) if len(hits) else (np.zeros(0, np.int64), 0)
    else:
        classes = np.zeros(len(hits), np.int64)
        for j, i in enumerate(hits):
            value = _integral(stream.events[i].get(component.field))
            if value is None or not 1 <= value < component.n:
                raise DataError(
                    f"{stream.path}: line {int(stream.lines[i])}: event field '{component.field}' ({mapping.path}: "
                    f"{where}.field) must be an integer in 1..{component.n - 1} (0 is the frame without an event), "
                    f"got {stream.events[i].get(component.field)!r}"
                )
            classes[j] = value
    # `hits` are in hold order (frame, time, line): on a frame with several events the last one is kept.
    last_of_frame = np.append(frames[1:] != frames[:-1], True) if len(frames) else np.zeros(0, bool)
    values[frames[last_of_frame] - first] = classes[last_of_frame]
    if component.hold and len(frames):
        set_at = np.zeros(size, bool)
        set_at[frames - first] = True
        last_set = np.maximum.accumulate(np.where(set_at, np.arange(size), -1))
        values = np.where(last_set >= 0, values[np.maximum(last_set, 0)], 0)
    return values, known, fired, stats


# --- one video onto its latents -----------------------------------------------------------------------------


def shift_rows(frame_index: np.ndarray, first: int, size: int, offset: int) -> tuple[np.ndarray, np.ndarray]:
    """`(source (N,), valid (N,))`: the label-grid position each latent frame reads when a signal is moved by
    `offset` frames (frame t shows label frame t - offset), and whether that label frame exists."""
    source = frame_index.astype(np.int64) - offset - first
    valid = (source >= 0) & (source < size)
    return np.clip(source, 0, size - 1), valid


def import_table_video(
    video_id: str,
    latents_path: str | Path,
    table_path: str | Path,
    events_path: str | Path | None,
    mapping: Mapping,
    expected_shape: tuple[int, int, int] | None = None,
    max_frame_gap: int = DEFAULT_MAX_FRAME_GAP,
    max_carry_frames: int = DEFAULT_MAX_CARRY_FRAMES,
    max_uncovered_fraction: float = DEFAULT_MAX_UNCOVERED_FRACTION,
    allow_truncated_latents: bool = False,
) -> tuple[TableVideoFrames, VideoLabels]:
    """Join one video's latents, table and events by frame number, as `mapping` says.

    Rewards: each term's events move by its offset, then all terms' events are placed with `carry_events`
    (on their frame, carried across at most `max_carry_frames` missing frames, or dropped before the first /
    after the last latent frame / in a longer gap, reported per term). Actions and the state vector: the latent
    frame t takes the label of frame t - offset (not carried). A truncated latent pack (more than
    `max_uncovered_fraction` of the table's frames outside the latents' span) is a DataError naming the latents
    file unless `allow_truncated_latents`, and a warning above 1% (the rule of `data.importers`).
    Returns the frames and the labels (for the timing diagnostic).
    """
    latents_path = Path(latents_path)
    packed = load_packed_latents(latents_path, expected_shape)
    labels = read_labels(video_id, table_path, events_path, mapping, max_frame_gap)
    table = labels.table
    first, last, size = labels.first, labels.last, labels.last - labels.first + 1
    frame_index = packed.frame_indices
    outside = (frame_index < first) | (frame_index > last)
    if outside.any():
        bad = frame_index[outside]
        raise DataError(
            f"{latents_path}: latents for {len(bad)} frame(s) the table does not cover "
            f"(frames {int(bad.min())}..{int(bad.max())}; {table.path} covers {first}..{last})"
        )
    # The rules of the features path, applied to the table's frames (the labelled frames).
    as_features = VideoFeatures(table.path, {}, dict.fromkeys(table.frames.tolist()), first, last)
    check_frame_gaps(as_features, packed, latents_path, max_frame_gap)

    # Rewards and deaths: one event per term and frame, moved by the term's offset, then carried.
    names = list(mapping.rewards)
    parts = [(labels.reward_events[n][0] + mapping.rewards[n].offset, labels.reward_events[n][1], j) for j, n in enumerate(names)]
    frames = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    rewards = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
    term = np.concatenate([np.full(len(p[0]), p[2]) for p in parts]) if parts else np.zeros(0, np.int64)
    is_death = np.array([mapping.rewards[n].kind == "death" for n in names], bool)[term] if parts else np.zeros(0, bool)
    bad = ~np.isfinite(rewards) | (np.abs(rewards) > FLOAT32_MAX)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(f"{table.path}: frame {int(frames[i] - mapping.rewards[names[term[i]]].offset)}: reward "
                        f"{rewards[i]:.6g} of term '{names[term[i]]}' ({mapping.path}: rewards.{names[term[i]]}) is "
                        f"beyond float32 (the stored type)")
    placed = carry_events(frames, rewards, is_death, frame_index, max_carry_frames)
    reward = placed.reward
    bad = ~np.isfinite(reward) | (np.abs(reward) > FLOAT32_MAX)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(f"{table.path}: frame {int(frame_index[row])}: the rewards carried onto this frame sum to "
                        f"{reward[row]:.6g}, beyond float32 (the stored type)")
    coverage, warnings = latent_coverage(video_id, latents_path, as_features, frame_index, placed.report["dropped"],
                                          max_carry_frames, max_uncovered_fraction, allow_truncated_latents)

    # Actions: by frame number after the offset; never carried.
    rows = len(frame_index)
    latent_set = np.zeros(size, bool)
    latent_set[frame_index - first] = True
    has_action = labels.has_row[frame_index - first].copy()
    actions, action_stats = {}, {}
    for name, component in mapping.actions.items():
        source, valid = shift_rows(frame_index, first, size, component.offset)
        values = np.where(valid, labels.actions[name][source], 0).astype(labels.actions[name].dtype)
        known = np.where(valid, labels.action_known[name][source], component.from_events)
        has_action &= known
        actions[name] = values
        moved = labels.action_events[name] + component.offset
        landed = (moved >= first) & (moved <= last)
        landed[landed] = latent_set[moved[landed] - first]
        action_stats[name] = {
            "kind": component.kind, "role": component.role, "offset": component.offset,
            "events": int(len(moved)), "on_latent_frames": int(landed.sum()),
            "lost_without_latent": int((~landed).sum()), "nonzero_frames": int((values != 0).sum()),
            "unknown_frames": int((~known).sum()), **labels.stats["action_details"].get(name, {}),
        }
        if component.from_events:
            action_stats[name]["outside_video"] = _outside(labels.stats["signal_events"][f"actions.{name}"])

    state = state_mask = None
    if mapping.state:
        state = np.zeros((rows, len(mapping.state)), np.float32)
        state_mask = np.zeros((rows, len(mapping.state)), bool)
        for j, entry in enumerate(mapping.state.values()):
            source, valid = shift_rows(frame_index, first, size, entry.offset)
            state_mask[:, j] = valid & labels.state_known[source, j]
            state[:, j] = np.where(state_mask[:, j], labels.state[source, j], 0.0)

    terms = {}
    for j, name in enumerate(names):
        spec = mapping.rewards[name]
        mine = term == j
        terms[name] = {"kind": spec.kind, "offset": spec.offset, **_fates(placed.fate[mine], rewards[mine])}
        if spec.kind == "death":
            terms[name]["deaths"] = int(mine.sum())
        if spec.match is not None:
            terms[name]["outside_video"] = _outside(labels.stats["signal_events"][f"rewards.{name}"])
    death_count = placed.deaths
    stats = {
        "frames": rows,
        "table_rows": labels.stats["table_rows"],
        "label_range": labels.stats["label_range"],
        "gaps": int((np.diff(frame_index) > 1).sum()),
        "frames_without_latent": int(size - rows),
        "frames_without_table": int((~labels.has_row[frame_index - first]).sum()),
        "frames_without_action": int((~has_action).sum()),
        "null_readings": labels.stats["null_readings"],
        "events": labels.stats["events"],
        "deaths": int(is_death.sum()),
        "deaths_kept": int(death_count.sum()),
        "events_total": int(len(frames)),
        **carrying_stats(placed, coverage, death_count, rewards, reward, rewards),
        "reward_terms": terms,
        "actions": action_stats,
        "state_known_fraction": {name: float(state_mask[:, j].mean()) for j, name in enumerate(mapping.state)}
        if state_mask is not None else {},
    }
    video = TableVideoFrames(
        video_id=video_id,
        frame_index=frame_index,
        latents=packed.latents,
        reward=reward.astype(np.float32),
        death=death_count > 0,
        actions=actions,
        has_action=has_action,
        stats=stats,
        warnings=labels.warnings + warnings,
        state=state,
        state_mask=state_mask,
    )
    return video, labels


def _outside(places: dict) -> dict:
    return {kind: places.get(kind, 0) for kind in PLACES}


def _fates(fate: np.ndarray, rewards: np.ndarray) -> dict:
    """A term's events by where they went: `events`, `total`, `kept`, `carried`, `dropped` (by kind)."""
    from data.importers import CARRIED, ON_FRAME

    def tally(mask: np.ndarray) -> dict:
        return {"events": int(mask.sum()), "reward": float(rewards[mask].sum())}

    dropped = (fate != ON_FRAME) & (fate != CARRIED)
    return {
        "events": int(len(fate)),
        "total": float(rewards.sum()),
        "kept": tally((fate == ON_FRAME) | (fate == CARRIED)),
        "carried": tally(fate == CARRIED),
        "dropped": {**tally(dropped), **{kind: tally(fate == code) for kind, code in DROP_KINDS.items()}},
    }


def timing_signals(labels: VideoLabels, mapping: Mapping) -> dict[str, np.ndarray]:
    """The label frames (before offsets) of each signal the timing diagnostic scores: every reward term
    (`rewards.<name>`: the frames of its events) and every binary component (`actions.<name>`: the frames it
    fires on). `{signal: (K,) int64 unique frames}`."""
    signals = {f"rewards.{name}": np.unique(frames) for name, (frames, _) in labels.reward_events.items()}
    for name, component in mapping.actions.items():
        if component.kind == "binary":
            signals[f"actions.{name}"] = np.unique(labels.action_events[name])
    return signals
