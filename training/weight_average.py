"""A uniform running average of the trainable weights over the last part of a run (stochastic weight
averaging): evaluation and the final model use the average, training continues on the live weights.

torch.optim.swa_utils.AveragedModel keeps a whole second model, updates buffers we do not have, and would be
saved with pickle through Accelerate's `register_for_checkpointing`; this keeps only the trainable tensors,
in float32, and is saved as safetensors beside the running-RMS state (`weight_average.safetensors`), so a
resumed run continues the same average bitwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

WEIGHT_AVERAGE_FILE = "weight_average.safetensors"


class WeightAverage:
    """`average[name] = mean of the weights after each optimiser step from `start_step` on`.

    Args:
        model: the (unwrapped) model; its trainable parameters are averaged, frozen ones are left alone.
        start_step: the first optimiser step (1-based `global_step` after the step) that joins the average.
    """

    def __init__(self, model: nn.Module, start_step: int) -> None:
        self.start_step = start_step
        self.parameters = {name: p for name, p in model.named_parameters() if p.requires_grad}
        sharded = [name for name, p in self.parameters.items() if type(p.data).__name__ == "DTensor"]
        if sharded:
            raise ValueError(f"weight averaging of a sharded model (FSDP) is not supported ({sharded[0]} is a DTensor)")
        self.average = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in self.parameters.items()}
        self.count = 0

    @torch.no_grad()
    def update(self, global_step: int) -> None:
        """Add the live weights after optimiser step `global_step` (nothing before `start_step`)."""
        if global_step < self.start_step:
            return
        self.count += 1
        for name, param in self.parameters.items():
            self.average[name].add_(param.detach().float() - self.average[name], alpha=1.0 / self.count)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model holds the averaged weights inside the block and its live weights again after it. Nothing
        changes while the average is still empty."""
        if self.count == 0:
            yield
            return
        live = {name: p.detach().clone() for name, p in self.parameters.items()}
        self.copy_to_model()
        try:
            yield
        finally:
            with torch.no_grad():
                for name, param in self.parameters.items():
                    param.copy_(live[name])

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """Overwrite the model's trainable weights with the average (nothing while it is empty)."""
        if self.count == 0:
            return
        for name, param in self.parameters.items():
            param.copy_(self.average[name].to(param.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = {f"average.{name}": tensor for name, tensor in self.average.items()}
        state["count"] = torch.tensor(self.count, dtype=torch.int64)
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = {f"average.{name}" for name in self.average} | {"count"}
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"weight average state does not match the model's trainable parameters "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        for name in self.average:
            self.average[name].copy_(state[f"average.{name}"])
        self.count = int(state["count"])

    def save_file(self, path: Path) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}, str(path))

    def load_file(self, path: Path) -> None:
        from safetensors.torch import load_file

        device = next(iter(self.average.values())).device
        self.load_state_dict({k: v.to(device) for k, v in load_file(str(path)).items()})
