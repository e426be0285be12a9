"""The one mapping between a gymnasium action space and the project's action components.

The model's action space is an ordered dict of components, each categorical (`n` classes) or binary
(`modeling_dreamer.action_space`). A gymnasium action space maps onto it by one rule:

- `Discrete(n, start)`: one categorical component with `n` classes; class k is the env action start + k;
- `MultiDiscrete(nvec, start)`: one categorical component per entry (row-major over `nvec`'s shape);
- `MultiBinary(n)`: one binary component per bit (row-major over its shape);
- `Dict` and `Tuple` of those (nested too): the union of their parts, in the space's order.

Names: a leaf's base name is its path of `Dict` keys joined by `_` (`action` at the top level, and
`action_<i>` for the i-th item of a top-level `Tuple`); a leaf with several components appends `_<i>`
(flat index), a leaf with one component is its base name. So `Discrete(2)` is `{"action": categorical 2}`,
`MultiDiscrete([3, 4])` is `action_0`, `action_1`, and the coin game's
`Dict(movement=Discrete(18), ability_q=MultiBinary(1), ...)` is exactly the default action space.

Continuous (`Box`) and other spaces are refused by :class:`ActionMapping` with a `ValueError` naming the part.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from gymnasium import spaces

Path = tuple[str | int, ...]


@dataclass(frozen=True)
class Component:
    """One action component: where it lives in the env's action and what values it takes."""

    name: str
    type: str  # "categorical" | "binary"
    n: int  # classes (2 for a binary component)
    path: Path  # Dict keys / Tuple indices from the top-level action to its leaf space
    index: int | None  # flat position inside a MultiDiscrete / MultiBinary leaf; None for Discrete
    start: int = 0  # env value of class 0 (gymnasium's `start`)

    def spec(self) -> dict[str, Any]:
        """This component in the model's action space format."""
        return {"type": "binary"} if self.type == "binary" else {"type": "categorical", "n": self.n}


def _describe_space(space: spaces.Space) -> str:
    return f"{type(space).__name__} {space}"


class ActionMapping:
    """Converts between a gymnasium action space's actions and ``{component: int | bool}``.

    ``mapping = ActionMapping(env.action_space)``; ``mapping.action_space`` is the model's action space
    (ordered dict); ``mapping.to_env({"action": 1})`` is an action for ``env.step``;
    ``mapping.from_env(action)`` reads one back; ``mapping.describe()`` is the JSON stored with a recording.
    """

    def __init__(self, space: spaces.Space):
        self.space = space
        self.components: list[Component] = []
        self._leaves: list[tuple[Path, spaces.Space]] = []
        self._walk(space, ())
        names = [component.name for component in self.components]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"action space {space}: component names {duplicates} occur twice (Dict keys joined by '_' "
                             "collide); rename the env's action keys")

    # -- building -------------------------------------------------------------------------------

    def _walk(self, space: spaces.Space, path: Path) -> None:
        if isinstance(space, spaces.Dict):
            for key, subspace in space.spaces.items():
                if not isinstance(key, str) or not key or "." in key:
                    raise ValueError(f"action space Dict key {key!r} at {list(path)}: component names must be non-empty "
                                     "strings without '.'")
                self._walk(subspace, (*path, key))
        elif isinstance(space, spaces.Tuple):
            for index, subspace in enumerate(space.spaces):
                self._walk(subspace, (*path, index))
        elif isinstance(space, spaces.Discrete):
            self._leaves.append((path, space))
            self._add(path, [(None, int(space.n), int(space.start))], "categorical", space)
        elif isinstance(space, spaces.MultiDiscrete):
            self._leaves.append((path, space))
            entries = [(i, int(n), int(s)) for i, (n, s) in enumerate(zip(space.nvec.ravel(), space.start.ravel()))]
            self._add(path, entries, "categorical", space)
        elif isinstance(space, spaces.MultiBinary):
            self._leaves.append((path, space))
            self._add(path, [(i, 2, 0) for i in range(int(np.prod(space.shape)))], "binary", space)
        else:
            where = f" (at {list(path)})" if path else ""
            kind = "continuous" if isinstance(space, spaces.Box) else "not supported"
            raise ValueError(f"action space {_describe_space(space)}{where} is {kind}: only Discrete, MultiDiscrete and "
                             "MultiBinary spaces (or a Dict / Tuple of them) map onto categorical and binary action "
                             "components")

    def _add(self, path: Path, entries: list[tuple[int | None, int, int]], kind: str, space: spaces.Space) -> None:
        if not entries:
            raise ValueError(f"action space {_describe_space(space)} at {list(path)} has no entries")
        if path and isinstance(path[0], str):
            base = "_".join(str(p) for p in path)
        else:
            base = "_".join(["action", *(str(p) for p in path)])
        for index, n, start in entries:
            if kind == "categorical" and n < 2:
                raise ValueError(f"action space {_describe_space(space)} at {list(path)}: an entry with {n} choice(s) "
                                 "has nothing to choose (a categorical component needs n >= 2)")
            name = base if len(entries) == 1 else f"{base}_{index}"
            self.components.append(Component(name, kind, n, path, index, start))

    # -- what it maps to ------------------------------------------------------------------------

    @property
    def action_space(self) -> dict[str, dict[str, Any]]:
        """The model's action space: ``{name: {"type": "categorical", "n": n} | {"type": "binary"}}``, in order."""
        return {component.name: component.spec() for component in self.components}

    def describe(self) -> dict[str, Any]:
        """JSON-ready description: the gymnasium space, the model's action space and each component's place."""
        return {
            "gymnasium_space": str(self.space),
            "action_space": self.action_space,
            "components": [{**asdict(component), "path": list(component.path)} for component in self.components],
        }

    # -- conversions ----------------------------------------------------------------------------

    def to_env(self, values: Mapping[str, Any]) -> Any:
        """The env action of ``{component: value}`` (ints, bools, 0-d arrays or tensors; every component given)."""
        missing = [component.name for component in self.components if component.name not in values]
        if missing:
            raise ValueError(f"action is missing components {missing} (the action space has {list(self.action_space)})")
        leaf_values: dict[Path, Any] = {}
        for path, space in self._leaves:
            if isinstance(space, spaces.Discrete):
                leaf_values[path] = None
            else:
                dtype = np.int8 if isinstance(space, spaces.MultiBinary) else space.dtype
                leaf_values[path] = np.zeros(space.shape, dtype)
        for component in self.components:
            value = values[component.name]
            value = value.item() if hasattr(value, "item") else value
            if component.type == "binary":
                if value not in (0, 1, True, False):
                    raise ValueError(f"action component {component.name!r} is binary, got {value!r}")
                env_value = int(bool(value))
            else:
                if isinstance(value, bool) or int(value) != value or not 0 <= int(value) < component.n:
                    raise ValueError(f"action component {component.name!r} takes classes 0..{component.n - 1}, got {value!r}")
                env_value = component.start + int(value)
            if component.index is None:
                leaf_values[component.path] = env_value
            else:
                leaf_values[component.path].reshape(-1)[component.index] = env_value
        return self._assemble(self.space, (), leaf_values)

    def _assemble(self, space: spaces.Space, path: Path, leaf_values: dict[Path, Any]) -> Any:
        if isinstance(space, spaces.Dict):
            return {key: self._assemble(sub, (*path, key), leaf_values) for key, sub in space.spaces.items()}
        if isinstance(space, spaces.Tuple):
            return tuple(self._assemble(sub, (*path, i), leaf_values) for i, sub in enumerate(space.spaces))
        return leaf_values[path]

    def to_env_batch(self, values: Mapping[str, Any]) -> list[Any]:
        """Env actions of a batch ``{component: (B,)}`` (numpy arrays or tensors): a list of B actions."""
        arrays = {name: np.asarray(value.cpu() if hasattr(value, "cpu") else value) for name, value in values.items()}
        sizes = {array.shape for array in arrays.values()}
        if len(sizes) != 1 or len(next(iter(sizes))) != 1:
            raise ValueError(f"batched action components must all be (B,), got shapes {sorted(sizes)}")
        return [self.to_env({name: array[i] for name, array in arrays.items()}) for i in range(next(iter(sizes))[0])]

    def from_env(self, action: Any) -> dict[str, int | bool]:
        """``{component: int | bool}`` of an env action (the inverse of :meth:`to_env`)."""
        if not self.space.contains(action):
            raise ValueError(f"action {action!r} is not in the action space {self.space}")
        values: dict[str, int | bool] = {}
        for component in self.components:
            leaf = action
            for key in component.path:
                leaf = leaf[key]
            raw = int(np.asarray(leaf).reshape(-1)[component.index]) if component.index is not None else int(leaf)
            values[component.name] = bool(raw) if component.type == "binary" else raw - component.start
        return values

    def sample(self, rng: np.random.Generator) -> Any:
        """A uniformly random env action drawn from `rng`: each component uniform and independent (as
        gymnasium's own `sample()` of these spaces, but from the given generator)."""
        return self.to_env({component.name: int(rng.integers(component.n)) for component in self.components})
