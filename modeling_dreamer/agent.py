"""`DreamerAgent`: a trained agent model in use, one frame at a time.

    agent = DreamerAgent.from_pretrained("runs/lol_agent/final")
    agent.reset(batch_size=1, task_id=0)
    for latent in stream:                     # (B, C, H, W): the frame just observed
        action = agent.act(latent)            # {component: (B,)}: the action taken after observing it
        agent.reward(), agent.value()         # (B,) read at that frame

Each `act` is one forward pass of the observed frame with the key/value cache of the earlier ones
(`DreamerCache`; at most the config's `time_context_length` frames are read): acting in the real game
needs no frame generation. The frame is fed as in training, slightly corrupted to the config's context
signal level, and the action comes from the policy head's offset-0 output (a categorical per categorical
component, a Bernoulli per binary one).
"""

from __future__ import annotations

import os

import torch

from .cache import DreamerCache
from .distributions import policy_sample, twohot_decode
from .modeling_dreamer import DreamerAgentModel, DreamerAgentOutput
from .validation import check_finite, check_positive_int, check_temperature, check_tensor


class DreamerAgent:
    """Acts with a :class:`DreamerAgentModel`, frame by frame, for a batch of independent streams."""

    def __init__(self, model: DreamerAgentModel, seed: int = 0) -> None:
        self.model = model.eval()
        self.seed = seed
        self.cache: DreamerCache | None = None
        self.task_ids: torch.Tensor | None = None
        self.generator: torch.Generator | None = None
        self.last: DreamerAgentOutput | None = None
        self.reset()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, seed: int = 0, **kwargs) -> "DreamerAgent":
        """Load a saved agent model (`DreamerAgentModel.from_pretrained` arguments) and wrap it."""
        return cls(DreamerAgentModel.from_pretrained(pretrained_model_name_or_path, **kwargs), seed=seed)

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

    @torch.no_grad()
    def act(self, latents: torch.Tensor, greedy: bool = False, temperature: float = 1.0) -> dict[str, torch.Tensor]:
        """Observe one frame per stream, ``latents (B, C, H, W)``, and return the action taken after it:
        ``{component: (B,)}`` (int64 class for categorical components, bool for binary ones). ``greedy``
        takes each component's most likely value; otherwise it is sampled at ``temperature`` > 0.

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
            check_temperature(temperature, where)
        check_finite(latents, "latents", where)
        frame = latents.to(device=self.device, dtype=self.model.dtype)[:, None]
        self.last = self.model.commit_frames(frame, self.cache, task_ids=self.task_ids, generator=self.generator)
        logits = {name: value[:, -1, 0] for name, value in self.last.policy_logits.items()}
        actions = policy_sample(logits, config.action_space, greedy=greedy, temperature=temperature,
                                generator=self.generator)
        self.cache.record_actions(actions)
        return actions

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
