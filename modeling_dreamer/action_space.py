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


def validate_action_space(action_space: Any, reserved: tuple[str, ...] | frozenset[str] = ()) -> ActionSpace:
    """Return ``action_space`` if it is a valid action space, else raise ``ValueError`` naming the problem.

    Valid: a non-empty dict of component names (non-empty strings without ``.``, which would break
    module and state-dict keys) to ``{"type": "binary"}`` or ``{"type": "categorical", "n": int >= 2}``
    (no other keys). ``reserved`` lists names a caller cannot accept (the data layer's own columns).
    """
    if not isinstance(action_space, dict) or not action_space:
        raise ValueError(f"action space must be a non-empty dict of components, got {action_space!r}")
    for name, spec in action_space.items():
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"action component name {name!r} is invalid (a non-empty string without '.')")
        kind = spec.get("type") if isinstance(spec, dict) else None
        if kind == "binary" and set(spec) == {"type"}:
            continue
        n = spec.get("n") if isinstance(spec, dict) else None
        valid_n = isinstance(n, int) and not isinstance(n, bool) and n >= 2
        if kind == "categorical" and valid_n and set(spec) == {"type", "n"}:
            continue
        raise ValueError(
            f"action component {name!r}: expected {{'type': 'binary'}} or "
            f"{{'type': 'categorical', 'n': int >= 2}}, got {spec!r}"
        )
    clash = sorted(set(reserved).intersection(action_space))
    if clash:
        raise ValueError(f"action component names {clash} are reserved")
    return action_space


def num_choices(spec: dict[str, Any]) -> int:
    """Values a component can take: ``n`` for a categorical component, 2 for a binary one."""
    return int(spec["n"]) if spec["type"] == "categorical" else 2


def num_logits(spec: dict[str, Any]) -> int:
    """Policy logits of a component: ``n`` softmax logits (categorical) or one Bernoulli logit (binary)."""
    return int(spec["n"]) if spec["type"] == "categorical" else 1
