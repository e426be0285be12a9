"""The output distributions of the agent heads: symlog twohot (reward, value) and the factorised policy.

What a model user needs to read the heads: no loss, no training state. The losses built on these live in
the training package (``training/objectives.py``); the twohot helpers are also public as
``modeling_dreamer.objectives``.

Policy: one categorical per categorical component (``n`` logits) and one Bernoulli per binary
component (one logit), as :mod:`.action_space` defines; the policy is their product, so its log
probability and entropy are the sums over components.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .symlog import symexp, symlog
from .validation import check_temperature


def twohot_bins(num_bins: int, low: float, high: float) -> torch.Tensor:
    """Bin centres, uniformly spaced in symlog space over ``[low, high]``.

    ``low`` and ``high`` are symlog-space values (e.g. ``symlog(-10) ~ -2.4``). Returns ``(num_bins,)``
    float32.
    """
    if num_bins < 2 or not high > low:
        raise ValueError(f"twohot_bins needs num_bins >= 2 and high > low, got {num_bins}, [{low}, {high}]")
    return torch.linspace(low, high, num_bins, dtype=torch.float32)


def _check_bins(bins: torch.Tensor, where: str) -> None:
    if bins.dim() != 1 or bins.numel() < 2:
        raise ValueError(f"objectives.{where}: bins must be a 1-D tensor of >= 2 centres, got shape {tuple(bins.shape)}")


def twohot_encode(x: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Twohot weights of values over bins uniformly spaced in symlog space (DreamerV3).

    x: ``(...)`` values in the original space; bins: ``(num_bins,)`` ascending symlog-space centres.
    Returns ``(..., num_bins)`` float32: ``symlog(x)``, clamped to ``[bins[0], bins[-1]]``, split
    linearly between its two neighbour bins, so each row sums to 1 with at most two nonzero
    weights and ``sum(weights * bins) == clamp(symlog(x))``. A NaN input gives NaN weights.
    """
    _check_bins(bins, "twohot_encode")
    bins = bins.to(device=x.device, dtype=torch.float32)
    y = symlog(x.float()).clamp(bins[0], bins[-1])
    # Index of the left neighbour; the right edge itself belongs to the last interval.
    lo = (torch.searchsorted(bins, y.reshape(-1), right=True) - 1).clamp(0, bins.numel() - 2).reshape(y.shape)
    left, right = bins[lo], bins[lo + 1]
    w_right = (y - left) / (right - left)
    weights = torch.zeros(*y.shape, bins.numel(), dtype=torch.float32, device=y.device)
    weights.scatter_(-1, lo.unsqueeze(-1), (1.0 - w_right).unsqueeze(-1))
    weights.scatter_add_(-1, (lo + 1).unsqueeze(-1), w_right.unsqueeze(-1))
    return weights


def twohot_decode(logits: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Expected value of a twohot head, back in the original space.

    logits: ``(..., num_bins)``; bins: ``(num_bins,)`` symlog-space centres.
    Returns ``(...)`` float32 ``symexp(sum(softmax(logits) * bins))``.
    """
    _check_bins(bins, "twohot_decode")
    probs = torch.softmax(logits.float(), dim=-1)
    return symexp((probs * bins.to(device=logits.device, dtype=torch.float32)).sum(-1))


# ----------------------------------------------------------------------------------------------
# The factorised policy: one function per question, per component and summed over components
# ----------------------------------------------------------------------------------------------


def _check_component(logits: torch.Tensor, spec: Mapping[str, Any], name: str) -> None:
    expected = int(spec["n"]) if spec["type"] == "categorical" else 1
    if logits.shape[-1] != expected:
        raise ValueError(f"policy component {name!r} ({spec['type']}) needs logits (..., {expected}), got {tuple(logits.shape)}")


def component_log_prob(logits: torch.Tensor, action: torch.Tensor, spec: Mapping[str, Any], name: str = "") -> torch.Tensor:
    """Log probability ``(...)`` float32 of ``action (...)`` under one component's ``logits (..., n)``.

    Categorical: ``action`` holds class indices in ``0..n-1``; binary: ``action`` is bool or 0/1
    and ``logits (..., 1)`` is the Bernoulli logit of 1 (``log sigmoid(+-logit)``).
    """
    _check_component(logits, spec, name)
    logits = logits.float()
    if spec["type"] == "categorical":
        return torch.log_softmax(logits, dim=-1).gather(-1, action.long().unsqueeze(-1)).squeeze(-1)
    sign = action.float() * 2 - 1
    return F.logsigmoid(sign * logits.squeeze(-1))


def component_entropy(logits: torch.Tensor, spec: Mapping[str, Any], name: str = "") -> torch.Tensor:
    """Entropy ``(...)`` float32 (nats) of one component's distribution, from ``logits (..., n)``."""
    _check_component(logits, spec, name)
    logits = logits.float()
    if spec["type"] == "categorical":
        log_probs = torch.log_softmax(logits, dim=-1)
        return -(log_probs.exp() * log_probs).sum(-1)
    logit = logits.squeeze(-1)
    p = torch.sigmoid(logit)
    # -p log p - (1-p) log(1-p) with log p = logsigmoid(l), log(1-p) = logsigmoid(-l): finite for any l.
    return -(p * F.logsigmoid(logit) + (1 - p) * F.logsigmoid(-logit))


def component_sample(
    logits: torch.Tensor,
    spec: Mapping[str, Any],
    greedy: bool = False,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    name: str = "",
) -> torch.Tensor:
    """One action ``(...)`` from one component's ``logits (..., n)``: int64 class (categorical) or bool (binary).

    ``greedy``: the mode (argmax; ``logit > 0`` for binary). Otherwise a sample at ``temperature`` > 0
    (logits divided by it; ``greedy`` is the zero-temperature limit).
    """
    _check_component(logits, spec, name)
    if not greedy:
        check_temperature(temperature, f"policy component {name!r}")
    logits = logits.float()
    if spec["type"] == "categorical":
        if greedy:
            return logits.argmax(-1)
        probs = torch.softmax(logits / temperature, dim=-1)
        flat = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
        return flat.view(probs.shape[:-1])
    logit = logits.squeeze(-1)
    if greedy:
        return logit > 0
    return torch.bernoulli(torch.sigmoid(logit / temperature), generator=generator).bool()


def policy_log_prob(
    policy_logits: Mapping[str, torch.Tensor], actions: Mapping[str, torch.Tensor], action_space: Mapping[str, Mapping]
) -> torch.Tensor:
    """Joint log probability ``(...)`` of ``actions {name: (...)}`` under ``policy_logits {name: (..., n)}``:
    the sum over the action space's components."""
    return sum(
        component_log_prob(policy_logits[name], actions[name], spec, name) for name, spec in action_space.items()
    )


def bias_logits(logits: torch.Tensor, bias: float | torch.Tensor, spec: Mapping[str, Any], name: str = "") -> torch.Tensor:
    """``logits (..., n)`` plus a bias (a float, or ``(n,)`` per class). ``+inf`` forces a class (among several
    forced ones, uniformly; for a binary component, pressing), ``-inf`` rules it out (not pressing)."""
    _check_component(logits, spec, name)
    bias = torch.as_tensor(bias, dtype=torch.float32, device=logits.device).expand(logits.shape[-1:])
    logits = logits.float()
    forced = torch.isposinf(bias)
    if spec["type"] == "categorical" and bool(forced.any()):
        # softmax(+inf) is NaN: the forced classes share the probability, every other class gets none.
        return torch.where(forced, torch.zeros_like(logits), torch.full_like(logits, float("-inf")))
    return logits + bias


def policy_sample(
    policy_logits: Mapping[str, torch.Tensor],
    action_space: Mapping[str, Mapping],
    greedy: bool = False,
    temperature: float | Mapping[str, float] = 1.0,
    generator: torch.Generator | None = None,
    logit_bias: Mapping[str, float | torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """One action per component ``{name: (...)}``, drawn independently (the policy is their product).

    ``temperature``: one for every component or ``{component: temperature}`` (components not named: 1);
    ``logit_bias``: ``{component: float or (n,) tensor}`` added to that component's logits first
    (:func:`bias_logits`: ``+inf`` forces, ``-inf`` forbids)."""
    unknown = sorted(set(logit_bias or {}) - set(action_space))
    if isinstance(temperature, Mapping):
        unknown += sorted(set(temperature) - set(action_space))
    if unknown:
        raise ValueError(f"policy_sample: no policy component {unknown}; the policy has {list(action_space)}")
    actions = {}
    for name, spec in action_space.items():
        logits = policy_logits[name]
        if logit_bias and name in logit_bias:
            logits = bias_logits(logits, logit_bias[name], spec, name)
        component_temperature = temperature.get(name, 1.0) if isinstance(temperature, Mapping) else temperature
        if not greedy:
            check_temperature(component_temperature, f"policy_sample ({name!r})")
        actions[name] = component_sample(logits, spec, greedy, component_temperature, generator, name)
    return actions
