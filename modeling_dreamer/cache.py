"""The key/value cache of the time layers (``past_key_values`` of the Dreamer models).

Space layers attend within a frame and cache nothing. Each time layer keeps the keys (after QK-norm
and RoPE at absolute frame positions) and values of the frames committed so far, at most the
``time_context_length - 1`` most recent ones (all a next frame's sliding window can read). A forward
with ``use_cache=True`` appends ("commits") the frames it is fed; a forward given the cache with
``use_cache=False`` reads it and writes nothing (the denoising passes of the sampler).

Written here rather than with transformers' ``DynamicCache`` because a Dreamer frame is not one token:
each time layer attends along frames separately for every token slot of a frame, and a frame's action
token embeds the action taken at the previous frame, which the cache must remember across calls.
"""

from __future__ import annotations

import torch


class DreamerCache:
    """Keys and values of the committed frames, per time layer, and what the next frame needs.

    Per time layer ``i``: ``keys[i]`` and ``values[i]`` of shape ``(B, S, KV, N, Dh)``: batch, token slots
    of a committed frame (the agent model commits its agent tokens too), KV heads, cached frames, head
    dim. ``num_frames`` counts every frame committed (the absolute position of the next frame);
    ``last_actions`` holds the actions taken at the last committed frame, ``{name: (B,)}`` with
    ``last_action_labeled (B,)`` (None: not chosen, the next frame embeds "no action"), set by the commit
    pass and updated with :meth:`record_actions` once the action is chosen.
    """

    def __init__(self, context_length: int | None) -> None:
        self.context_length = context_length
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.num_frames = 0
        self.last_actions: dict[str, torch.Tensor] | None = None
        self.last_action_labeled: torch.Tensor | None = None

    @property
    def kept_frames(self) -> int:
        """How many committed frames a cache keeps: all a next frame's sliding window reads."""
        return self.num_frames if self.context_length is None else min(self.num_frames, self.context_length - 1)

    @property
    def cached_frames(self) -> int:
        """Frames currently held (the same for every time layer)."""
        return next(iter(self.keys.values())).shape[3] if self.keys else 0

    def layer(self, layer_idx: int, num_slots: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Cached ``(keys, values)`` of a time layer for the first ``num_slots`` slots, ``(B, S, KV, N, Dh)``
        each; None before the first commit. A pass may feed fewer slots than were committed (the agent
        model's denoising passes leave its agent tokens out; they come last in a frame)."""
        if layer_idx not in self.keys:
            return None
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        if num_slots > keys.shape[1]:
            raise ValueError(f"DreamerCache: a pass feeds {num_slots} token slots per frame but {keys.shape[1]} were "
                             "committed; commit with the model that reads the cache (the agent model for agent tokens)")
        return keys[:, :num_slots], values[:, :num_slots]

    def store(self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Keep a time layer's keys and values of every frame read in a commit pass (cached + new), trimmed
        to the frames the next pass can still read."""
        held = keys.shape[3]
        keep = held if self.context_length is None else min(held, self.context_length - 1)
        # Start at `held - keep` >= 0: a negative start would wrap around and keep only the last frames.
        self.keys[layer_idx] = keys[:, :, :, held - keep :]
        self.values[layer_idx] = values[:, :, :, held - keep :]

    def advance(self, frames: int, actions: dict[str, torch.Tensor] | None, labeled: torch.Tensor | None) -> None:
        """Count `frames` committed frames and remember the actions taken at the last of them
        (``actions {name: (B,)}``, ``labeled (B,)`` bool; None: not chosen yet)."""
        self.num_frames += frames
        self.last_actions, self.last_action_labeled = actions, labeled

    def record_actions(self, actions: dict[str, torch.Tensor], labeled: torch.Tensor | None = None) -> None:
        """Set the actions taken at the last committed frame (chosen after it was committed): the next frame
        fed embeds them. ``actions {name: (B,)}``; ``labeled (B,)`` bool, None: all labeled."""
        if self.num_frames == 0:
            raise ValueError("DreamerCache.record_actions: no frame has been committed yet")
        batch = next(iter(actions.values())).shape[0]
        device = next(iter(actions.values())).device
        self.last_actions = {name: value.reshape(batch) for name, value in actions.items()}
        self.last_action_labeled = (
            torch.ones(batch, dtype=torch.bool, device=device) if labeled is None else labeled.reshape(batch).bool()
        )
