"""The action space: one definition, one validation, shared by the model config and the data layer.

An action space is an ordered dict ``{component name: spec}`` with ``spec`` either
``{"type": "categorical", "n": n}`` (``n >= 2`` classes) or ``{"type": "binary"}``. The order is the
order of the policy head's outputs and of the dataset's action columns.

This module imports nothing but the standard library, so the data layer (which must not import
torch) and the model's remote-code files (which may import only their siblings) can both use it.
"""

from __future__ import annotations

import copy
from typing import Any

ActionSpace = dict[str, dict[str, Any]]

# The user's League of Legends keys, one Bernoulli component each.
LOL_BINARY_KEYS = (
    "ability_q",
    "ability_w",
    "ability_e",
    "ability_r",
    "summoner_d",
    "summoner_f",
    "item_used",
    "recall_b",
)

# The default action space: an 18-way movement direction (20-degree slices, 0 also "no movement"),
# then the 8 binary keys.
DEFAULT_ACTION_SPACE: ActionSpace = {
    "movement": {"type": "categorical", "n": 18},
    **{key: {"type": "binary"} for key in LOL_BINARY_KEYS},
}


def default_action_space() -> ActionSpace:
    """A fresh copy of :data:`DEFAULT_ACTION_SPACE` (callers may mutate it)."""
    return copy.deepcopy(DEFAULT_ACTION_SPACE)


# What a component is for (its "role"): an input of the world model (embedded in the next frame's action
# token), a target of the policy (predicted by the policy head), or both (the default, as in the paper). A held
# command (the last click's screen cell) is an input; "a new click happens" and its cell are targets.
ROLES = ("both", "input", "target")


def validate_action_space(action_space: Any, reserved: tuple[str, ...] | frozenset[str] = ()) -> ActionSpace:
    """Return ``action_space`` if it is a valid action space, else raise ``ValueError`` naming the problem.

    Valid: a non-empty dict of component names (non-empty strings without ``.``, which would break
    module and state-dict keys) to ``{"type": "binary"}`` or ``{"type": "categorical", "n": int >= 2}``, each
    optionally with ``"role"`` (one of :data:`ROLES`, default ``"both"``), ``"meaning"`` (a JSON object that
    says what the values stand for, e.g. the screen cells of a binned click; the model keeps it and decodes
    with it, :func:`decode_value`) and, for an input-only component, ``"held"`` (how it follows from the targets,
    :func:`_check_held`). At least one component must be a policy target. ``reserved`` lists names a
    caller cannot accept (the data layer's own columns).
    """
    if not isinstance(action_space, dict) or not action_space:
        raise ValueError(f"action space must be a non-empty dict of components, got {action_space!r}")
    for name, spec in action_space.items():
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"action component name {name!r} is invalid (a non-empty string without '.')")
        kind = spec.get("type") if isinstance(spec, dict) else None
        optional = {"role", "meaning", "held"}
        n = spec.get("n") if isinstance(spec, dict) else None
        valid_n = isinstance(n, int) and not isinstance(n, bool) and n >= 2
        if not (kind == "binary" and set(spec) - optional == {"type"}
                or kind == "categorical" and valid_n and set(spec) - optional == {"type", "n"}):
            raise ValueError(
                f"action component {name!r}: expected {{'type': 'binary'}} or "
                f"{{'type': 'categorical', 'n': int >= 2}} (optionally with 'role' and 'meaning'), got {spec!r}"
            )
        if spec.get("role", "both") not in ROLES:
            raise ValueError(f"action component {name!r}: role must be one of {list(ROLES)}, got {spec['role']!r}")
        if "meaning" in spec and not isinstance(spec["meaning"], dict):
            raise ValueError(f"action component {name!r}: meaning must be a JSON object, got {spec['meaning']!r}")
        if "held" in spec:
            _check_held(name, spec, action_space)
    if not target_components(action_space):
        raise ValueError("action space: no component is a policy target (role 'target' or 'both')")
    clash = sorted(set(reserved).intersection(action_space))
    if clash:
        raise ValueError(f"action component names {clash} are reserved")
    return action_space


def _check_held(name: str, spec: dict[str, Any], action_space: dict[str, Any]) -> None:
    """A held input (``"held": {"flag": f, "value": v}``): an input-only component that takes target ``v``'s value on
    frames where binary target ``f`` fires and keeps its previous value otherwise (the last click's cell, held
    until the next click). Imagination and the live agent derive it from the targets they choose."""
    held = spec["held"]
    if not isinstance(held, dict) or set(held) != {"flag", "value"}:
        raise ValueError(f"action component {name!r}: held must be {{'flag': <binary target>, 'value': <target>}}, "
                         f"got {held!r}")
    if spec.get("role") != "input":
        raise ValueError(f"action component {name!r}: a held component is an input (role 'input')")
    flag, value = action_space.get(held["flag"]), action_space.get(held["value"])
    if flag is None or flag.get("type") != "binary" or role(flag) == "input":
        raise ValueError(f"action component {name!r}: held flag {held['flag']!r} must be a binary policy target")
    if value is None or role(value) == "input" or value.get("type") != spec["type"] or value.get("n") != spec.get("n"):
        raise ValueError(f"action component {name!r}: held value {held['value']!r} must be a policy target of the "
                         f"same type and size")


def role(spec: dict[str, Any]) -> str:
    """A component's role: ``both`` (default), ``input`` or ``target``."""
    return spec.get("role", "both")


def input_components(action_space: ActionSpace) -> ActionSpace:
    """The components the world model embeds (role ``input`` or ``both``), in order."""
    return {name: spec for name, spec in action_space.items() if role(spec) in ("both", "input")}


def target_components(action_space: ActionSpace) -> ActionSpace:
    """The components the policy head predicts (role ``target`` or ``both``), in order."""
    return {name: spec for name, spec in action_space.items() if role(spec) in ("both", "target")}


def decode_value(spec: dict[str, Any], value: int) -> Any:
    """What class ``value`` of a component stands for, by its ``meaning``: for ``{"kind": "grid", "columns": nx,
    "rows": ny, "x": [x0, x1], "y": [y0, y1], "noop": bool}`` the centre ``(x, y)`` of cell ``value`` (row-major,
    after the no-op class 0 when ``noop``; the no-op decodes to None); for ``{"kind": "values", "values": [...]}``
    the listed value; otherwise the class itself."""
    meaning = spec.get("meaning") or {}
    value = int(value)
    if meaning.get("kind") == "grid":
        if meaning.get("noop"):
            if value == 0:
                return None
            value -= 1
        columns, rows = int(meaning["columns"]), int(meaning["rows"])
        (x0, x1), (y0, y1) = meaning.get("x", (0.0, 1.0)), meaning.get("y", (0.0, 1.0))
        row, column = divmod(value, columns)
        if not 0 <= row < rows:
            raise ValueError(f"class {value} is outside the {columns} x {rows} grid")
        return (x0 + (column + 0.5) * (x1 - x0) / columns, y0 + (row + 0.5) * (y1 - y0) / rows)
    if meaning.get("kind") == "values":
        return meaning["values"][value]
    return value


def num_choices(spec: dict[str, Any]) -> int:
    """Values a component can take: ``n`` for a categorical component, 2 for a binary one."""
    return int(spec["n"]) if spec["type"] == "categorical" else 2


def num_logits(spec: dict[str, Any]) -> int:
    """Policy logits of a component: ``n`` softmax logits (categorical) or one Bernoulli logit (binary)."""
    return int(spec["n"]) if spec["type"] == "categorical" else 1
