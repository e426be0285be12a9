"""The public helpers of the objectives: symlog / symexp, the twohot encoding, and ``RunningRMS``.

Users reuse these in their own losses and heads. The loss functions themselves belong to training, not to
the model, and live in the repository's training package (``training/objectives.py``); the model files never
import this module, so a model shared as remote code ships none of it.
"""

from __future__ import annotations

import torch
from torch import nn

from .distributions import symexp, symlog, twohot_bins, twohot_decode, twohot_encode

__all__ = ["symlog", "symexp", "twohot_bins", "twohot_encode", "twohot_decode", "RunningRMS"]


class RunningRMS(nn.Module):
    """Divides a loss term by a running estimate of its root mean square.

    The estimate is a bias-corrected EMA of the squared (detached) observed loss:
    ``ema <- decay * ema + (1 - decay) * observed^2``, ``rms = sqrt(ema / (1 - decay^steps))``.
    A step normalises by the estimate from *before* it (the very first step, with no history, by its own
    observed value, giving 1), then updates. The divisor is a constant: gradients are scaled by ``1 / rms``.

    What a step records (``observed``) is given by the caller: with several processes, the training loop
    passes the loss averaged over the processes that had it (one reduction for all terms), so every process
    holds the same state; alone, the loss itself. A non-finite ``observed`` (NaN: no process had the term, or a
    non-finite loss) leaves the state untouched, and the loss is returned divided by the current estimate
    (unchanged when there is none), so a non-finite loss stays non-finite for the training loop's guard. No
    collective and no host synchronisation here. State lives in buffers (``ema_sq`` float32, ``steps`` int64)
    that move with ``.to(device)`` and appear in ``state_dict``.
    """

    def __init__(self, decay: float = 0.99, eps: float = 1e-8) -> None:
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"RunningRMS: decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.eps = eps
        self.register_buffer("ema_sq", torch.zeros((), dtype=torch.float32))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def extra_repr(self) -> str:
        return f"decay={self.decay}, eps={self.eps}"

    def rms(self) -> torch.Tensor:
        """Current bias-corrected RMS estimate (scalar float32; NaN before the first update)."""
        decay = torch.full((), self.decay, dtype=torch.float64, device=self.ema_sq.device)
        return (self.ema_sq.double() / (1.0 - decay.pow(self.steps.double()))).sqrt().float()

    def forward(self, loss: torch.Tensor, observed: torch.Tensor | None = None) -> torch.Tensor:
        """Normalise a scalar ``loss`` and record ``observed`` (scalar; None: ``loss`` itself, detached).
        Returns ``loss / rms_before`` (scalar)."""
        if loss.numel() != 1:
            raise ValueError(f"RunningRMS: expects a scalar loss, got shape {tuple(loss.shape)}")
        loss = loss.reshape(())
        device = self.ema_sq.device
        value = (loss.detach() if observed is None else observed).float().to(device).reshape(())
        usable = torch.isfinite(value)

        # Written with torch.where rather than Python branches so a step never waits on the device.
        # No history: divide by the value itself (1 after normalising), or by 1 if it is unusable.
        first = torch.where(usable, value.abs(), torch.ones_like(value))
        divisor = torch.where(self.steps > 0, self.rms(), first).clamp_min(self.eps)
        normalised = loss / divisor.to(device=loss.device, dtype=loss.dtype)

        updated = self.decay * self.ema_sq + (1.0 - self.decay) * torch.where(usable, value, 0.0).square()
        self.ema_sq.copy_(torch.where(usable, updated, self.ema_sq))
        self.steps.add_(usable.long())
        return normalised

    normalize = forward
