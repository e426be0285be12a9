"""scripts/env_demo.py and its evaluation (scripts/env_evaluation.py): the dreams' arithmetic on hand cases with a
stand-in tokenizer and world model, the real world model dreaming with the true actions in the right places, and
(slow) the whole pipeline at smoke sizes writing every summary field docs/environments.md lists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from env_evaluation import CachedWorldModel, Episode, context_starts, score_dreams  # noqa: E402

CONTEXT, HORIZON = 3, 5


class PoolingTokenizer:
    """Latents are the frames area-pooled 2x2 (`(3, 4, 4)` for 8x8 frames, in [0, 1]); decoding repeats each value
    over its 2x2 block. Lossy, per frame (no time), so a reconstruction has a finite PSNR."""

    @staticmethod
    def encode(frames: np.ndarray) -> np.ndarray:
        f = frames.astype(np.float32) / 255.0
        return f.reshape(len(f), 4, 2, 4, 2, 3).mean(axis=(2, 4)).transpose(0, 3, 1, 2)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        pixels = latents.permute(0, 1, 3, 4, 2).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        return (pixels * 255).round().clamp(0, 255).to(torch.uint8)


class Oracle:
    """Dreams exactly the real future latents. Each recorded action is `1000 * episode + frame`, so the oracle
    reads which episode and frame a context starts at from the actions it is given."""

    def __init__(self, latents: list[np.ndarray]) -> None:
        self.latents = latents

    def dream(self, context_latents: torch.Tensor, actions: dict, has_action: torch.Tensor, horizon: int) -> torch.Tensor:
        first = actions["action"][:, 0]
        context = context_latents.shape[1]
        return torch.stack([torch.from_numpy(self.latents[int(a) // 1000][int(a) % 1000 + context:][:horizon]) for a in first])


class StandStill:
    """Dreams that nothing moves: the last context latent, repeated."""

    def dream(self, context_latents: torch.Tensor, actions: dict, has_action: torch.Tensor, horizon: int) -> torch.Tensor:
        return context_latents[:, -1:].expand(-1, horizon, -1, -1, -1)


def make_episodes(lengths: tuple[int, ...] = (12, 9, 5)) -> list[Episode]:
    rng = np.random.default_rng(0)
    episodes = []
    for number, length in enumerate(lengths):
        frames = rng.integers(0, 256, size=(length, 8, 8, 3), dtype=np.uint8)
        actions = {"action": 1000 * number + np.arange(length)}
        episodes.append(Episode(number, frames, actions, np.arange(length) < length - 1))
    return episodes


def hand_psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) / 255 - b.astype(np.float64) / 255) ** 2)
    return 10 * np.log10(1 / mse)


def test_context_starts_leave_room_for_the_horizon_and_skip_short_episodes() -> None:
    starts = context_starts([12, 9, 5], CONTEXT, HORIZON, per_episode=3)
    assert starts == [(0, 0), (0, 2), (0, 4), (1, 0), (1, 1)]  # episode 2 (5 frames) cannot hold 3 + 5
    for episode, start in starts:
        assert start + CONTEXT + HORIZON <= [12, 9, 5][episode]


def test_dreams_equal_to_the_real_future_score_the_reconstruction_ceiling_and_persistence_is_the_decoded_last_frame() -> None:
    episodes, tokenizer = make_episodes(), PoolingTokenizer()
    latents = [tokenizer.encode(e.frames) for e in episodes]
    scores = score_dreams(Oracle(latents), tokenizer, episodes, latents, CONTEXT, HORIZON, per_episode=3, batch_size=2)
    starts = context_starts([len(e.frames) for e in episodes], CONTEXT, HORIZON, 3)
    assert scores.dreams.shape == (len(starts), HORIZON)
    np.testing.assert_array_equal(scores.dreams, scores.reconstruction)  # a perfect world model reaches the ceiling
    for row, (episode, start) in enumerate(starts):
        frames, decoded = episodes[episode].frames, tokenizer.decode(torch.from_numpy(latents[episode])[None])[0].numpy()
        last = start + CONTEXT - 1
        for h in range(HORIZON):
            target = frames[last + 1 + h]
            assert scores.persistence[row, h] == pytest.approx(hand_psnr(decoded[last], target), abs=1e-4)
            assert scores.reconstruction[row, h] == pytest.approx(hand_psnr(decoded[last + 1 + h], target), abs=1e-4)
            assert scores.copy_last_frame[row, h] == pytest.approx(hand_psnr(frames[last], target), abs=1e-4)
    summary = scores.summary(CONTEXT, 4, "oracle")
    assert summary["horizons"] == list(range(1, HORIZON + 1)) and summary["contexts"] == len(starts)
    assert summary["psnr"] == summary["reconstruction_psnr"]
    assert summary["persistence_psnr"] == pytest.approx(scores.persistence.mean(0).tolist(), abs=1e-4)
    # The example shown in the report: the context's real frames, then the dream (here: the reconstruction).
    np.testing.assert_array_equal(scores.example["real"], episodes[0].frames[:CONTEXT + HORIZON])
    np.testing.assert_array_equal(scores.example["dream"][:CONTEXT], episodes[0].frames[:CONTEXT])
    np.testing.assert_array_equal(scores.example["dream"][CONTEXT:], scores.example["reconstruction"][CONTEXT:])


def test_a_world_model_that_dreams_nothing_moves_scores_persistence() -> None:
    episodes, tokenizer = make_episodes(), PoolingTokenizer()
    latents = [tokenizer.encode(e.frames) for e in episodes]
    scores = score_dreams(StandStill(), tokenizer, episodes, latents, CONTEXT, HORIZON, per_episode=2)
    np.testing.assert_allclose(scores.dreams, scores.persistence, rtol=0, atol=1e-5)


def tiny_world_model(agent: bool) -> torch.nn.Module:
    from modeling_dreamer import DreamerAgentModel, DreamerConfig, DreamerModel

    config = DreamerConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                           time_every=2, num_register_tokens=1, k_max=4, mtp_length=1, num_bins=17, latent_channels=4,
                           latent_height=2, latent_width=2, action_space={"action": {"type": "categorical", "n": 3}})
    torch.manual_seed(0)
    model = (DreamerAgentModel if agent else DreamerModel)(config).eval()
    with torch.no_grad():  # a freshly initialised model barely reads its action embedding: make it matter
        for name, param in model.named_parameters():
            if "action" in name:
                param.mul_(50)
    return model


@pytest.mark.parametrize("agent", [True, False], ids=["agent model", "phase-1 model"])
def test_the_world_model_dreams_with_each_true_action_where_it_leads(agent: bool) -> None:
    """Dreamt frame h follows the action taken at frame context + h - 1: changing the action after dreamt frame 1
    changes dreamt frames 2.. and nothing before; the same seed gives the same dreams."""
    model = tiny_world_model(agent)
    context = torch.randn(2, CONTEXT, 4, 2, 2).clamp(-1, 1)
    actions = torch.randint(0, 3, (2, CONTEXT + HORIZON - 1))
    mask = torch.ones(2, CONTEXT + HORIZON - 1, dtype=torch.bool)

    def dream(a: torch.Tensor) -> torch.Tensor:
        return CachedWorldModel(model, num_steps=2, seed=7).dream(context, {"action": a}, mask, HORIZON)

    first = dream(actions)
    assert first.shape == (2, HORIZON, 4, 2, 2) and torch.isfinite(first).all()
    torch.testing.assert_close(dream(actions), first, rtol=0, atol=0)
    changed = actions.clone()
    changed[:, CONTEXT + 1] = (changed[:, CONTEXT + 1] + 1) % 3  # taken at dreamt frame 1
    second = dream(changed)
    torch.testing.assert_close(second[:, :2], first[:, :2], rtol=0, atol=0)
    assert (second[:, 2] - first[:, 2]).abs().max() > 1e-4


SUMMARY_FIELDS = {
    "tokenizer": ("psnr", "baseline_psnr"),
    "dreams": ("horizons", "psnr", "persistence_psnr", "reconstruction_psnr", "copy_last_frame_psnr"),
    "returns": ("random", "behaviour", "phase2", "phase3"),
    "paired": ("phase3_minus_phase2", "phase3_minus_behaviour"),
}


@pytest.mark.slow
def test_env_demo_runs_end_to_end_at_smoke_sizes_and_writes_every_summary_field(tmp_path: Path) -> None:
    pytest.importorskip("pygame", reason="CartPole renders with pygame (the envs extra)")
    output = tmp_path / "demo"
    result = subprocess.run([sys.executable, "scripts/env_demo.py", "--env", "CartPole-v1", "--policy",
                             "recipes.env_policies:cartpole_policy", "--output", str(output), "--recipe", "smoke"],
                            cwd=ROOT, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "SDL_VIDEODRIVER": "dummy"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((output / "summary.json").read_text())
    for section, names in SUMMARY_FIELDS.items():
        assert set(names) <= set(summary[section]), section
    assert summary["dreams"]["horizons"] == list(range(1, 17))
    for key in SUMMARY_FIELDS["dreams"][1:]:
        assert len(summary["dreams"][key]) == 16 and all(np.isfinite(summary["dreams"][key])), key
    for name in SUMMARY_FIELDS["returns"]:
        assert set(summary["returns"][name]) == {"mean", "stderr", "episodes"} and summary["returns"][name]["episodes"] == 3
    for name in SUMMARY_FIELDS["paired"]:
        assert set(summary["paired"][name]) == {"mean", "stderr"}
    # The paired difference is that of the per-episode returns written by envs.evaluate.
    phase3, phase2 = (json.loads((output / "eval" / f"{n}.json").read_text())["returns"] for n in ("phase3", "phase2"))
    assert summary["paired"]["phase3_minus_phase2"]["mean"] == pytest.approx(np.mean(np.subtract(phase3, phase2)))
    assert {"record", "tokenizer", "prepare", "dynamics", "agent", "imagination", "dreams", "total"} <= set(summary["seconds"])
    for name in ("report.md", "returns.png", "dreams_strip.png", "dreams.gif", "dreams_psnr.png"):
        assert (output / name).is_file(), name
    assert "![returns](returns.png)" in (output / "report.md").read_text()
    # Each stage ran from its own recipe file, kept beside the runs.
    assert sorted(p.name for p in (output / "recipes").iterdir()) == ["agent.yaml", "dynamics.yaml", "imagination.yaml",
                                                                      "tokenizer.yaml"]
