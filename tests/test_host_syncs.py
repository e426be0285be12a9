"""The training step waits on the device once per optimiser step (the non-finite guard's decision), never per
micro-batch: counted on a CPU run by recording every read of a tensor's value into Python (what waits for the
device on CUDA) and every tensor made from host values for the device (a copy that waits too)."""

from __future__ import annotations

import contextlib
import functools
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

READS = ("__bool__", "__float__", "__int__", "__index__", "item", "tolist", "numpy")


@contextlib.contextmanager
def counting_host_reads(reads: list[str]) -> Iterator[None]:
    originals = {name: getattr(torch.Tensor, name) for name in READS}
    original_tensor = torch.tensor

    def counted(name, method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            # torch.optim keeps its step counters as host tensors by design (not on the device): no wait.
            if "/torch/optim/" not in traceback.extract_stack(limit=2)[0].filename:
                reads.append(name)
            return method(self, *args, **kwargs)
        return wrapper

    def tensor(data, *args, **kwargs):
        from_optimizer = "/torch/optim/" in traceback.extract_stack(limit=2)[0].filename
        if kwargs.get("device") is not None and not isinstance(data, torch.Tensor) and not from_optimizer:
            reads.append("torch.tensor(host values, device=...)")
        return original_tensor(data, *args, **kwargs)

    for name, method in originals.items():
        setattr(torch.Tensor, name, counted(name, method))
    torch.tensor = tensor
    try:
        yield
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)
        torch.tensor = original_tensor


@pytest.mark.parametrize("stage,accumulation", [("dynamics", 1), ("agent", 1), ("agent", 2), ("imagination", 1)])
def test_one_host_read_per_optimiser_step(run_training, tmp_path: Path, monkeypatch, stage: str,
                                          accumulation: int) -> None:
    from modeling_dreamer import modeling_dreamer, validation
    from training import loop

    # The model checks input values without waiting on CUDA (torch._assert_async); do the same here.
    def check_as_on_cuda(*args, **kwargs):
        return validation.check_model_inputs(*args, **{**kwargs, "synchronous": False})

    monkeypatch.setattr(modeling_dreamer, "check_model_inputs", check_as_on_cuda)
    per_micro_batch: list[list[str]] = []
    micro_batch = loop.micro_batch

    def counted_micro_batch(run, batch):
        reads: list[str] = []
        with counting_host_reads(reads):
            stepped = micro_batch(run, batch)
        per_micro_batch.append(reads)
        return stepped

    monkeypatch.setattr(loop, "micro_batch", counted_micro_batch)
    extra = ["--logging_steps", "100", "--save_steps", "0", "--eval_steps", "0", "--max_eval_windows", "0",
             "--gradient_accumulation_steps", str(accumulation)]
    if stage == "imagination":
        agent = tmp_path / "phase2"
        run_training(agent, "--stage", "agent", "--max_steps", "1", "--eval_steps", "0", "--max_eval_windows", "4")
        per_micro_batch.clear()
        extra += ["--init_from", str(agent / "final"), "--imagination_horizon", "2", "--imagination_num_steps", "2",
                  "--imagination_context", "4"]
    run_training(tmp_path / "run", "--stage", stage, "--max_steps", "3", *extra)
    assert len(per_micro_batch) == 3 * accumulation
    for index, reads in enumerate(per_micro_batch):
        expected = ["__float__"] if (index + 1) % accumulation == 0 else []  # StepGuard.finite
        assert reads == expected, (index, reads)
