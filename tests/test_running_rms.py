"""RunningRMS and LossNormalizer: the running-RMS loss normalisation, its state, and its cross-process agreement
(the training loop reduces the observed losses; the normaliser itself runs no collective)."""

import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from modeling_dreamer.objectives import RunningRMS
from training.objectives import LossNormalizer

NAN = torch.tensor(float("nan"))


def feed(rms: RunningRMS, values) -> list[float]:
    return [rms(torch.tensor(float(v))).item() for v in values]


def test_constant_loss_normalises_to_one():
    outputs = feed(RunningRMS(decay=0.9), [3.0] * 50)
    assert outputs == pytest.approx([1.0] * 50, rel=1e-6)


def test_loss_that_doubles_after_many_steps_normalises_to_about_two():
    rms = RunningRMS(decay=0.99)
    feed(rms, [0.5] * 500)
    assert rms(torch.tensor(1.0)).item() == pytest.approx(2.0, rel=1e-5)


def test_each_step_divides_by_the_estimate_from_before_it():
    rms = RunningRMS(decay=0.5)
    first, second = feed(rms, [4.0, 6.0])
    assert first == pytest.approx(1.0)  # no history: its own value
    assert second == pytest.approx(6.0 / 4.0)  # the estimate after step 1 is exactly 4


def test_bias_corrected_estimate_is_the_normalised_weighted_mean_of_squares():
    decay = 0.9
    rms = RunningRMS(decay=decay)
    values = [1.0, 3.0, 2.0, 0.5, 4.0]
    for k, v in enumerate(values, start=1):
        rms(torch.tensor(v))
        weights = [(1 - decay) * decay ** (k - i) for i in range(1, k + 1)]
        expected = sum(w * x * x for w, x in zip(weights, values[:k])) / sum(weights)
        assert rms.rms().item() ** 2 == pytest.approx(expected, rel=1e-5)
    # Without the correction, a constant loss c would read c * sqrt(1 - decay^k) early on.
    constant = RunningRMS(decay=decay)
    for _ in range(3):
        constant(torch.tensor(2.0))
        assert constant.rms().item() == pytest.approx(2.0, rel=1e-6)


def test_gradient_is_scaled_by_a_constant():
    rms = RunningRMS()
    rms(torch.tensor(2.0))
    x = torch.tensor(3.0, requires_grad=True)
    out = rms(x * x)  # divisor: the estimate before this step, 2
    out.backward()
    assert out.item() == pytest.approx(4.5) and x.grad.item() == pytest.approx(2 * 3.0 / 2.0)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_loss_leaves_state_unchanged(bad):
    rms = RunningRMS()
    out = rms(torch.tensor(bad))  # first step: nothing to divide by, returned as is
    assert not math.isfinite(out.item()) and int(rms.steps) == 0
    feed(rms, [1.0, 2.0])
    before = {k: v.clone() for k, v in rms.state_dict().items()}
    out = rms(torch.tensor(bad))
    assert not math.isfinite(out.item())
    for key, value in rms.state_dict().items():
        assert torch.equal(value, before[key])


def test_absent_loss_leaves_state_unchanged():
    rms = RunningRMS()
    feed(rms, [2.0])
    out = rms(torch.tensor(6.0), NAN)  # observed nothing: what the loop passes when no process had the term
    assert out.item() == pytest.approx(3.0) and int(rms.steps) == 1


def test_state_is_persistent_buffers_that_follow_the_device():
    rms = RunningRMS()
    feed(rms, [1.0, 2.0])
    assert set(rms.state_dict()) == {"ema_sq", "steps"}
    assert rms.steps.dtype == torch.int64 and rms.ema_sq.dtype == torch.float32
    moved = rms.to("meta")
    assert moved.ema_sq.device.type == "meta" and moved.steps.device.type == "meta"


def test_safetensors_round_trip_is_bitwise(tmp_path):
    source = LossNormalizer(["dynamics", "reward", "policy"], decay=0.95)
    for step in range(7):
        source.normalize("dynamics", torch.tensor(1.0 + step))
        source.normalize("reward", torch.tensor(0.1 * step + 0.3))
    source.normalize("policy", torch.tensor(2.0))
    path = tmp_path / "rms_state.safetensors"
    source.save_file(path)
    restored = LossNormalizer(["dynamics", "reward", "policy"], decay=0.95)
    restored.load_file(path)
    for key, value in source.state_dict().items():
        assert torch.equal(restored.state_dict()[key], value)
    # the restored normaliser continues exactly where the saved one would
    x = torch.tensor(5.0)
    assert torch.equal(restored.normalize("reward", x), source.normalize("reward", x))
    # a single RunningRMS through safetensors directly
    save_file(source["reward"].state_dict(), tmp_path / "one.safetensors")
    single = RunningRMS(decay=0.95)
    single.load_state_dict(load_file(tmp_path / "one.safetensors"))
    assert torch.equal(single.ema_sq, source["reward"].ema_sq)


def test_loading_a_file_with_other_terms_names_the_file(tmp_path):
    path = tmp_path / "rms_state.safetensors"
    LossNormalizer(["dynamics"]).save_file(path)
    with pytest.raises(ValueError, match="rms_state.safetensors"):
        LossNormalizer(["dynamics", "reward"]).load_file(path)


def test_combine_sums_normalised_terms_and_leaves_absent_and_unnormalised_ones_alone():
    normalizer = LossNormalizer(["dynamics", "reward"], decay=0.5)
    counts = {"dynamics": torch.tensor(3), "reward": torch.tensor(0), "policy": torch.tensor(5)}
    losses = {"dynamics": torch.tensor(4.0, requires_grad=True), "reward": torch.tensor(float("nan")),
              "policy": torch.tensor(0.25, requires_grad=True)}
    total, logs = normalizer.combine(losses, counts, {"policy": 2.0})
    # dynamics: its first value, normalised to 1; reward: absent (an exact 0 though NaN); policy: 2 x 0.25 raw.
    assert total.item() == pytest.approx(1.0 + 2 * 0.25)
    assert int(normalizer["reward"].steps) == 0 and int(normalizer["dynamics"].steps) == 1
    assert "loss_normalized/policy" not in logs and "rms/policy" not in logs
    total.backward()
    assert losses["policy"].grad.item() == pytest.approx(2.0) and losses["dynamics"].grad.item() == pytest.approx(0.25)


WORKER = textwrap.dedent(
    """
    import os, sys, torch, torch.distributed as dist
    rank, port, out, root = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    sys.path.insert(0, root)
    from training.objectives import LossNormalizer

    def reduce_sum(tensor):  # what the loop does through Accelerate's reduce
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    norm = LossNormalizer(["term"], decay=0.9)
    local = [1.0, 2.0, 4.0, 3.0] if rank == 0 else [3.0, 6.0, 0.5, 1.0]
    outputs = []
    for value in local:
        total, _ = norm.combine({"term": torch.tensor(value)}, {"term": torch.tensor(1)}, reduce_sum=reduce_sum)
        outputs.append(total)
    # only rank 0 has the term
    total, _ = norm.combine({"term": torch.tensor(5.0 + rank)}, {"term": torch.tensor(1 - rank)}, reduce_sum=reduce_sum)
    outputs.append(total)
    norm.save_file(f"{out}/rank{rank}.safetensors")
    torch.save(torch.stack(outputs), f"{out}/outputs{rank}.pt")
    dist.destroy_process_group()
    """
)


@pytest.mark.slow  # two fresh Python processes importing torch and transformers: about 15 s on 2 busy cores
def test_two_gloo_processes_hold_identical_state(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    root = str(Path(__file__).resolve().parents[1])
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(rank), str(port), str(tmp_path), root], env=env)
             for rank in range(2)]
    assert [p.wait(timeout=180) for p in procs] == [0, 0]
    states = [load_file(tmp_path / f"rank{rank}.safetensors") for rank in range(2)]
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key])
    # the shared state is that of one process fed the cross-process means
    reference = RunningRMS(decay=0.9)
    expected_outputs = []
    for a, b in zip([1.0, 2.0, 4.0, 3.0], [3.0, 6.0, 0.5, 1.0]):
        divisor = reference.rms().item() if int(reference.steps) else (a + b) / 2
        expected_outputs.append(a / divisor)
        reference(torch.tensor((a + b) / 2))
    expected_outputs.append(5.0 / reference.rms().item())
    reference(torch.tensor(5.0))
    assert int(states[0]["term.steps"]) == 5
    torch.testing.assert_close(states[0]["term.ema_sq"], reference.ema_sq)
    outputs0 = torch.load(tmp_path / "outputs0.pt")
    torch.testing.assert_close(outputs0, torch.tensor(expected_outputs))
    assert torch.load(tmp_path / "outputs1.pt")[4].item() == 0.0  # rank 1 had no term: an exact 0
