"""Loss functions of DreamerV4 phases 1 and 2 and the helpers users reuse.

Everything here is plain torch: no model, no data format. Shapes are given in each docstring.
"""

from __future__ import annotations

import torch


def symlog(x: torch.Tensor) -> torch.Tensor:
    """``sign(x) * log(1 + |x|)``, elementwise."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`symlog`: ``sign(x) * (exp(|x|) - 1)``, elementwise."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def twohot_bins(num_bins: int, low: float, high: float) -> torch.Tensor:
    """Bin centres, uniformly spaced in symlog space over ``[low, high]``.

    ``low`` and ``high`` are symlog-space values (e.g. ``symlog(-10) ~ -2.4``). Returns ``(num_bins,)``
    float32.
    """
    if num_bins < 2 or not high > low:
        raise ValueError(f"twohot_bins needs num_bins >= 2 and high > low, got {num_bins}, [{low}, {high}]")
    return torch.linspace(low, high, num_bins, dtype=torch.float32)
