"""``symlog`` and ``symexp`` for torch tensors, numpy arrays and Python floats alike.

The one definition of both: the model's twohot heads use them on tensors, the data layer (which must not
import torch) on numpy arrays and floats when it recommends a twohot range. Neither torch nor numpy is
imported at module level; each call uses the library of its argument.
"""

from __future__ import annotations

from typing import Any


def _array_module(x: Any) -> Any:
    """``torch`` for a torch tensor, else ``numpy`` (which also takes floats and lists)."""
    if type(x).__module__.split(".")[0] == "torch":
        import torch

        return torch
    import numpy

    return numpy


def symlog(x: Any) -> Any:
    """``sign(x) * log(1 + |x|)``, elementwise, in the type of ``x`` (a float gives a numpy float)."""
    xp = _array_module(x)
    return xp.sign(x) * xp.log1p(xp.abs(x))


def symexp(x: Any) -> Any:
    """Inverse of :func:`symlog`: ``sign(x) * (exp(|x|) - 1)``, elementwise."""
    xp = _array_module(x)
    return xp.sign(x) * xp.expm1(xp.abs(x))
