"""The mapping file: how per-frame tables and event streams become rewards, actions and a state vector.

`python -m data.prepare --tables-dir T [--events-dir E] --mapping MAP.yaml ...` reads one YAML (or JSON) file
that declares, for data read from a game engine (docs/data.md, "Per-frame tables and event streams"):

- `table`: which column holds the frame number (and optionally each frame's time);
- `events`: how an event's time (or frame field) becomes a frame number;
- `rewards`: named reward terms (`increase` of a cumulative column, `event` times a value, `death` from a
  state column), each with a frame `offset`;
- `actions`: named action components (`binary`, `categorical`, binned `grid` cells, held values), each with a
  `role` (`both`, `input`, `target`) and an `offset`;
- `state`: an optional per-frame state vector of named, scaled columns.

`load_mapping(path)` validates every key and returns a `Mapping`; every error is a `DataError` naming the
file and the key (`recipes/x.yaml: rewards.gold.scale: must be a finite number, got 'a'`). The mapping knows
no files of the videos: `data.tables` applies it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modeling_dreamer.errors import DataError

MAPPING_VERSION = 1
REWARD_KINDS = ("increase", "event", "death")
# The keys each kind of reward term reads (what `Mapping.to_json` records of it).
REWARD_KEYS = {
    "increase": ("kind", "offset", "column", "scale", "min_increase"),
    "event": ("kind", "offset", "match", "value", "value_field"),
    "death": ("kind", "offset", "column", "dead_at_or_below", "dead_at_or_above", "min_frames", "penalty"),
}
ACTION_KINDS = ("binary", "categorical")
ROLES = ("both", "input", "target")


@dataclass(frozen=True)
class EventFilter:
    """Which events a signal reads: every `field` of `accepts` must hold one of its values (`==`)."""

    accepts: dict[str, tuple]

    def matches(self, event: dict) -> bool:
        return all(event.get(name) in values for name, values in self.accepts.items())

    def to_json(self) -> dict:
        return {name: list(values) if len(values) > 1 else values[0] for name, values in self.accepts.items()}


@dataclass(frozen=True)
class EventTiming:
    """How an event becomes a frame number (`data.tables.map_events`).

    An event with `frame_field` (non-null) names its frame directly. Otherwise its `time_field` is mapped:
    with `fps`, to frame `ceil((time - start_time) * fps)` (the first frame at or after it); else through the
    table's time column, to the first table frame whose time is at or after the event's time, if that frame's
    time is less than `tolerance` later (else the event falls in a gap of the table and is counted as
    unmatched).
    """

    time_field: str = "time"
    frame_field: str | None = None
    tolerance: float | None = None
    fps: float | None = None
    start_time: float = 0.0


@dataclass(frozen=True)
class GridSpec:
    """Continuous `(x, y)` values binned into `columns x rows` cells over `x_range x y_range`.

    Classes are row-major cells, after a no-op class 0 when `noop` (the model decodes a class back to the
    cell's centre with `modeling_dreamer.action_space.decode_value` and `meaning()`). A value outside its
    range is clipped into the border cell (and counted).
    """

    x: str
    y: str
    columns: int
    rows: int
    x_range: tuple[float, float] = (0.0, 1.0)
    y_range: tuple[float, float] = (0.0, 1.0)
    noop: bool = True

    @property
    def classes(self) -> int:
        return self.columns * self.rows + int(self.noop)

    def bin(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, int]:
        """`(classes (K,) int64, clipped)`: the class of each point `x (K,)`, `y (K,)` and how many points lay
        outside the ranges. The upper edge belongs to the last cell."""
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        fx, fy = (x - x0) / (x1 - x0), (y - y0) / (y1 - y0)
        clipped = int(((fx < 0) | (fx > 1) | (fy < 0) | (fy > 1)).sum())
        column = np.clip(np.floor(fx * self.columns), 0, self.columns - 1).astype(np.int64)
        row = np.clip(np.floor(fy * self.rows), 0, self.rows - 1).astype(np.int64)
        return row * self.columns + column + int(self.noop), clipped

    def meaning(self) -> dict:
        """The action space's `meaning` of this component (`decode_value` reads it)."""
        return {"kind": "grid", "columns": self.columns, "rows": self.rows, "x": list(self.x_range),
                "y": list(self.y_range), "noop": self.noop}


@dataclass(frozen=True)
class RewardTerm:
    """One reward term; `reward[t]` is the sum of all terms on frame t (after offsets and carrying).

    - `increase`: `scale * (column[t] - column[previous reading])` on each frame whose reading rose by more
      than 0 and at least `min_increase` (smaller increases, e.g. passive one-gold ticks, are dropped; a
      decrease is never a reward). A null reading is unknown: the increase counts on the next frame with one.
    - `event`: `value * (event[value_field] if value_field else 1)` for each event matching `match`.
    - `death`: `penalty` on each death onset: alive at t-1 and dead for at least `min_frames` frames from t,
      dead being `column <= dead_at_or_below` (or `>= dead_at_or_above`, or a true boolean column); a null
      reading counts as alive.
    `offset` moves the term's events from label frame f to frame f + offset, before carrying.
    """

    name: str
    kind: str
    offset: int = 0
    column: str | None = None
    scale: float = 1.0
    min_increase: float = 0.0
    match: EventFilter | None = None
    value: float = 1.0
    value_field: str | None = None
    dead_at_or_below: float | None = None
    dead_at_or_above: float | None = None
    min_frames: int = 3
    penalty: float = -1.0


@dataclass(frozen=True)
class ActionComponent:
    """One action component: a dataset column and an entry of the action space (`spec()`).

    Sources: `binary` fires on the frame of each event matching `match`, or reads a boolean `column`;
    `categorical` reads an integer `column` (0..n-1), an integer event `field` (1..n-1; frames without an
    event get 0), or bins `grid` points (event fields with `match`, table columns without). With `hold`,
    an event-driven value stays until the next event (class 0 before the first). `role` says who uses it;
    `offset` moves it from label frame f to frame f + offset.
    """

    name: str
    kind: str
    role: str = "both"
    offset: int = 0
    column: str | None = None
    match: EventFilter | None = None
    field: str | None = None
    n: int | None = None
    grid: GridSpec | None = None
    hold: bool = False
    held_from: dict[str, str] | None = None  # {"flag": binary target, "value": target}: how an agent sets it

    @property
    def from_events(self) -> bool:
        return self.match is not None

    def spec(self) -> dict:
        """`{"type": ..., ["n": ...,] "role": ..., ["meaning": ...]}` (`modeling_dreamer.action_space`)."""
        if self.kind == "binary":
            return {"type": "binary", "role": self.role}
        spec: dict[str, Any] = {"type": "categorical", "n": self.num_classes, "role": self.role}
        if self.grid is not None:
            spec["meaning"] = self.grid.meaning()
        if self.held_from is not None:
            spec["held"] = dict(self.held_from)
        return spec

    @property
    def num_classes(self) -> int:
        return self.grid.classes if self.grid is not None else int(self.n)

    def describe_source(self) -> str:
        """Where the values come from, in words (the schema's `action_keys` entry of the component)."""
        if self.from_events:
            match = " ".join(f"{k}={'|'.join(map(str, v))}" for k, v in self.match.accepts.items())
            source = f"events {match}"
            if self.grid is not None:
                source += f" -> grid cell of ({self.grid.x}, {self.grid.y})"
            elif self.field is not None:
                source += f" -> field {self.field}"
            return source + (" (held)" if self.hold else "")
        if self.grid is not None:
            return f"columns ({self.grid.x}, {self.grid.y}) -> grid cell"
        return f"column {self.column}"

    def columns_read(self) -> list[str]:
        """Table columns this component reads (none when it reads events)."""
        if self.from_events:
            return []
        if self.grid is not None:
            return [self.grid.x, self.grid.y]
        return [self.column]


@dataclass(frozen=True)
class StateColumn:
    """One entry of the state vector: `column / divide_by * scale` (unknown where a reading is null, or the
    divisor null or 0), read at label frame t - offset for frame t."""

    name: str
    column: str
    divide_by: str | None = None
    scale: float = 1.0
    offset: int = 0


@dataclass
class Mapping:
    """A validated mapping file (`load_mapping`). Dicts keep the file's order (the action space's order)."""

    path: Path
    frame_column: str
    time_column: str | None = None
    events: EventTiming | None = None
    rewards: dict[str, RewardTerm] = field(default_factory=dict)
    actions: dict[str, ActionComponent] = field(default_factory=dict)
    state: dict[str, StateColumn] = field(default_factory=dict)

    def action_space(self) -> dict[str, dict]:
        return {name: component.spec() for name, component in self.actions.items()}

    @property
    def state_names(self) -> list[str]:
        return list(self.state)

    def uses_events(self) -> bool:
        return any(t.match is not None for t in self.rewards.values()) or any(
            c.from_events for c in self.actions.values()
        )

    def columns_read(self) -> dict[str, str]:
        """`{table column: the first mapping key that reads it}`, the frame column first."""
        read = {self.frame_column: "table.frame_column"}
        if self.time_column is not None and (self.events is None or self.events.fps is None):
            read.setdefault(self.time_column, "table.time_column")
        for name, term in self.rewards.items():
            if term.column is not None:
                read.setdefault(term.column, f"rewards.{name}.column")
        for name, component in self.actions.items():
            keys = ("grid.x", "grid.y") if component.grid is not None else ("column",)
            for key, column in zip(keys, component.columns_read()):
                read.setdefault(column, f"actions.{name}.{key}")
        for name, entry in self.state.items():
            read.setdefault(entry.column, f"state.{name}.column")
            if entry.divide_by is not None:
                read.setdefault(entry.divide_by, f"state.{name}.divide_by")
        return read

    def to_json(self) -> dict:
        """The mapping as plain JSON (recorded in the dataset's schema): every key with its value or default."""

        def clean(value: Any) -> Any:
            if isinstance(value, EventFilter):
                return value.to_json()
            if isinstance(value, RewardTerm):
                return {k: clean(getattr(value, k)) for k in REWARD_KEYS[value.kind]}
            if isinstance(value, ActionComponent):  # the keys this component uses (unused ones are None)
                return {k: clean(getattr(value, k)) for k in value.__dataclass_fields__
                        if k != "name" and (getattr(value, k) is not None or k in ("role", "offset"))}
            if is_dataclass(value):  # an entry's name is its key in the section
                return {k: clean(getattr(value, k)) for k in value.__dataclass_fields__ if k != "name"}
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            return value

        def entries(items: dict) -> dict:
            return {name: clean(item) for name, item in items.items()}

        return {
            "version": MAPPING_VERSION,
            "file": self.path.name,  # the name only: the schema travels with the dataset, local paths do not
            "table": {"frame_column": self.frame_column, "time_column": self.time_column},
            "events": clean(self.events),
            "rewards": entries(self.rewards),
            "actions": entries(self.actions),
            "state": entries(self.state),
        }


class _Checker:
    """Validates one mapping file; every error names the file and the key path (`rewards.gold.scale`)."""

    def __init__(self, path: Path):
        self.path = path

    def error(self, where: str, problem: str) -> DataError:
        return DataError(f"{self.path}: {where}: {problem}")

    def keys(self, value: Any, where: str, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict:
        if not isinstance(value, dict):
            raise self.error(where, f"expected a mapping of keys, got {value!r}")
        for key in value:
            if key not in allowed:
                raise self.error(f"{where}.{key}" if where else str(key),
                                 f"unknown key (expected one of {list(allowed)})")
        for key in required:
            if value.get(key) is None:
                raise self.error(f"{where}.{key}" if where else key, "required key is missing")
        return value

    def name(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.error(where, f"must be a non-empty string (a column or field name), got {value!r}")
        return value

    def number(self, value: Any, where: str, positive: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
            raise self.error(where, f"must be a finite number, got {value!r}")
        if positive and value <= 0:
            raise self.error(where, f"must be > 0, got {value!r}")
        return float(value)

    def integer(self, value: Any, where: str, minimum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(where, f"must be an integer, got {value!r}")
        if minimum is not None and value < minimum:
            raise self.error(where, f"must be >= {minimum}, got {value!r}")
        return int(value)

    def flag(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(where, f"must be true or false, got {value!r}")
        return value

    def range(self, value: Any, where: str) -> tuple[float, float]:
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise self.error(where, f"must be a list [low, high], got {value!r}")
        low, high = (self.number(v, f"{where}[{i}]") for i, v in enumerate(value))
        if not low < high:
            raise self.error(where, f"low must be < high, got {value!r}")
        return low, high

    def match(self, value: Any, where: str) -> EventFilter:
        if not isinstance(value, dict) or not value:
            raise self.error(where, f"must be a non-empty mapping of event field -> value (or list of values), got {value!r}")
        accepts = {}
        for name, wanted in value.items():
            self.name(name, where)
            options = wanted if isinstance(wanted, list) else [wanted]
            if not options:
                raise self.error(f"{where}.{name}", "an empty list matches no event")
            for option in options:
                if not isinstance(option, (str, int, float, bool)):
                    raise self.error(f"{where}.{name}", f"must be a string, number or boolean (or a list of them), got {wanted!r}")
            accepts[name] = tuple(options)
        return EventFilter(accepts)

    def offset(self, spec: dict, where: str) -> int:
        return self.integer(spec.get("offset", 0), f"{where}.offset")


def load_mapping(path: str | Path) -> Mapping:
    """Read and validate a mapping file (YAML or JSON; docs/data.md lists every key and default)."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: mapping file not found")
    try:
        document = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: not a valid YAML mapping file ({error})") from error
    except OSError as error:
        raise DataError(f"{path}: cannot read the mapping file ({error.strerror or error})") from error
    return parse_mapping(document, path)


def parse_mapping(document: Any, path: str | Path = "<mapping>") -> Mapping:
    """Validate a mapping already read into Python objects (`path` names it in errors)."""
    check = _Checker(Path(path))
    top = check.keys(document, "", ("version", "table", "events", "rewards", "actions", "state"), ("table", "actions"))
    version = top.get("version", MAPPING_VERSION)
    if version != MAPPING_VERSION:
        raise check.error("version", f"this data.prepare reads mapping version {MAPPING_VERSION}, got {version!r}")
    table = check.keys(top["table"], "table", ("frame_column", "time_column"), ("frame_column",))
    frame_column = check.name(table["frame_column"], "table.frame_column")
    time_column = check.name(table["time_column"], "table.time_column") if table.get("time_column") is not None else None

    events = None
    if top.get("events") is not None:
        events = _parse_events(check, top["events"], time_column)
    rewards = {}
    for name, spec in _named(check, top.get("rewards") or {}, "rewards").items():
        rewards[name] = _parse_reward(check, name, spec)
    actions = {}
    for name, spec in _named(check, top["actions"], "actions").items():
        actions[name] = _parse_action(check, name, spec)
    if not actions:
        raise check.error("actions", "declare at least one action component")
    state = {}
    for name, spec in _named(check, top.get("state") or {}, "state").items():
        where = f"state.{name}"
        spec = check.keys(spec, where, ("column", "divide_by", "scale", "offset"), ("column",))
        state[name] = StateColumn(
            name=name,
            column=check.name(spec["column"], f"{where}.column"),
            divide_by=check.name(spec["divide_by"], f"{where}.divide_by") if spec.get("divide_by") is not None else None,
            scale=check.number(spec.get("scale", 1.0), f"{where}.scale"),
            offset=check.offset(spec, where),
        )
    mapping = Mapping(check.path, frame_column, time_column, events, rewards, actions, state)
    if mapping.uses_events():
        if events is None:
            reader = ([f"rewards.{n}" for n, t in rewards.items() if t.match is not None]
                      + [f"actions.{n}" for n, c in actions.items() if c.from_events])[0]
            raise check.error("events", f"required: {reader} reads events (say how event times map to frames)")
        if events.fps is None and time_column is None and events.frame_field is None:
            raise check.error("events", "events need a time -> frame rule: events.fps, table.time_column, or events.frame_field")
    _check_action_space(check, mapping)
    return mapping


def _named(check: _Checker, section: Any, where: str) -> dict:
    if not isinstance(section, dict):
        raise check.error(where, f"expected a mapping of name -> entry, got {section!r}")
    for name in section:
        if not isinstance(name, str) or not name or "." in name:
            raise check.error(f"{where}.{name}", "names must be non-empty strings without '.'")
    return section


def _parse_events(check: _Checker, spec: Any, time_column: str | None) -> EventTiming:
    spec = check.keys(spec, "events", ("time_field", "frame_field", "tolerance", "fps", "start_time"))
    fps = check.number(spec["fps"], "events.fps", positive=True) if spec.get("fps") is not None else None
    tolerance = spec.get("tolerance")
    if fps is not None and time_column is not None:
        raise check.error("events.fps", "give either events.fps or table.time_column for event times, not both")
    if tolerance is not None:
        tolerance = check.number(tolerance, "events.tolerance", positive=True)
        if fps is not None:
            raise check.error("events.tolerance", "applies to the table's time column only, not to events.fps")
    elif fps is None and time_column is not None:
        raise check.error("events.tolerance", "required with table.time_column: how much later than an event its "
                          "frame's time may be (in the events' time unit, e.g. 0.1 s = 2 frames at 20 fps)")
    if "start_time" in spec and fps is None:
        raise check.error("events.start_time", "applies to events.fps only")
    return EventTiming(
        time_field=check.name(spec.get("time_field", "time"), "events.time_field"),
        frame_field=check.name(spec["frame_field"], "events.frame_field") if spec.get("frame_field") is not None else None,
        tolerance=tolerance,
        fps=fps,
        start_time=check.number(spec.get("start_time", 0.0), "events.start_time"),
    )


def _parse_reward(check: _Checker, name: str, spec: Any) -> RewardTerm:
    where = f"rewards.{name}"
    if not isinstance(spec, dict):
        raise check.error(where, f"expected a mapping of keys, got {spec!r}")
    kind = spec.get("kind")
    if kind is None:
        raise check.error(f"{where}.kind", f"required key is missing (one of {list(REWARD_KINDS)})")
    if kind == "increase":
        spec = check.keys(spec, where, ("kind", "column", "scale", "min_increase", "offset"), ("column", "scale"))
        return RewardTerm(name, kind, check.offset(spec, where), column=check.name(spec["column"], f"{where}.column"),
                          scale=check.number(spec["scale"], f"{where}.scale"),
                          min_increase=max(check.number(spec.get("min_increase", 0.0), f"{where}.min_increase"), 0.0))
    if kind == "event":
        spec = check.keys(spec, where, ("kind", "match", "value", "value_field", "offset"), ("match",))
        value_field = spec.get("value_field")
        return RewardTerm(name, kind, check.offset(spec, where), match=check.match(spec["match"], f"{where}.match"),
                          value=check.number(spec.get("value", 1.0), f"{where}.value"),
                          value_field=check.name(value_field, f"{where}.value_field") if value_field is not None else None)
    if kind == "death":
        spec = check.keys(spec, where, ("kind", "column", "dead_at_or_below", "dead_at_or_above", "min_frames",
                                        "penalty", "offset"), ("column", "penalty"))
        below, above = spec.get("dead_at_or_below"), spec.get("dead_at_or_above")
        if below is not None and above is not None:
            raise check.error(f"{where}.dead_at_or_above", "give dead_at_or_below or dead_at_or_above, not both")
        return RewardTerm(
            name, kind, check.offset(spec, where), column=check.name(spec["column"], f"{where}.column"),
            dead_at_or_below=check.number(below, f"{where}.dead_at_or_below") if below is not None else None,
            dead_at_or_above=check.number(above, f"{where}.dead_at_or_above") if above is not None else None,
            min_frames=check.integer(spec.get("min_frames", 3), f"{where}.min_frames", minimum=1),
            penalty=check.number(spec["penalty"], f"{where}.penalty"),
        )
    raise check.error(f"{where}.kind", f"must be one of {list(REWARD_KINDS)}, got {kind!r}")


def _parse_action(check: _Checker, name: str, spec: Any) -> ActionComponent:
    where = f"actions.{name}"
    allowed = ("kind", "role", "offset", "column", "match", "field", "n", "grid", "hold", "held_from")
    spec = check.keys(spec, where, allowed, ("kind",))
    kind, role = spec["kind"], spec.get("role", "both")
    if kind not in ACTION_KINDS:
        raise check.error(f"{where}.kind", f"must be one of {list(ACTION_KINDS)}, got {kind!r}")
    if role not in ROLES:
        raise check.error(f"{where}.role", f"must be one of {list(ROLES)}, got {role!r}")
    offset = check.offset(spec, where)
    has = {key for key in ("column", "match", "field", "n", "grid") if spec.get(key) is not None}
    match = check.match(spec["match"], f"{where}.match") if "match" in has else None
    column = check.name(spec["column"], f"{where}.column") if "column" in has else None
    hold = check.flag(spec.get("hold", False), f"{where}.hold")
    if hold and match is None:
        raise check.error(f"{where}.hold", "holds an event's value until the next event: needs 'match'")
    held_from = spec.get("held_from")
    if held_from is not None:
        # An input an agent cannot choose itself: it takes target `value` where target `flag` fires (checked against
        # the other components with the whole action space).
        if not hold or role != "input" or not isinstance(held_from, dict) or set(held_from) != {"flag", "value"}:
            raise check.error(f"{where}.held_from", "a held input (role input, hold true) names {flag: <binary "
                              "target>, value: <target>}: the targets an agent sets it from")

    def refuse(*keys: str) -> None:
        for key in keys:
            if key in has:
                raise check.error(f"{where}.{key}", f"does not apply to this {kind} component ({_ACTION_FORMS[kind]})")

    if kind == "binary":
        refuse("field", "n", "grid")
        if hold:
            raise check.error(f"{where}.hold", "a binary component fires on its event's frame; hold applies to categorical ones")
        if (match is None) == (column is None):
            raise check.error(where, f"a binary component reads exactly one of 'match' (events) or 'column' (table), got {sorted(has) or 'neither'}")
        return ActionComponent(name, kind, role, offset, column=column, match=match)

    if "grid" in has:
        refuse("column", "field", "n")
        grid = _parse_grid(check, spec["grid"], f"{where}.grid")
        if match is not None and not grid.noop:
            raise check.error(f"{where}.grid.noop", "an event-driven grid needs noop: true (class 0 is a frame without an event)")
        return ActionComponent(name, kind, role, offset, match=match, grid=grid, hold=hold, held_from=held_from)
    if "n" not in has:
        raise check.error(f"{where}.n", "required: the number of classes (or give 'grid' to bin points)")
    n = check.integer(spec["n"], f"{where}.n", minimum=2)
    if match is not None:
        refuse("column")
        if "field" not in has:
            raise check.error(f"{where}.field", "required with 'match': the event field holding the class (1..n-1)")
        return ActionComponent(name, kind, role, offset, match=match, field=check.name(spec["field"], f"{where}.field"),
                               n=n, hold=hold)
    refuse("field")
    if column is None:
        raise check.error(where, "a categorical component reads 'column' (table), 'match' + 'field' (events) or 'grid'")
    return ActionComponent(name, kind, role, offset, column=column, n=n)


_ACTION_FORMS = {
    "binary": "binary reads 'match' or 'column'",
    "categorical": "categorical reads 'column' + 'n', 'match' + 'field' + 'n', or 'grid' (+ 'match')",
}


def _parse_grid(check: _Checker, spec: Any, where: str) -> GridSpec:
    spec = check.keys(spec, where, ("x", "y", "columns", "rows", "x_range", "y_range", "noop"), ("x", "y", "columns", "rows"))
    grid = GridSpec(
        x=check.name(spec["x"], f"{where}.x"),
        y=check.name(spec["y"], f"{where}.y"),
        columns=check.integer(spec["columns"], f"{where}.columns", minimum=1),
        rows=check.integer(spec["rows"], f"{where}.rows", minimum=1),
        x_range=check.range(spec.get("x_range", [0.0, 1.0]), f"{where}.x_range"),
        y_range=check.range(spec.get("y_range", [0.0, 1.0]), f"{where}.y_range"),
        noop=check.flag(spec.get("noop", True), f"{where}.noop"),
    )
    if grid.classes < 2:
        raise check.error(where, "a grid needs at least 2 classes (cells, plus the no-op)")
    return grid


def _check_action_space(check: _Checker, mapping: Mapping) -> None:
    """The components must form a valid action space whose names are no dataset column."""
    from data.schema import RESERVED_COLUMNS
    from modeling_dreamer.action_space import validate_action_space

    clash = sorted(set(mapping.actions) & RESERVED_COLUMNS)
    if clash:
        raise check.error(f"actions.{clash[0]}", f"is a column of the dataset itself; reserved names: {sorted(RESERVED_COLUMNS)}")
    try:
        validate_action_space(mapping.action_space(), reserved=RESERVED_COLUMNS)
    except ValueError as error:
        raise check.error("actions", str(error)) from error
