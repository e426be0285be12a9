"""The loss functions of DreamerV4 phases 1 to 3, and the loss normaliser the training loop keeps.

Everything here is plain torch: no model, no data format, no collective (what several processes share is
reduced by the training loop through Accelerate and handed in). Shapes are given in each docstring. All loss
math runs in float32 whatever the dtype of the inputs (mixed precision stops at the model's outputs). See
``docs/objectives.md`` for the choices the paper leaves open.

Sections:
- the twohot loss (reward and value heads; symlog / symexp and the twohot encoding are the model's own,
  ``modeling_dreamer.distributions``),
- multi-token prediction (MTP) targets and losses (phase 2, eq. 9),
- shortcut forcing with x-prediction (phases 1 and 2, eq. 6-8; the noising itself is the model's
  ``add_noise``, which its context commits use too),
- imagination training (phase 3): lambda-returns, PMPO and the value loss,
- ``LossNormalizer``: one ``modeling_dreamer.objectives.RunningRMS`` per loss term, saved as safetensors.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from os import PathLike

import torch
import torch.nn.functional as F
from torch import nn

from modeling_dreamer.distributions import _check_bins, symlog, twohot_encode
from modeling_dreamer.modeling_dreamer import add_noise
from modeling_dreamer.objectives import RunningRMS

__all__ = [
    "twohot_out_of_range", "soft_cross_entropy", "twohot_loss", "MTPLoss", "mtp_targets", "mtp_reward_loss",
    "mtp_policy_loss", "ShortcutLoss", "sample_signal_and_step", "add_noise", "bootstrap_target",
    "shortcut_forcing_loss", "continuation_loss", "lambda_returns", "policy_kl", "PMPOLoss", "pmpo_loss", "pmpo_set_sizes", "value_loss", "LossNormalizer",
]


# ----------------------------------------------------------------------------------------------
# twohot loss
# ----------------------------------------------------------------------------------------------


def twohot_out_of_range(x: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Which values fall outside the bins once in symlog space.

    x: ``(...)`` values in the original space; bins: ``(num_bins,)`` symlog-space centres.
    Returns ``(...)`` bool, True where ``symlog(x)`` is below ``bins[0]`` or above ``bins[-1]``
    (such targets are clamped to the edge bin by :func:`twohot_encode`).
    """
    y = symlog(x.float())
    bins = bins.to(device=y.device, dtype=torch.float32)
    return (y < bins[0]) | (y > bins[-1])


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """``-sum(target_probs * log_softmax(logits))`` over the last dim, in float32.

    logits, target_probs: ``(..., K)``. Returns ``(...)``.
    Bins whose target weight is zero contribute exactly zero even when their logit is ``-inf``
    (``F.cross_entropy`` with probability targets returns NaN there on torch 2.13, because
    ``0 * -inf = nan``). A bin with positive target weight and a ``-inf`` logit gives ``+inf``:
    the target is impossible under the model, and the loss says so.
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)
    target_probs = target_probs.float()
    return -torch.where(target_probs > 0, target_probs * log_probs, torch.zeros_like(log_probs)).sum(-1)


def twohot_loss(logits: torch.Tensor, targets: torch.Tensor, bins: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Twohot cross entropy of a symlog-twohot head against real-valued targets.

    logits: ``(..., num_bins)``; targets: ``(...)`` in the original (not symlog) space;
    bins: ``(num_bins,)`` symlog-space centres.
    Returns ``(loss, num_clamped)``: the elementwise loss ``(...)`` float32 (the caller reduces) and
    an int64 scalar counting targets outside the bin range (clamped to the edge bins), for logging.
    """
    _check_bins(bins, "twohot_loss")
    if logits.shape[:-1] != targets.shape or logits.shape[-1] != bins.numel():
        raise ValueError(
            f"objectives.twohot_loss: logits {tuple(logits.shape)} must be targets {tuple(targets.shape)} "
            f"+ (num_bins={bins.numel()},)"
        )
    loss = soft_cross_entropy(logits, twohot_encode(targets, bins))
    return loss, twohot_out_of_range(targets, bins).sum()


# ----------------------------------------------------------------------------------------------
# Multi-token prediction (phase 2, eq. 9)
# ----------------------------------------------------------------------------------------------


@dataclass
class MTPLoss:
    """Result of an MTP loss. Everything but ``loss`` is detached, for logging.

    loss: scalar, the weighted sum over offsets of each offset's mean loss, with the weights of
        :func:`mtp_offset_weights` (uniform over the offsets that have a valid target by default).
    per_offset_loss: ``(L+1,)`` mean loss of each offset (0 where it had no valid target).
    per_offset_count: ``(L+1,)`` int64 number of valid targets of each offset.
    per_offset_accuracy: policy only, component name -> ``(L+1,)`` accuracy (argmax for
        categorical, ``logit > 0`` for binary); 0 where an offset had no valid target.
    num_clamped: reward only, int64 scalar: valid targets outside the twohot range.
    """

    loss: torch.Tensor
    per_offset_loss: torch.Tensor
    per_offset_count: torch.Tensor
    per_offset_accuracy: dict[str, torch.Tensor] | None = None
    num_clamped: torch.Tensor | None = None


def mtp_targets(values: torch.Tensor, valid: torch.Tensor, horizon: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift a per-frame sequence into multi-token prediction targets.

    values: ``(B, T)``; valid: ``(B, T)`` bool, False where ``values[b, t]`` is missing;
    horizon: L, so offsets are ``n = 0..L``.
    Returns ``targets (B, T, L+1)`` with ``targets[b, t, n] = values[b, t + n]`` and
    ``mask (B, T, L+1)`` bool, True only where ``t + n < T`` and ``valid[b, t + n]``. Targets past
    the window hold zeros (never a repeated or clamped frame) and are masked.
    """
    if values.dim() != 2 or valid.shape != values.shape:
        raise ValueError(
            f"objectives.mtp_targets: values and valid must both be (B, T), got {tuple(values.shape)} and {tuple(valid.shape)}"
        )
    if horizon < 0:
        raise ValueError(f"objectives.mtp_targets: horizon must be >= 0, got {horizon}")
    padded_values = F.pad(values, (0, horizon), value=0)
    padded_valid = F.pad(valid.bool(), (0, horizon), value=False)
    # unfold(time, size=L+1, step=1): window t holds frames t..t+L.
    return padded_values.unfold(1, horizon + 1, 1), padded_valid.unfold(1, horizon + 1, 1)


def _mask_logits(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Zero the (B, T, L+1, K) logits of masked targets, so that they get exactly zero gradient
    (a masked loss with a zero upstream gradient still back-propagates NaN from NaN logits)."""
    return torch.where(mask.unsqueeze(-1), logits.float(), torch.zeros((), device=logits.device))


def mtp_offset_weights(counts: torch.Tensor, first_offset_weight: float | None = None) -> torch.Tensor:
    """Weights of the MTP offsets in a loss: ``counts (L+1,)`` valid targets per offset -> ``(L+1,)``.

    Offsets without a valid target weigh 0 and the weights of the others sum to 1. ``None`` gives every
    offset that has a target the same weight (eq. 9's uniform sum, as a mean). A float gives offset 0
    (the reward or action at ``t`` itself) that weight and shares the rest equally among offsets
    ``1..L``; if only one side has targets, it gets weight 1. Why offset 0 needs its own weight when
    the later offsets are hard to predict: docs/objectives.md.
    """
    active = (counts > 0).to(torch.float32)
    if first_offset_weight is None or active.numel() == 1:
        return active / active.sum().clamp_min(1)
    if not 0.0 < first_offset_weight <= 1.0:
        raise ValueError(f"objectives.mtp_offset_weights: first_offset_weight must be in (0, 1], got {first_offset_weight}")
    later = active[1:].sum()
    # Written with tensor arithmetic only (no Python branch on a tensor value): no host sync on the GPU.
    first = torch.where(later > 0, first_offset_weight * active[0], active[0])
    rest_share = torch.where(active[0] > 0, torch.full_like(later, 1.0 - first_offset_weight), torch.ones_like(later))
    rest = active[1:] * rest_share / later.clamp_min(1)
    return torch.cat([first[None], rest])


def _reduce_offsets(
    frame_loss: torch.Tensor, mask: torch.Tensor, first_offset_weight: float | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, T, L+1) losses and mask -> (scalar loss, (L+1,) per-offset means, (L+1,) counts)."""
    # where, not multiply: a masked target may have an inf/NaN loss and must contribute nothing.
    summed = torch.where(mask, frame_loss, torch.zeros_like(frame_loss)).sum(dim=(0, 1))
    count = mask.sum(dim=(0, 1))
    per_offset = summed / count.clamp_min(1)
    loss = (mtp_offset_weights(count, first_offset_weight) * per_offset).sum()
    return loss, per_offset.detach(), count


def mtp_reward_loss(
    reward_logits: torch.Tensor,
    rewards: torch.Tensor,
    valid: torch.Tensor,
    bins: torch.Tensor,
    first_offset_weight: float | None = None,
) -> MTPLoss:
    """MTP twohot reward loss: ``h_t`` predicts ``reward[t + n]`` for ``n = 0..L``.

    reward_logits: ``(B, T, L+1, num_bins)``; rewards: ``(B, T)`` original-space rewards;
    valid: ``(B, T)`` bool, False for frames whose reward must not be a target (routing);
    bins: ``(num_bins,)`` symlog-space centres; first_offset_weight: see :func:`mtp_offset_weights`.
    """
    if reward_logits.dim() != 4 or reward_logits.shape[:2] != rewards.shape:
        raise ValueError(
            f"objectives.mtp_reward_loss: reward_logits must be (B, T, L+1, bins) matching rewards (B, T), "
            f"got {tuple(reward_logits.shape)} and {tuple(rewards.shape)}"
        )
    targets, mask = mtp_targets(rewards.float(), valid, reward_logits.shape[2] - 1)
    frame_loss, _ = twohot_loss(_mask_logits(reward_logits, mask), targets, bins)
    loss, per_offset, count = _reduce_offsets(frame_loss, mask, first_offset_weight)
    num_clamped = (twohot_out_of_range(targets, bins) & mask).sum()
    return MTPLoss(loss, per_offset, count, num_clamped=num_clamped)


def mtp_policy_loss(
    policy_logits: Mapping[str, torch.Tensor],
    actions: Mapping[str, torch.Tensor],
    valid: torch.Tensor,
    action_space: Mapping[str, Mapping],
    first_offset_weight: float | None = None,
    positive_weights: Mapping[str, float] | None = None,
) -> MTPLoss:
    """MTP behaviour-cloning loss of a factorised policy: ``h_t`` predicts ``actions[t + n]``.

    policy_logits: name -> ``(B, T, L+1, n)`` (n = 1 for binary components);
    actions: name -> ``(B, T)`` (int class for categorical, bool/0-1 for binary);
    valid: ``(B, T)`` bool, True where ``actions[t]`` is labeled and the example takes part in BC;
    action_space: ordered name -> ``{"type": "categorical", "n": int}`` or ``{"type": "binary"}``;
    first_offset_weight: see :func:`mtp_offset_weights`; positive_weights: binary component -> the weight of
    its presses in the logistic loss (PyTorch's ``pos_weight``; components not named: 1).
    The loss of one target is the sum over components of their negative log-likelihoods
    (categorical cross entropy, binary logistic loss), i.e. the joint NLL of the factorised policy.
    """
    missing = [name for name in action_space if name not in policy_logits or name not in actions]
    if missing:
        raise ValueError(f"objectives.mtp_policy_loss: no logits or actions for components {missing}")
    frame_loss: torch.Tensor | None = None
    correct: dict[str, torch.Tensor] = {}
    mask: torch.Tensor | None = None
    for name, spec in action_space.items():
        logits = policy_logits[name].float()
        if logits.dim() != 4 or logits.shape[:2] != valid.shape:
            raise ValueError(
                f"objectives.mtp_policy_loss: logits of '{name}' must be (B, T, L+1, n) with (B, T) = "
                f"{tuple(valid.shape)}, got {tuple(logits.shape)}"
            )
        targets, mask = mtp_targets(actions[name], valid, logits.shape[2] - 1)
        logits = _mask_logits(logits, mask)
        if spec["type"] == "categorical":
            if logits.shape[-1] != spec["n"]:
                raise ValueError(f"objectives.mtp_policy_loss: '{name}' has n={spec['n']} but logits {tuple(logits.shape)}")
            targets = torch.where(mask, targets.long(), torch.zeros_like(targets, dtype=torch.long))
            # Checked on the device (the model's input checks name the problem): no wait in the training step.
            torch._assert_async(((targets >= 0) & (targets < spec["n"])).all(),
                                f"objectives.mtp_policy_loss: labeled '{name}' actions must lie in [0, {spec['n']})")
            nll = F.cross_entropy(logits.reshape(-1, spec["n"]), targets.reshape(-1), reduction="none").view(targets.shape)
            correct[name] = logits.argmax(-1) == targets
        elif spec["type"] == "binary":
            if logits.shape[-1] != 1:
                raise ValueError(f"objectives.mtp_policy_loss: binary '{name}' needs logits (..., 1), got {tuple(logits.shape)}")
            logits = logits.squeeze(-1)
            targets = torch.where(mask, targets.float(), torch.zeros_like(targets, dtype=torch.float32))
            # A rarely pressed key may weigh its presses more (`positive_weights`; 1: the plain likelihood).
            weight = (positive_weights or {}).get(name)
            pos_weight = torch.full((), float(weight), device=logits.device) if weight is not None else None
            nll = F.binary_cross_entropy_with_logits(logits, targets, reduction="none", pos_weight=pos_weight)
            correct[name] = (logits > 0) == (targets > 0.5)
        else:
            raise ValueError(f"objectives.mtp_policy_loss: unknown action type {spec['type']!r} for '{name}'")
        frame_loss = nll if frame_loss is None else frame_loss + nll
    if frame_loss is None or mask is None:
        raise ValueError("objectives.mtp_policy_loss: the action space is empty")
    loss, per_offset, count = _reduce_offsets(frame_loss, mask, first_offset_weight)
    accuracy = {
        name: (hit & mask).sum(dim=(0, 1)).float() / count.clamp_min(1) for name, hit in correct.items()
    }
    return MTPLoss(loss, per_offset, count, per_offset_accuracy=accuracy)


# ----------------------------------------------------------------------------------------------
# Shortcut forcing with x-prediction (eq. 6-8)
# ----------------------------------------------------------------------------------------------


@dataclass
class ShortcutLoss:
    """loss = flow_loss + bootstrap_loss, each a ramp-weighted sum over its frames divided by the
    number of counted frames (so the two parts add up to the total)."""

    loss: torch.Tensor
    flow_loss: torch.Tensor
    bootstrap_loss: torch.Tensor


def _expand_like(per_frame: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T, 1, 1, 1) (as many trailing ones as z has extra dims)."""
    return per_frame.reshape(per_frame.shape + (1,) * (z.dim() - per_frame.dim()))


def _is_flow_frame(d: torch.Tensor, d_min: float) -> torch.Tensor:
    # d is a power-of-two fraction: the next size up is 2 * d_min, so 1.5 * d_min separates them
    # without trusting float equality.
    return d < 1.5 * d_min


def sample_signal_and_step(
    batch: int,
    frames: int,
    k_max: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    flow_fraction: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-frame signal level and step size on the paper's grid (diffusion forcing).

    ``d = 1 / K`` with ``K`` uniform over ``{1, 2, 4, ..., k_max}``; given ``d``, ``tau`` uniform on
    ``{0, d, 2d, ..., 1 - d}`` (so ``tau < 1``). ``flow_fraction``: instead, that share of the frames (drawn
    independently) takes the finest step ``d = 1 / k_max`` (the flow term) and the others a ``K`` uniform over
    the coarser ones ``{1, ..., k_max / 2}`` (the bootstrap term); None is the paper's distribution, in which
    the finest step has probability ``1 / (log2(k_max) + 1)``. A ``generator`` must live on ``device``.
    Returns ``tau (B, T)`` and ``d (B, T)``, float32, exactly representable.
    """
    if k_max < 1 or k_max & (k_max - 1):
        raise ValueError(f"objectives.sample_signal_and_step: k_max must be a power of two >= 1, got {k_max}")
    if flow_fraction is not None and not 0.0 <= flow_fraction <= 1.0:
        raise ValueError(f"objectives.sample_signal_and_step: flow_fraction must be in [0, 1], got {flow_fraction}")
    levels = int(math.log2(k_max)) + 1
    exponent = torch.randint(0, levels, (batch, frames), generator=generator, device=device)
    if flow_fraction is not None:
        coarse = torch.randint(0, max(levels - 1, 1), (batch, frames), generator=generator, device=device)
        flow = torch.rand(batch, frames, generator=generator, device=device) < flow_fraction
        exponent = torch.where(flow | (levels == 1), levels - 1, coarse)
    k = torch.pow(2.0, exponent.float())
    u = torch.rand(batch, frames, generator=generator, device=device)
    index = torch.minimum(torch.floor(u * k), k - 1)
    return index / k, 1.0 / k


@torch.no_grad()
def bootstrap_target(
    predict: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    z_tilde: torch.Tensor,
    tau: torch.Tensor,
    d: torch.Tensor,
    d_min: float,
) -> torch.Tensor:
    """Target velocity of the bootstrap term: two half steps of the model itself (eq. 7).

    predict(z ``(B, T, C, H, W)``, tau ``(B, T)``, d ``(B, T)``) returns x-predictions
    ``(B, T, C, H, W)``; z_tilde: ``(B, T, C, H, W)``; tau, d: ``(B, T)``.
    Returns ``(b' + b'') / 2`` ``(B, T, C, H, W)`` float32 for frames with ``d > d_min`` and zeros
    for flow frames (``d = d_min``), computed without gradient. Flow frames take part in both calls
    unchanged, at ``(z_tilde, tau, d_min)``, so that later frames see the same context as the student.
    """
    boot = ~_is_flow_frame(d, d_min)
    half = torch.where(boot, d / 2, torch.full_like(d, d_min))
    z_tilde = z_tilde.float()
    b1 = (predict(z_tilde, tau, half).float() - z_tilde) / _expand_like(1 - tau, z_tilde)
    z_mid = torch.where(_expand_like(boot, z_tilde), z_tilde + b1 * _expand_like(d / 2, z_tilde), z_tilde)
    tau_mid = torch.where(boot, tau + d / 2, tau)
    b2 = (predict(z_mid, tau_mid, half).float() - z_mid) / _expand_like(1 - tau_mid, z_tilde)
    return torch.where(_expand_like(boot, z_tilde), (b1 + b2) / 2, torch.zeros_like(b1))


def shortcut_forcing_loss(
    z_pred: torch.Tensor,
    z_clean: torch.Tensor,
    z_tilde: torch.Tensor,
    tau: torch.Tensor,
    d: torch.Tensor,
    d_min: float,
    bootstrap: torch.Tensor | None,
    mask: torch.Tensor | None = None,
) -> ShortcutLoss:
    """Shortcut forcing loss with x-prediction, per frame (eq. 7 with the ramp weight, eq. 8).

    z_pred: ``(B, T, C, H, W)`` model x-prediction at ``(z_tilde, tau, d)``; z_clean, z_tilde: same
    shape; tau, d: ``(B, T)``; bootstrap: ``(B, T, C, H, W)`` from :func:`bootstrap_target` (it is
    detached here; None is allowed only when every frame has ``d = d_min``);
    mask: ``(B, T)`` bool, frames whose loss counts (None: all).
    Per frame, with ``w = 0.9 tau + 0.1`` and means over ``(C, H, W)``:
    ``d = d_min``: ``w * mean((z_pred - z_clean)^2)``;
    ``d > d_min``: ``w * (1 - tau)^2 * mean(((z_pred - z_tilde) / (1 - tau) - sg(bootstrap))^2)``.
    The loss is the sum over counted frames divided by their number (0 when none count).
    """
    if z_pred.shape != z_clean.shape or z_pred.shape != z_tilde.shape or z_pred.shape[:2] != tau.shape or d.shape != tau.shape:
        raise ValueError(
            f"objectives.shortcut_forcing_loss: shapes disagree: z_pred {tuple(z_pred.shape)}, z_clean "
            f"{tuple(z_clean.shape)}, z_tilde {tuple(z_tilde.shape)}, tau {tuple(tau.shape)}, d {tuple(d.shape)}"
        )
    flow = _is_flow_frame(d, d_min)
    if mask is None:
        mask = torch.ones_like(flow)
    latent_dims = tuple(range(2, z_pred.dim()))
    z_pred, z_clean, z_tilde, tau = z_pred.float(), z_clean.float(), z_tilde.float(), tau.float()

    flow_term = (z_pred - z_clean).square().mean(latent_dims)
    if bootstrap is None:
        if not bool(flow.all()):
            raise ValueError("objectives.shortcut_forcing_loss: bootstrap is None but some frames have d > d_min")
        boot_term = torch.zeros_like(flow_term)
    else:
        # Zero the target on flow frames first: a NaN there would leak into z_pred's gradient
        # through the unselected branch of the where below (0 * nan = nan).
        target = torch.where(_expand_like(~flow, z_pred), bootstrap.detach().float(), torch.zeros_like(z_pred))
        # Flow frames may be clean (tau = 1, e.g. context frames); their bootstrap term is unused, but a
        # division by 0 there would still send NaN into z_pred's gradient through the where below.
        one_minus_tau = _expand_like(torch.where(flow, torch.ones_like(tau), 1 - tau), z_pred)
        velocity = (z_pred - z_tilde) / one_minus_tau
        boot_term = (1 - tau).square() * (velocity - target).square().mean(latent_dims)

    weight = 0.9 * tau + 0.1
    count = mask.sum().clamp_min(1)
    zero = torch.zeros_like(flow_term)
    flow_loss = torch.where(mask & flow, weight * flow_term, zero).sum() / count
    bootstrap_loss = torch.where(mask & ~flow, weight * boot_term, zero).sum() / count
    return ShortcutLoss(flow_loss + bootstrap_loss, flow_loss, bootstrap_loss)


# ----------------------------------------------------------------------------------------------
# Imagination training (phase 3): lambda-returns, the value loss and PMPO
# ----------------------------------------------------------------------------------------------


def continuation_loss(logits: torch.Tensor, terminated: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic loss of a continuation head: ``(loss, count)``, the mean over valid frames of
    ``BCE(logits, 1 - terminated)`` (the target is "the episode goes on after this frame") and their number.

    logits: ``(B, T)``; terminated: ``(B, T)`` bool (True on an episode's terminal frame); valid: ``(B, T)`` bool.
    """
    if logits.shape != terminated.shape or valid.shape != logits.shape:
        raise ValueError(f"objectives.continuation_loss: logits {tuple(logits.shape)}, terminated "
                         f"{tuple(terminated.shape)} and valid {tuple(valid.shape)} must share a shape")
    target = (~terminated.bool()).float()
    per_frame = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    count = valid.sum()
    return torch.where(valid, per_frame, 0.0).sum() / count.clamp_min(1), count


def lambda_returns(
    rewards: torch.Tensor,
    values: torch.Tensor,
    continues: torch.Tensor | None = None,
    gamma: float = 0.997,
    lam: float = 0.95,
) -> torch.Tensor:
    """TD(lambda) returns of an imagined rollout (paper eq. 10), bootstrapped from the last value.

    Indexing (as ``DreamerAgentModel.imagine`` returns it): ``values[:, i]`` is the value of the frame at
    which ``actions[:, i]`` was chosen; ``rewards[:, i]`` and ``continues[:, i]`` belong to the frame that
    action led to, whose value is ``values[:, i + 1]``. So, for ``i = N - 1 .. 0``:
    ``R_i = r_i + gamma * c_i * ((1 - lam) * v_{i+1} + lam * R_{i+1})`` with ``R_N = v_N``.

    rewards: ``(B, N)``; values: ``(B, N + 1)``; continues: ``(B, N)`` in [0, 1] (0 ends the episode at
    that frame: nothing after it counts), None = all 1. Returns ``(B, N)`` float32, without gradient.
    """
    if rewards.dim() != 2 or values.shape != (rewards.shape[0], rewards.shape[1] + 1):
        raise ValueError(f"objectives.lambda_returns: rewards must be (B, N) and values (B, N + 1), got "
                         f"{tuple(rewards.shape)} and {tuple(values.shape)}")
    rewards, values = rewards.detach().float(), values.detach().float()
    continues = torch.ones_like(rewards) if continues is None else continues.detach().float()
    returns = torch.empty_like(rewards)
    following = values[:, -1]
    for i in range(rewards.shape[1] - 1, -1, -1):
        following = rewards[:, i] + gamma * continues[:, i] * ((1 - lam) * values[:, i + 1] + lam * following)
        returns[:, i] = following
    return returns


def policy_kl(
    policy_logits: Mapping[str, torch.Tensor], prior_logits: Mapping[str, torch.Tensor], action_space: Mapping[str, Mapping]
) -> torch.Tensor:
    """``KL[policy || prior]`` ``(...)`` of two factorised policies: the sum over components of the
    categorical KL ``sum p (log p - log q)`` and the Bernoulli KL. Logits ``{name: (..., n)}``."""
    total: torch.Tensor | None = None
    for name, spec in action_space.items():
        p_logits, q_logits = policy_logits[name].float(), prior_logits[name].float()
        if spec["type"] == "categorical":
            log_p, log_q = F.log_softmax(p_logits, -1), F.log_softmax(q_logits, -1)
            kl = (log_p.exp() * (log_p - log_q)).sum(-1)
        else:
            p, q = p_logits.squeeze(-1), q_logits.squeeze(-1)
            prob = torch.sigmoid(p)
            kl = prob * (F.logsigmoid(p) - F.logsigmoid(q)) + (1 - prob) * (F.logsigmoid(-p) - F.logsigmoid(-q))
        total = kl if total is None else total + kl
    if total is None:
        raise ValueError("objectives.policy_kl: the action space is empty")
    return total


@dataclass
class PMPOLoss:
    """Result of :func:`pmpo_loss`; everything but ``loss`` is detached, for logging.

    loss: scalar; positive_share: share of valid states with ``A >= 0`` (all processes);
    negative_term, positive_term, kl: the three parts of the loss (means as in the formula).
    """

    loss: torch.Tensor
    positive_share: torch.Tensor
    negative_term: torch.Tensor
    positive_term: torch.Tensor
    kl: torch.Tensor


def pmpo_set_sizes(advantages: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``(|D+|, |D-|, N)`` float32 of :func:`pmpo_loss` on this process: states with ``A >= 0``, with ``A < 0``,
    and all valid states (``advantages (B, N)``, ``mask (B, N)`` bool or None)."""
    mask = torch.ones_like(advantages, dtype=torch.bool) if mask is None else mask.bool()
    advantages = advantages.detach()
    return torch.stack([(mask & (advantages >= 0)).sum(), (mask & (advantages < 0)).sum(), mask.sum()]).float()


def pmpo_loss(
    log_probs: torch.Tensor,
    advantages: torch.Tensor,
    kl: torch.Tensor,
    mask: torch.Tensor | None = None,
    alpha: float = 0.5,
    beta: float = 0.3,
    set_sizes: torch.Tensor | None = None,
    num_processes: int = 1,
) -> PMPOLoss:
    """PMPO (paper eq. 11): split the states by the sign of the (stopped) advantage and move the policy's
    log-probability of the taken action up on the positive set and down on the negative set, with a reverse
    KL to the behavioural prior:

    ``L = (1 - alpha) / |D-| sum_{D-} ln pi - alpha / |D+| sum_{D+} ln pi + beta / N sum KL[pi || prior]``,
    ``D+ = {A >= 0}``, ``D- = {A < 0}`` over batch and time.

    log_probs: ``(B, N)`` ``ln pi(a | s)`` of the taken actions (with gradient); advantages: ``(B, N)``
    (detached here); kl: ``(B, N)`` ``KL[pi || prior]`` per state (with gradient); mask: ``(B, N)`` bool,
    the states that count (None: all). An empty set contributes 0 (the loss stays finite).

    Several processes: ``set_sizes`` are ``(|D+|, |D-|, N)`` summed over the ``num_processes`` processes (the
    caller reduces :func:`pmpo_set_sizes` of every process); each process's sums are scaled by the number of
    processes, so that the average of the per-process losses (and of their gradients, as DDP averages them)
    equals the loss of one process holding the whole batch. None: this process's own sizes.
    """
    if log_probs.shape != advantages.shape or kl.shape != advantages.shape:
        raise ValueError(f"objectives.pmpo_loss: log_probs, advantages and kl must share a shape, got "
                         f"{tuple(log_probs.shape)}, {tuple(advantages.shape)}, {tuple(kl.shape)}")
    mask = torch.ones_like(advantages, dtype=torch.bool) if mask is None else mask.bool()
    advantages = advantages.detach()
    positive, negative = mask & (advantages >= 0), mask & (advantages < 0)
    counts = pmpo_set_sizes(advantages, mask) if set_sizes is None else set_sizes.float()
    world = num_processes
    n_positive, n_negative, n_total = (c.clamp_min(1) for c in counts)
    zero = torch.zeros((), device=log_probs.device)
    log_probs, kl = log_probs.float(), kl.float()
    negative_term = torch.where(negative, log_probs, zero).sum() * world / n_negative
    positive_term = torch.where(positive, log_probs, zero).sum() * world / n_positive
    kl_term = torch.where(mask, kl, zero).sum() * world / n_total
    loss = (1 - alpha) * negative_term - alpha * positive_term + beta * kl_term
    return PMPOLoss(loss, (counts[0] / counts[2].clamp_min(1)).detach(), negative_term.detach(),
                    positive_term.detach(), kl_term.detach())


def value_loss(
    value_logits: torch.Tensor, returns: torch.Tensor, bins: torch.Tensor, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Twohot cross entropy of the value head against (stopped) returns: ``(loss, num_clamped)``.

    value_logits: ``(B, N, num_bins)``; returns: ``(B, N)`` in the original space (detached here); bins:
    the value head's symlog-space centres; mask: ``(B, N)`` bool (None: all). The loss is the mean over the
    counted states (0 when none); ``num_clamped`` counts counted returns outside the bins' range.
    """
    mask = torch.ones_like(returns, dtype=torch.bool) if mask is None else mask.bool()
    loss, _ = twohot_loss(value_logits, returns.detach(), bins)
    clamped = (twohot_out_of_range(returns, bins) & mask).sum()
    return torch.where(mask, loss, torch.zeros_like(loss)).sum() / mask.sum().clamp_min(1), clamped


# ----------------------------------------------------------------------------------------------
# Loss normalisation
# ----------------------------------------------------------------------------------------------


class LossNormalizer(nn.ModuleDict):
    """One :class:`RunningRMS` per loss term, saved and restored as a single safetensors file.

    terms: loss-term names (no dots), e.g. ``["dynamics", "reward", "bc"]``.
    ``normalizer.normalize("reward", loss, observed)``: ``observed`` is what the step records (the training
    loop passes the loss averaged over processes, NaN where no process had the term).
    """

    def __init__(self, terms: Iterable[str], decay: float = 0.99, eps: float = 1e-8) -> None:
        super().__init__({name: RunningRMS(decay, eps) for name in terms})

    def normalize(self, name: str, loss: torch.Tensor, observed: torch.Tensor | None = None) -> torch.Tensor:
        return self[name](loss, observed)

    def combine(
        self,
        losses: Mapping[str, torch.Tensor],
        counts: Mapping[str, torch.Tensor],
        weights: Mapping[str, float] | None = None,
        reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, tuple[torch.Tensor, torch.Tensor] | torch.Tensor]]:
        """The weighted sum (``weights``: term -> weight, default 1) of the loss terms of one micro-batch, each
        divided by its running RMS where this normaliser has one (other terms are summed as they are), and
        their raw and normalised values for the log (``(value, present)`` pairs, ``rms/<term>`` estimates).

        losses: term -> scalar with gradient; counts: term -> the number of targets it averaged (0: this
        process had nothing for it). ``reduce_sum`` sums a tensor over processes (the training loop passes
        Accelerate's ``reduce``; None: one process): the normalised terms' ``(sum of present losses, processes
        present)`` go through it in one call, so every process records the same cross-process mean; a term no
        process had records nothing. Nothing here waits on the device.
        """
        device = next(iter(losses.values())).device
        normalized_names = [name for name in losses if name in self]
        present = {name: counts[name] > 0 for name in losses}
        observed: dict[str, torch.Tensor] = {}
        if normalized_names:
            stats = torch.stack([
                torch.stack([torch.where(present[name], losses[name].detach().float(), 0.0), present[name].float()])
                for name in normalized_names
            ])
            if reduce_sum is not None:
                stats = reduce_sum(stats)
            means = stats[:, 0] / stats[:, 1]  # 0 / 0 = NaN where no process had the term: nothing recorded
            observed = dict(zip(normalized_names, means))
        total = torch.zeros((), device=device)
        logs: dict[str, tuple[torch.Tensor, torch.Tensor] | torch.Tensor] = {}
        for name, loss in losses.items():
            logs[f"loss/{name}"] = (loss.detach(), present[name])
            if name in observed:
                normalized = self.normalize(name, loss, observed[name])
                logs[f"loss_normalized/{name}"] = (normalized.detach(), present[name])
                logs[f"rms/{name}"] = self[name].rms()
            else:
                normalized = loss
            # An absent term adds an exact 0 (even if its value is NaN) and stays connected to the graph.
            total = total + (weights or {}).get(name, 1.0) * torch.where(present[name], normalized, 0.0)
        return total, logs

    def save_file(self, path: str | PathLike) -> None:
        """Write every term's state (``<term>.ema_sq``, ``<term>.steps``) to a safetensors file."""
        from safetensors.torch import save_file

        state = {key: value.detach().cpu().contiguous() for key, value in self.state_dict().items()}
        save_file(state, str(path), metadata={"format": "pt", "decay": str({n: m.decay for n, m in self.items()})})

    def load_file(self, path: str | PathLike) -> None:
        """Restore the state written by :meth:`save_file`; the file must hold exactly these terms."""
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as error:
            raise ValueError(f"LossNormalizer.load_file: cannot read {path}: {error}") from error
        expected = set(self.state_dict())
        if set(state) != expected:
            raise ValueError(
                f"LossNormalizer.load_file: {path} holds {sorted(state)}, expected {sorted(expected)}"
            )
        self.load_state_dict(state)
