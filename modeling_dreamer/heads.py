"""Heads of the agent model, read from the agent hidden state ``h_t (B, T, D)``.

Reward and policy heads predict offsets ``n = 0..L`` (multi-token prediction): output ``[..., n, :]``
is about frame ``t + n``. The value head predicts one distribution per frame, the continuation head (for
environments whose episodes end) one Bernoulli logit per frame: that the episode goes on after it.
"""

from __future__ import annotations

import torch
from torch import nn

from .action_space import num_logits
from .configuration_dreamer import DreamerConfig
from .layers import DreamerRMSNorm


class DreamerHeadMLP(nn.Sequential):
    """``head_layers`` x (Linear, RMSNorm, SiLU) from ``hidden_size`` to ``head_hidden_size``
    (DreamerV3's head trunk). With ``head_layers = 0`` it is the identity."""

    def __init__(self, config: DreamerConfig) -> None:
        layers: list[nn.Module] = []
        width = config.hidden_size
        for _ in range(config.head_layers):
            layers += [
                nn.Linear(width, config.head_hidden_size, bias=False),
                DreamerRMSNorm(config.head_hidden_size, config.rms_norm_eps),
                nn.SiLU(),
            ]
            width = config.head_hidden_size
        super().__init__(*layers)
        self.out_features = width


class DreamerZeroLinear(nn.Linear):
    """A linear output layer whose weight and bias are initialised to zero (DreamerV3's reward and
    value outputs: the first prediction is the bins' mean). ``DreamerPreTrainedModel._init_weights``
    recognises it by its class."""


class DreamerRewardHead(nn.Module):
    """``(B, T, D)`` -> twohot reward logits ``(B, T, L + 1, num_bins)``.

    One linear output of ``(L + 1) * num_bins`` features is the same as ``L + 1`` output layers.
    The output layer is zero-initialised (:class:`DreamerZeroLinear`).
    """

    def __init__(self, config: DreamerConfig) -> None:
        super().__init__()
        self.num_offsets = config.mtp_length + 1
        self.num_bins = config.num_bins
        self.mlp = DreamerHeadMLP(config)
        self.out = DreamerZeroLinear(self.mlp.out_features, self.num_offsets * self.num_bins)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.mlp(hidden)).unflatten(-1, (self.num_offsets, self.num_bins))


class DreamerValueHead(nn.Module):
    """``(B, T, D)`` -> twohot value logits ``(B, T, num_bins)``; zero-initialised output like the reward."""

    def __init__(self, config: DreamerConfig) -> None:
        super().__init__()
        self.mlp = DreamerHeadMLP(config)
        self.out = DreamerZeroLinear(self.mlp.out_features, config.num_bins)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.mlp(hidden))


class DreamerPolicyHead(nn.Module):
    """``(B, T, D)`` -> ``{component: (B, T, L + 1, n)}`` logits of the policy's components (the action space's
    targets, ``config.policy_space``), in order.

    A categorical component of ``n`` classes gives ``n`` softmax logits; a binary component gives
    one Bernoulli logit (``n = 1``).
    """

    def __init__(self, config: DreamerConfig) -> None:
        super().__init__()
        self.num_offsets = config.mtp_length + 1
        self.mlp = DreamerHeadMLP(config)
        self.sizes = {name: num_logits(spec) for name, spec in config.policy_space.items()}
        self.out = nn.ModuleDict(
            {name: nn.Linear(self.mlp.out_features, self.num_offsets * n) for name, n in self.sizes.items()}
        )

    def forward(self, hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.mlp(hidden)
        return {
            name: self.out[name](features).unflatten(-1, (self.num_offsets, n)) for name, n in self.sizes.items()
        }


class DreamerStateHead(nn.Module):
    """``(B, T, D)`` -> ``(B, T, state_size)``: the frame's state vector read back from the agent state (an
    auxiliary head: what the latents miss, e.g. health and level, should reach the agent)."""

    def __init__(self, config: DreamerConfig) -> None:
        super().__init__()
        self.mlp = DreamerHeadMLP(config)
        self.out = nn.Linear(self.mlp.out_features, config.state_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.mlp(hidden))


class DreamerContinueHead(nn.Module):
    """``(B, T, D)`` -> ``(B, T)`` logits of ``P(the episode continues after frame t)``: 0 where frame ``t`` is
    terminal (the environment's ``terminated``, never its ``truncated``). Imagination stops its returns where this
    says the episode ended."""

    def __init__(self, config: DreamerConfig) -> None:
        super().__init__()
        self.mlp = DreamerHeadMLP(config)
        self.out = nn.Linear(self.mlp.out_features, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(self.mlp(hidden)).squeeze(-1)
