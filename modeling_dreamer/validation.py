"""Validation of what users hand to the model: forward inputs and checkpoint folders.

Forward inputs (:func:`check_model_inputs`), in two tiers:

- Shapes, dtypes and action-component names: host-side metadata, always checked (also under
  ``torch.compile``, where shapes are static), each a ``ValueError`` naming the argument.
- Values (signal levels and step sizes on the grid, action ranges per component, task ids, 0/1
  flags): reductions over the tensors. ``synchronous=True`` (the default off CUDA) checks them
  one by one and raises a ``ValueError`` naming the argument and component. On CUDA the default is
  one fused flag checked with ``torch._assert_async``: no host synchronisation in the training
  step; a bad value stops the process with a device-side assertion, and the same inputs passed to
  ``model.validate_inputs(..., synchronous=True)`` (or run on CPU) name the problem. Value checks
  are skipped while ``torch.compile`` traces (they would break the graph).

Checkpoint folders (:func:`check_local_checkpoint`): a missing folder, a folder without
``config.json`` and a truncated safetensors file are reported naming the folder and the file,
before transformers would report a malformed repository id or a bare deserialisation error.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable, Mapping

import torch

# Signal levels and step sizes may differ from their grid values by this much (in units of the
# grid step 1/K_max for tau, of one power of two for d) and are then rounded to them.
GRID_TOLERANCE = 1e-3

_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _shape_error(where: str, name: str, expected: str, tensor: torch.Tensor) -> ValueError:
    return ValueError(f"{where}: {name} must have shape {expected}, got {tuple(tensor.shape)}")


def _is_0_or_1(x: torch.Tensor) -> torch.Tensor:
    return (x == 0) | (x == 1)


def check_model_inputs(
    config,
    latents: torch.Tensor,
    signal_level: torch.Tensor,
    step_size: torch.Tensor | None = None,
    actions: Mapping[str, torch.Tensor] | None = None,
    action_mask: torch.Tensor | None = None,
    task_ids: torch.Tensor | None = None,
    independent_frames: torch.Tensor | None = None,
    agent_tokens: torch.Tensor | None = None,
    synchronous: bool | None = None,
    where: str = "DreamerModel",
    state: torch.Tensor | None = None,
    state_mask: torch.Tensor | None = None,
) -> None:
    """Raise ``ValueError`` (naming the argument and component) unless the forward inputs are valid.

    Expected (``B`` batch, ``T`` frames): ``latents (B, T, C, H, W)``; ``signal_level (B, T)`` in
    [0, 1] on the grid ``k / K_max``; ``step_size (B, T)`` in {1, 1/2, ..., 1/K_max}; ``actions``
    exactly the action space's components, each ``(B, T)``: categorical components an integer dtype
    with values in ``0..n-1``, binary ones bool or 0/1 (values are checked only where
    ``action_mask`` is True: unlabeled entries may hold anything); ``action_mask (B, T)`` bool or
    0/1; ``task_ids (B,)`` or ``(B, T)`` integers in ``0..num_tasks-1``; ``independent_frames (B,)``
    bool or 0/1; ``agent_tokens (B, T, A, hidden_size)``. Grid values may be off by
    :data:`GRID_TOLERANCE` (then rounded). ``synchronous``: see the module docstring (None: True
    unless the inputs are on CUDA).
    """
    c = config
    expected_latent = (c.latent_channels, c.latent_height, c.latent_width)
    if latents.dim() != 5 or tuple(latents.shape[2:]) != expected_latent:
        raise _shape_error(where, "latents", f"(B, T, {', '.join(map(str, expected_latent))})", latents)
    b, t = latents.shape[:2]
    bt = f"(B, T) = ({b}, {t})"
    if tuple(signal_level.shape) != (b, t):
        raise _shape_error(where, "signal_level", bt, signal_level)
    if step_size is not None and tuple(step_size.shape) != (b, t):
        raise _shape_error(where, "step_size", bt, step_size)
    if action_mask is not None and tuple(action_mask.shape) != (b, t):
        raise _shape_error(where, "action_mask", bt, action_mask)
    if independent_frames is not None and tuple(independent_frames.shape) != (b,):
        raise _shape_error(where, "independent_frames", f"(B,) = ({b},)", independent_frames)
    if task_ids is not None:
        if tuple(task_ids.shape) not in ((b,), (b, t)):
            raise _shape_error(where, "task_ids", f"(B,) = ({b},) or {bt}", task_ids)
        if task_ids.dtype not in _INTEGER_DTYPES:
            raise ValueError(f"{where}: task_ids must be integers, got dtype {task_ids.dtype}")
    if agent_tokens is not None and (
        agent_tokens.dim() != 4 or tuple(agent_tokens.shape[:2]) != (b, t) or agent_tokens.shape[3] != c.hidden_size
    ):
        raise _shape_error(where, "agent_tokens", f"(B, T, A, hidden_size) = ({b}, {t}, A, {c.hidden_size})", agent_tokens)
    if actions is not None:
        unknown, missing = sorted(set(actions) - set(c.action_space)), sorted(set(c.input_space) - set(actions))
        if unknown or missing:
            raise ValueError(
                f"{where}: actions has components {sorted(actions)}; the config's action_space has "
                f"{list(c.action_space)}, whose world-model inputs {list(c.input_space)} are all needed "
                f"(missing {missing}, unknown {unknown})"
            )
        for name, spec in ((n, c.action_space[n]) for n in actions):
            value = actions[name]
            if tuple(value.shape) != (b, t):
                raise _shape_error(where, f"actions[{name!r}]", bt, value)
            if spec["type"] == "categorical" and value.dtype not in _INTEGER_DTYPES:
                raise ValueError(
                    f"{where}: actions[{name!r}] is categorical and must hold integer class indices, got dtype {value.dtype}"
                )

    size = getattr(c, "state_size", 0)
    if (state is not None or state_mask is not None) and not size:
        raise ValueError(f"{where}: state given, but the model takes no state vector (config.state_size = 0)")
    if state is not None and tuple(state.shape) != (b, t, size):
        raise _shape_error(where, "state", f"(B, T, state_size) = ({b}, {t}, {size})", state)
    if state is not None and not state.is_floating_point():
        raise ValueError(f"{where}: state must be floating point, got dtype {state.dtype}")
    if state_mask is not None and (tuple(state_mask.shape) != (b, t, size) or state_mask.dtype != torch.bool):
        raise ValueError(f"{where}: state_mask must be a bool tensor of shape (B, T, state_size) = ({b}, {t}, {size}), "
                         f"got {state_mask.dtype} {tuple(state_mask.shape)}")

    if torch.compiler.is_compiling():
        return
    checks = _value_checks(c, signal_level, step_size, actions, action_mask, task_ids, independent_frames, where)
    if synchronous is None:
        synchronous = latents.device.type != "cuda"
    if synchronous:
        for ok, message in checks:
            if not bool(ok):
                raise ValueError(message())
    elif checks:
        flags = torch.stack([ok.to(latents.device) for ok, _ in checks])
        torch._assert_async(flags.all(), f"{where}: invalid input values; call validate_inputs(..., synchronous=True) for details")


def _value_checks(
    c,
    signal_level: torch.Tensor,
    step_size: torch.Tensor | None,
    actions: Mapping[str, torch.Tensor] | None,
    action_mask: torch.Tensor | None,
    task_ids: torch.Tensor | None,
    independent_frames: torch.Tensor | None,
    where: str,
) -> list[tuple[torch.Tensor, Callable[[], str]]]:
    """``(ok, message)`` pairs: ``ok`` a 0-dim bool tensor, ``message()`` built only on failure."""
    checks: list[tuple[torch.Tensor, Callable[[], str]]] = []

    def span(x: torch.Tensor) -> str:
        x = x.float()
        return f"[{x.min().item():g}, {x.max().item():g}]" if x.numel() else "[]"

    k_max = c.k_max
    tau_index = signal_level.float() * k_max
    on_grid = (tau_index - tau_index.round()).abs() <= GRID_TOLERANCE
    in_range = (tau_index >= -GRID_TOLERANCE) & (tau_index <= k_max + GRID_TOLERANCE)
    checks.append((
        (on_grid & in_range).all(),
        lambda: f"{where}: signal_level must lie in [0, 1] on the grid k / K_max (K_max = {k_max}, tolerance "
        f"{GRID_TOLERANCE} steps), got values in {span(signal_level)}",
    ))
    if step_size is not None:
        exponent = -torch.log2(step_size.float())
        ok = ((exponent - exponent.round()).abs() <= GRID_TOLERANCE) & (exponent >= -GRID_TOLERANCE)
        ok = ok & (exponent <= math.log2(k_max) + GRID_TOLERANCE)
        checks.append((
            ok.all(),
            lambda: f"{where}: step_size must be 1/K for K in 1, 2, 4, ..., {k_max} (tolerance {GRID_TOLERANCE} in "
            f"log2), got values in {span(step_size)}",
        ))
    labeled = None
    if action_mask is not None:
        checks.append((
            _is_0_or_1(action_mask).all(),
            lambda: f"{where}: action_mask must be bool or 0/1, got values in {span(action_mask)}",
        ))
        labeled = action_mask.bool()
    for name, spec in ((n, c.action_space[n]) for n in actions) if actions is not None else ():
        value = actions[name]
        if spec["type"] == "categorical":
            n = int(spec["n"])
            ok = (value >= 0) & (value < n)
            expected = f"class indices in [0, {n})"
        elif value.dtype == torch.bool:
            continue
        else:
            ok = _is_0_or_1(value)
            expected = "bool or 0/1 values"
        if labeled is not None:
            ok = ok | ~labeled.to(ok.device)

        def message(name=name, value=value, expected=expected) -> str:
            shown = value if labeled is None else value[labeled.to(value.device)]
            return (f"{where}: actions[{name!r}] ({c.action_space[name]['type']}) must hold {expected} where labeled, "
                    f"got values in {span(shown)}")

        checks.append((ok.all(), message))
    if task_ids is not None:
        checks.append((
            ((task_ids >= 0) & (task_ids < c.num_tasks)).all(),
            lambda: f"{where}: task_ids must lie in [0, num_tasks = {c.num_tasks}), got values in {span(task_ids)}",
        ))
    if independent_frames is not None and independent_frames.dtype != torch.bool:
        checks.append((
            _is_0_or_1(independent_frames).all(),
            lambda: f"{where}: independent_frames must be bool or 0/1, got values in {span(independent_frames)}",
        ))
    return checks


def _looks_like_local_path(path: str | os.PathLike) -> bool:
    """A path-like object, an absolute path, a path starting with ``.`` or ``~``, or one with more
    than one ``/`` cannot be a Hub repository id (``name`` or ``namespace/name``)."""
    if isinstance(path, os.PathLike):
        return True
    return os.path.isabs(path) or path.startswith((".", "~")) or path.count("/") > 1 or os.sep != "/" and os.sep in path


def _check_safetensors(path: str, folder: str) -> None:
    """Raise ``OSError`` naming ``path`` if its header is unreadable or its data ends early."""
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            if 8 + header_len > size:
                raise ValueError(f"the header claims {header_len} bytes but the file has {size}")
            header = json.loads(handle.read(header_len))
        data_end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    except (struct.error, ValueError, KeyError, TypeError, IndexError) as error:
        raise OSError(f"{path} in checkpoint folder {folder} is not a readable safetensors file: {error}") from None
    if 8 + header_len + data_end > size:
        raise OSError(
            f"{path} in checkpoint folder {folder} is truncated: its header lists {8 + header_len + data_end} bytes "
            f"of data, the file has {size} (an interrupted copy or save?)"
        )


def check_local_checkpoint(path: str | os.PathLike, subfolder: str = "", need_config: bool = True, who: str = "from_pretrained") -> None:
    """Raise ``OSError`` naming the folder and file if ``path`` is meant as a local checkpoint folder
    but does not exist, lacks ``config.json`` (when ``need_config``), or holds a truncated
    ``model.safetensors`` (or shard listed in ``model.safetensors.index.json``). A string that may be
    a Hub repository id and is not an existing folder is left to transformers."""
    folder = os.path.expanduser(os.fspath(path))
    folder = os.path.join(folder, subfolder) if subfolder else folder
    if not os.path.isdir(folder):
        if os.path.exists(folder):
            raise OSError(f"{who}: {folder} is a file, not a checkpoint folder (config.json + model.safetensors)")
        if _looks_like_local_path(path):
            raise FileNotFoundError(f"{who}: checkpoint folder {folder} does not exist")
        return
    if need_config and not os.path.isfile(os.path.join(folder, "config.json")):
        raise OSError(f"{who}: checkpoint folder {folder} has no config.json (files: {sorted(os.listdir(folder))})")
    weights = os.path.join(folder, "model.safetensors")
    index = weights + ".index.json"
    if os.path.isfile(weights):
        _check_safetensors(weights, folder)
    elif os.path.isfile(index):
        with open(index) as handle:
            shards = sorted(set(json.load(handle).get("weight_map", {}).values()))
        for shard in shards:
            shard_path = os.path.join(folder, shard)
            if not os.path.isfile(shard_path):
                raise OSError(f"{who}: checkpoint folder {folder} lacks {shard}, listed in {index}")
            _check_safetensors(shard_path, folder)


# ------------------------------------------------------------------------------------------------
# Inference arguments: the agent API and imagination rollouts
# ------------------------------------------------------------------------------------------------


def check_temperature(temperature: float, where: str) -> None:
    """Raise ``ValueError`` unless ``temperature`` is a finite number > 0. Dividing logits by a negative
    temperature would invert the policy (the likeliest class becomes the least likely) and 0 divides by zero;
    the zero-temperature limit is ``greedy=True``."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature <= 0:
        raise ValueError(f"{where}: temperature must be a finite number > 0 (greedy=True is the zero-temperature "
                         f"case), got {temperature!r}")


def check_positive_int(value: object, name: str, where: str, minimum: int = 1) -> int:
    """``value`` as an int if it is an integer >= ``minimum`` (not a bool, not a float like 2.5), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{where}: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_generator(generator: object, where: str) -> None:
    """Raise ``TypeError`` unless ``generator`` is None or a ``torch.Generator`` (a seed is not: make one
    with ``torch.Generator().manual_seed(seed)``)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{where}: generator must be a torch.Generator or None, got {type(generator).__name__} "
                        f"{generator!r} (for a seed, pass torch.Generator().manual_seed(seed))")


def check_tensor(value: object, name: str, where: str, expected: str) -> torch.Tensor:
    """``value`` if it is a ``torch.Tensor``, else ``TypeError`` naming the argument and the expected shape."""
    if not isinstance(value, torch.Tensor):
        hint = " (convert it with torch.from_numpy)" if type(value).__module__.startswith("numpy") else ""
        raise TypeError(f"{where}: {name} must be a torch.Tensor of shape {expected}, got {type(value).__name__}{hint}")
    return value


def check_finite(value: torch.Tensor, name: str, where: str) -> None:
    """Raise ``ValueError`` if ``value`` holds NaN or inf (one host synchronisation)."""
    finite = torch.isfinite(value)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(f"{where}: {name} holds {bad} non-finite value(s) (NaN or inf) of {value.numel()}; "
                         "nothing was committed")


def check_policy_logits(logits: object, action_space: Mapping[str, Mapping], batch: int, where: str) -> None:
    """Raise ``ValueError`` unless ``logits`` is ``{component: (B, n)}`` for exactly the action space's components
    (``n`` classes for a categorical component, 1 for a binary one): what a policy given to ``imagine`` returns."""
    from .action_space import num_logits

    if not isinstance(logits, Mapping):
        raise ValueError(f"{where}: the policy must return a dict {{component: logits (B, n)}}, got {type(logits).__name__}")
    missing, extra = sorted(set(action_space) - set(logits)), sorted(set(logits) - set(action_space))
    if missing or extra:
        raise ValueError(f"{where}: the policy returned logits for components {sorted(logits)}; the action space has "
                         f"{list(action_space)} (missing {missing}, unknown {extra})")
    for name, spec in action_space.items():
        value = logits[name]
        expected = (batch, num_logits(spec))
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != expected:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"{where}: the policy's logits for {name!r} ({spec['type']}) must have shape (B, n) = "
                             f"{expected}, got {got}")
