"""`DreamerAgent`: a trained agent model in use, one frame at a time, as a real-time loop needs it.

    agent = DreamerAgent.from_pretrained("runs/lol_agent/final", tokenizer=("my-tokenizer", "<hash>"))
    agent.reset(batch_size=1, task_id=0)
    for latent, is_duplicate in stream:           # (B, C, H, W): the frame just observed
        if is_duplicate:
            action = agent.skip()                 # hold the last action, commit nothing
        else:
            action = agent.act(latent, executed=last_executed)   # {component: (B,)}
        agent.decode(action)                      # e.g. the screen point of a binned click
        agent.reward(), agent.value()             # (B,) read at the last committed frame

Each `act` is one forward pass of the observed frame with the key/value cache of the earlier ones
(`DreamerCache`; at most the config's `time_context_length` frames are read): acting in the real game
needs no frame generation. The frame is fed as in training, slightly corrupted to the config's context
signal level, and the action comes from the policy head's offset-0 output (a categorical per categorical
component, a Bernoulli per binary one). What the next frame's action token embeds is the action actually
executed: the sampled one, unless `executed` (or `record_executed`) says otherwise.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import torch

from .action_space import decode_value
from .cache import DreamerCache
from .distributions import policy_sample, twohot_decode
from .modeling_dreamer import DreamerAgentModel, DreamerAgentOutput, complete_inputs
from .validation import check_finite, check_positive_int, check_temperature, check_tensor


def tokenizer_identity(tokenizer: Any) -> tuple[str | None, str]:
    """``(name, hash)`` of a tokenizer: a ``(name, hash)`` pair as given, or a ``DreamerTokenizer`` (its
    ``name_or_path`` and a sha256 over its weights in name order)."""
    if isinstance(tokenizer, tuple):
        return tokenizer
    digest = hashlib.sha256()
    for name, tensor in sorted(tokenizer.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return os.path.basename(str(getattr(tokenizer, "name_or_path", "") or "")) or None, digest.hexdigest()[:16]


class DreamerAgent:
    """Acts with a :class:`DreamerAgentModel`, frame by frame, for a batch of independent streams."""

    def __init__(self, model: DreamerAgentModel, seed: int = 0) -> None:
        self.model = model.eval()
        self.seed = seed
        self.cache: DreamerCache | None = None
        self.task_ids: torch.Tensor | None = None
        self.generator: torch.Generator | None = None
        self.last: DreamerAgentOutput | None = None
        self.last_action: dict[str, torch.Tensor] | None = None
        self.held_before: dict[str, torch.Tensor] | None = None  # the action before the last one (held inputs)
        self.reset()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, seed: int = 0, tokenizer: Any = None,
                        **kwargs) -> "DreamerAgent":
        """Load a saved agent model (`DreamerAgentModel.from_pretrained` arguments) and wrap it. With `tokenizer`
        (a ``DreamerTokenizer`` or its ``(name, hash)``) the agent refuses one other than it was trained with."""
        agent = cls(DreamerAgentModel.from_pretrained(pretrained_model_name_or_path, **kwargs), seed=seed)
        if tokenizer is not None:
            agent.check_tokenizer(tokenizer)
        return agent

    def check_tokenizer(self, tokenizer: Any) -> None:
        """Raise ``ValueError`` when ``tokenizer`` (a ``DreamerTokenizer`` or ``(name, hash)``) is not the one the
        model was trained on (the config's ``tokenizer_name`` / ``tokenizer_hash``, recorded at prepare time)."""
        config = self.model.config
        name, digest = tokenizer_identity(tokenizer)
        if config.tokenizer_hash is None:
            return
        if digest != config.tokenizer_hash:
            raise ValueError(f"DreamerAgent: this agent was trained on the latents of tokenizer "
                             f"{config.tokenizer_name!r} (hash {config.tokenizer_hash}); the tokenizer given is "
                             f"{name!r} (hash {digest}). Its latents would mean something else to the agent")

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset(self, batch_size: int = 1, task_id: int | torch.Tensor = 0, seed: int | None = None) -> None:
        """Start new episodes: forget every frame. `task_id` is one id for all streams or a `(B,)` tensor;
        `seed` (default: the agent's) seeds the observation noise and the action sampling."""
        where = "DreamerAgent.reset"
        batch_size = check_positive_int(batch_size, "batch_size", where)
        task = torch.as_tensor(task_id, device=self.device)
        if task.dtype.is_floating_point or task.dtype == torch.bool or task.dim() > 1 or (
                task.dim() == 1 and task.shape[0] != batch_size):
            raise ValueError(f"{where}: task_id must be one integer or a (batch_size,) = ({batch_size},) integer tensor, "
                             f"got {task.dtype} of shape {tuple(task.shape)}")
        num_tasks = self.model.config.num_tasks
        if bool(((task < 0) | (task >= num_tasks)).any()):
            raise ValueError(f"{where}: task_id must lie in [0, num_tasks = {num_tasks}), got {task.tolist()}")
        self.cache = DreamerCache(self.model.config.time_context_length)
        self.task_ids = task.long().expand(batch_size).clone() if task.dim() == 0 else task.long()
        self.generator = torch.Generator(device=self.device).manual_seed(self.seed if seed is None else seed)
        self.batch_size = batch_size
        self.last = None
        self.last_action = None
        self.held_before = None

    @torch.no_grad()
    def act(
        self,
        latents: torch.Tensor,
        greedy: bool = False,
        temperature: float | Mapping[str, float] = 1.0,
        logit_bias: Mapping[str, float | torch.Tensor] | None = None,
        executed: Mapping[str, torch.Tensor] | None = None,
        state: torch.Tensor | None = None,
        state_mask: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Observe one frame per stream, ``latents (B, C, H, W)``, and return the action taken after it:
        ``{component: (B,)}`` (int64 class for categorical components, bool for binary ones): the policy's
        components and the world-model inputs that follow from them (a held click cell).

        greedy: each component's most likely value; otherwise sampled at ``temperature`` > 0 (one, or
            ``{component: temperature}``). logit_bias: ``{component: float or (n,) tensor}`` added to its logits
            (``+inf`` forces, ``-inf`` forbids: e.g. a "no new click" gate).
        executed: the action actually executed after the previous frame, when it differs from the one returned
            then (a command the game dropped): ``{component: (B,)}``, the components to replace; it is what this
            frame's action token embeds.
        state, state_mask: ``(B, state_size)`` the frame's state vector (``config.state_size``) and which values
            are known.

        Invalid input (wrong type or shape, NaN or inf, a temperature <= 0) raises before anything is
        committed: the agent's memory is unchanged and the next call can go on."""
        config = self.model.config
        where = "DreamerAgent.act"
        expected = (self.batch_size, config.latent_channels, config.latent_height, config.latent_width)
        check_tensor(latents, "latents", where, f"(B, C, H, W) = {expected}")
        if tuple(latents.shape) != expected:
            raise ValueError(f"{where}: latents must be (B, C, H, W) = {expected} (B from reset), "
                             f"got {tuple(latents.shape)}")
        if not greedy:
            for value in (temperature.values() if isinstance(temperature, Mapping) else [temperature]):
                check_temperature(value, where)
        check_finite(latents, "latents", where)
        if executed is not None:
            self.record_executed(executed)
        frame = latents.to(device=self.device, dtype=self.model.dtype)[:, None]
        self.last = self.model.commit_frames(
            frame, self.cache, task_ids=self.task_ids, generator=self.generator,
            state=state[:, None] if state is not None else None,
            state_mask=state_mask[:, None] if state_mask is not None else None)
        logits = {name: value[:, -1, 0] for name, value in self.last.policy_logits.items()}
        chosen = policy_sample(logits, config.policy_space, greedy=greedy, temperature=temperature,
                               generator=self.generator, logit_bias=logit_bias)
        self.held_before = self.last_action
        action = {**chosen, **complete_inputs(chosen, self.held_before, config)}
        self.cache.record_actions(action)
        self.last_action = action
        return dict(action)

    def skip(self) -> dict[str, torch.Tensor]:
        """A duplicate frame (the stream repeated the last one): hold the last action and commit nothing; the
        agent's memory and its heads' readings are unchanged. Before any `act`, nothing can be held."""
        if self.last_action is None:
            raise ValueError("DreamerAgent.skip: no action yet since reset(); call act() on the first frame")
        return dict(self.last_action)

    def record_executed(self, executed: Mapping[str, torch.Tensor]) -> None:
        """The action actually executed after the last committed frame, ``{component: (B,)}`` (those that differ
        from what `act` returned; held inputs follow from the policy components as in `act`): the next frame's
        action token embeds it."""
        if self.last_action is None:
            raise ValueError("DreamerAgent.record_executed: no frame has been acted on since reset()")
        unknown = sorted(set(executed) - set(self.last_action))
        if unknown:
            raise ValueError(f"DreamerAgent.record_executed: unknown components {unknown}; the agent's actions have "
                             f"{list(self.last_action)}")
        action = dict(self.last_action)
        for name, value in executed.items():
            value = torch.as_tensor(value, device=self.device)
            if tuple(value.shape) != (self.batch_size,):
                raise ValueError(f"DreamerAgent.record_executed: {name!r} must have shape (B,) = ({self.batch_size},), "
                                 f"got {tuple(value.shape)}")
            action[name] = value.to(self.last_action[name].dtype)
        # A held input follows the executed targets unless it was given itself.
        derived = complete_inputs(action, self.held_before, self.model.config)
        action.update({name: derived[name] for name in derived if name not in executed})
        self.cache.record_actions(action)
        self.last_action = action

    def decode(self, action: Mapping[str, torch.Tensor]) -> dict[str, list[Any]]:
        """What each component's values stand for, by the action space's ``meaning`` (e.g. the screen point
        ``(x, y)`` of a binned click's cell; None for its no-op class): ``{component: [value per stream]}``."""
        space = self.model.config.action_space
        return {name: [decode_value(space[name], v) for v in values.tolist()] for name, values in action.items()}

    def _read(self) -> DreamerAgentOutput:
        if self.last is None:
            raise ValueError("DreamerAgent: no frame observed since reset(); call act() first")
        return self.last

    def reward(self) -> torch.Tensor:
        """The predicted reward ``(B,)`` at the last observed frame (reward head, offset 0, decoded)."""
        return twohot_decode(self._read().reward_logits[:, -1, 0], self.model.reward_bins())

    def value(self) -> torch.Tensor:
        """The predicted value ``(B,)`` at the last observed frame (value head, decoded)."""
        return twohot_decode(self._read().value_logits[:, -1], self.model.value_bins())
