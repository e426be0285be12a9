"""The policy contract, and loading a policy named on the command line.

A policy is any callable ``policy(env, observation, rng) -> action``:
- `env` is the *unwrapped* environment (``env.unwrapped``), so a scripted player may read its state;
- `observation` is what the env returned for the current frame (as returned, before any resizing);
- `rng` is a `numpy.random.Generator` seeded per episode (`envs.record` / `envs.evaluate`: episode e of
  a run with seed S gets ``numpy.random.default_rng(S + e)``), the policy's only source of randomness
  if its episodes are to be reproducible;
- `action` is an element of the env's action space, as `env.step` takes it.

On the command line a policy is ``MODULE:CALLABLE`` (``envs.scripted_player:scripted_policy``, a dotted
attribute path after the colon is allowed) or ``random``: uniform over each action component
(`envs.action_mapping.ActionMapping.sample`), drawn from `rng`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from envs.action_mapping import ActionMapping

Policy = Callable[[Any, Any, np.random.Generator], Any]


class RandomPolicy:
    """``random``: each action component uniform and independent, drawn from the episode's `rng`."""

    def __init__(self, mapping: ActionMapping):
        self.mapping = mapping

    def __call__(self, env: Any, observation: Any, rng: np.random.Generator) -> Any:
        return self.mapping.sample(rng)


def load_policy(spec: str, mapping: ActionMapping, argument: str = "--policy") -> Policy:
    """The policy named by `spec` (``MODULE:CALLABLE`` or ``random``) for an env whose actions `mapping` maps.

    Raises `ValueError` naming `argument` and the problem: no colon, module not found, no such
    attribute, not callable, or a signature that cannot take ``(env, observation, rng)``.
    """
    if spec == "random":
        return RandomPolicy(mapping)
    module_name, colon, attribute = spec.partition(":")
    if not colon or not module_name or not attribute:
        raise ValueError(f"{argument} {spec!r}: expected MODULE:CALLABLE (e.g. envs.scripted_player:scripted_policy) "
                         "or 'random'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        # Only the named module (or a parent package) missing is the user's typo; a module that exists
        # but fails to import something itself is reported as such.
        if error.name is not None and (module_name == error.name or module_name.startswith(error.name + ".")):
            raise ValueError(f"{argument} {spec!r}: module {module_name!r} not found (is it on PYTHONPATH?)") from None
        raise ValueError(f"{argument} {spec!r}: importing module {module_name!r} failed: {error}") from error
    policy: Any = module
    for part in attribute.split("."):
        if not hasattr(policy, part):
            raise ValueError(f"{argument} {spec!r}: module {module_name!r} has no attribute {attribute!r}")
        policy = getattr(policy, part)
    if not callable(policy):
        raise ValueError(f"{argument} {spec!r}: {attribute!r} is a {type(policy).__name__}, not callable; a policy is "
                         "a function policy(env, observation, rng) -> action")
    try:
        signature = inspect.signature(policy)
    except (TypeError, ValueError):  # some builtins have no signature to inspect: trust them
        return policy
    try:
        signature.bind(None, None, None)
    except TypeError:
        raise ValueError(f"{argument} {spec!r}: a policy must accept (env, observation, rng); {attribute} takes "
                         f"{signature}") from None
    return policy
