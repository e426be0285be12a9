"""The linear-probe baseline of the agent's evaluation: what the obvious model gets from the same frames.

A reward event or a key press often shows in the latents as a change between the previous and the current
frame. A learned reward or policy head is only worth its cost if it beats a regularised linear classifier on
exactly that: per frame, the current latents and their change since the previous frame
(`training.metrics.frame_pair_features`), observed as the model observes them (at the context signal level,
with the same kind of noise). Probes are fitted once per run on training windows and scored on the held-out
frames of every evaluation, for offset 0 (the reward and action at `t` itself):

- reward events (`r_t != 0`) and each binary component: ROC AUC and average precision of the probe's logit;
- each categorical component: top-1 and balanced accuracy of its argmax.

Large latents are average-pooled spatially first, so that a frame has at most `max_features` pooled values
(a 32 x 16 x 16 latent would otherwise give 16,384 features per frame).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from training.metrics import LinearProbe, fit_linear_probe, frame_pair_features, probe_scores


def probe_pool(channels: int, height: int, width: int, max_features: int = 512) -> int:
    """The smallest spatial pooling factor (dividing H and W) that leaves at most `max_features` values per
    frame; the largest common divisor if none does."""
    for pool in range(1, min(height, width) + 1):
        if height % pool == 0 and width % pool == 0 and channels * (height // pool) * (width // pool) <= max_features:
            return pool
    return max(p for p in range(1, min(height, width) + 1) if height % p == 0 and width % p == 0)


def pooled_latents(latents: torch.Tensor, pool: int) -> torch.Tensor:
    """`(B, T, C, H, W)` -> `(B, T, C, H / pool, W / pool)` float32 block means."""
    if pool == 1:
        return latents.float()
    b, t, c, h, w = latents.shape
    return F.avg_pool2d(latents.float().reshape(b * t, c, h, w), pool).reshape(b, t, c, h // pool, w // pool)


def frame_pair_rows(latents: np.ndarray) -> np.ndarray:
    """`(B, T, C, H, W)` -> `(B * T, 2 * C * H * W)`: one row of `frame_pair_features` per frame."""
    return frame_pair_features(latents).reshape(-1, 2 * int(np.prod(latents.shape[2:])))


def observe(latents: torch.Tensor, level: float, generator: torch.Generator, pool: int = 1) -> torch.Tensor:
    """Clean `(B, T, C, H, W)` latents as the agent observes them: at signal `level`, fresh noise. With
    `pool > 1` the latents are already pooled by that factor, and so is the noise: a mean of `pool * pool`
    standard normals, drawn directly with standard deviation `1 / pool` (the same distribution)."""
    from modeling_dreamer.modeling_dreamer import add_noise

    z = latents.float()
    noise = torch.randn(z.shape, generator=generator, device=z.device)
    if pool > 1:
        noise = noise / pool
    return add_noise(z, torch.full(z.shape[:2], level, device=z.device), noise)


def reward_auc_over_draws(probe: LinearProbe | None, clean: np.ndarray, reward_true: np.ndarray,
                          reward_mask: np.ndarray, level: float, pool: int, draws: int, seed: int) -> np.ndarray:
    """The reward probe's AUC on `draws` fresh observations of the same held-out frames, `(draws,)`.

    One draw of observation noise moves this probe's AUC by several thousandths on a hundred events (the
    evaluation's paired figure, `probe/reward_auc`, uses the draw the model saw); the spread over draws says
    how far a difference to it is noise. `clean`: the frames' clean latents pooled by `pool`, `(B, T, C, h, w)`
    (observed with pooled noise, `observe`). reward_true, reward_mask: `(B, T)`.
    """
    if probe is None:
        return np.full(draws, np.nan)
    generator = torch.Generator().manual_seed(seed)
    z = torch.from_numpy(np.asarray(clean, dtype=np.float32))
    mask = np.asarray(reward_mask, dtype=bool).reshape(-1)
    events = (np.asarray(reward_true).reshape(-1) != 0)[mask]
    aucs = []
    for _ in range(draws):
        observed = observe(z, level, generator, pool=pool)
        aucs.append(probe_scores(probe, frame_pair_rows(observed.numpy())[mask], events)["auc"])
    return np.asarray(aucs, dtype=np.float64)


@dataclass
class ProbeBaseline:
    """Probes fitted on training frames: `reward` (events), and one per action component (None where the
    training labels hold a single class, e.g. a key never pressed)."""

    reward: LinearProbe | None
    actions: dict[str, LinearProbe | None]
    train_frames: int

    @classmethod
    def fit(cls, windows: Any, action_space: Mapping[str, Mapping[str, Any]], level: float, pool: int,
            max_windows: int, seed: int) -> "ProbeBaseline":
        """Fit on up to `max_windows` training windows spread evenly over `windows` (a `WindowDataset`),
        observed at signal `level` with noise from `seed`."""
        count = min(len(windows), max_windows)
        picks = np.unique(np.linspace(0, len(windows) - 1, count).round().astype(np.int64))
        generator = torch.Generator().manual_seed(seed)
        features, rewards, labels, labelled = [], [], {n: [] for n in action_space}, []
        for start in range(0, len(picks), 256):
            items = [windows[int(i)] for i in picks[start:start + 256]]
            latents = torch.from_numpy(np.stack([item["latents"] for item in items]))
            observed = pooled_latents(observe(latents, level, generator), pool)
            features.append(frame_pair_rows(observed.numpy()))
            rewards.append(np.concatenate([np.asarray(item["reward"]) for item in items]))
            labelled.append(np.concatenate([np.asarray(item["has_action"]) for item in items]))
            for name in action_space:
                labels[name].append(np.concatenate([np.asarray(item[name]) for item in items]))
        x = np.concatenate(features)
        has_action = np.concatenate(labelled).astype(bool)
        reward = fit_linear_probe(x, np.concatenate(rewards) != 0)
        actions = {}
        for name, spec in action_space.items():
            y = np.concatenate(labels[name])[has_action]
            classes = None if spec["type"] == "binary" else int(spec["n"])
            actions[name] = fit_linear_probe(x[has_action], y.astype(bool) if classes is None else y.astype(np.int64),
                                             num_classes=classes)
        return cls(reward, actions, len(x))

    def metrics(self, features: np.ndarray, reward_true: np.ndarray, reward_mask: np.ndarray,
                actions: Mapping[str, tuple[np.ndarray, np.ndarray]], action_space: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
        """Held-out metrics of the probes, named as the model's with a `probe/` prefix.

        features: `(N, F)` of the evaluated frames; reward_true, reward_mask: `(N,)` offset-0 rewards and
        which count; actions: name -> (`(N,)` labels, `(N,)` labelled mask)."""
        out: dict[str, float] = {"probe/train_frames": float(self.train_frames)}
        reward = probe_scores(self.reward, features[reward_mask], reward_true[reward_mask] != 0)
        out["probe/reward_auc"], out["probe/reward_ap"] = reward["auc"], reward["average_precision"]
        # Per kind of event, the probe's one score ranks gains (or penalties) against the frames without reward
        # (the other kind left out: the probe does not tell them apart).
        for kind, events, others in (("positive", reward_true > 0, reward_true < 0),
                                     ("negative", reward_true < 0, reward_true > 0)):
            keep = reward_mask & ~others
            out[f"probe/reward_auc_{kind}"] = probe_scores(self.reward, features[keep], events[keep])["auc"]
        for name, spec in action_space.items():
            labels, mask = actions[name]
            if spec["type"] == "binary":
                result = probe_scores(self.actions[name], features[mask], labels[mask].astype(bool))
                out[f"probe/bc_auc/{name}"] = result["auc"]
                out[f"probe/bc_ap/{name}"] = result["average_precision"]
            else:
                result = probe_scores(self.actions[name], features[mask], labels[mask], num_classes=int(spec["n"]))
                out[f"probe/bc_top1/{name}"] = result["top1"]
                out[f"probe/bc_balanced_accuracy/{name}"] = result["balanced_accuracy"]
        return out
