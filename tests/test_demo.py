"""`make demo`'s pipeline end to end, in its quick form (a few steps per stage, a short game): every step runs
and `summary.json` carries what the demo promises. Slow: it starts several training processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_quick_demo_writes_report_and_summary(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "scripts/demo.py", "--quick", "--output", str(tmp_path / "out"),
                             "--data", str(tmp_path / "data")], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    imagination = summary["imagination"]
    assert set(imagination) >= {"return_phase2", "return_phase3", "episodes"} and imagination["episodes"] == 4
    assert all(isinstance(imagination[k], float) for k in ("return_phase2", "return_phase3"))
    # The paired gold and death differences are those of the per-episode figures of the two agents.
    game = summary["game"]
    for name, key in (("gold", "gold_per_episode"), ("deaths", "deaths_per_episode")):
        assert len(game["phase3"][key]) == 4
        expected = sum(a - b for a, b in zip(game["phase3"][key], game["phase2"][key])) / 4
        assert imagination[f"paired_{name}_difference"] == pytest.approx(expected)
    assert summary["generation"]["num_steps_4"]["copy_last_frame_mse"] > 0
    assert set(summary["checks"]) == {"reward_auc_at_least_0.9", "movement_top1_at_least_twice_majority",
                                      "generated_frames_beat_copying_the_last_frame", "phase3_return_above_phase2"}
    # Rare events are judged by threshold-free metrics, beside the linear-probe baseline.
    assert 0.0 <= summary["reward_ap"] <= 1.0 and len(summary["reward_ap_per_offset"]) == len(summary["reward_auc_per_offset"])
    assert {"reward_auc", "reward_ap"} <= set(summary["probe_baseline"])
    kinds = {entry["type"] for entry in summary["bc"].values()}
    assert kinds == {"binary", "categorical"}
    for entry in summary["bc"].values():
        keys = {"auc", "average_precision", "press_rate", "probe_auc"} if entry["type"] == "binary" else {
            "balanced_accuracy", "probe_top1", "probe_balanced_accuracy"}
        assert keys <= set(entry)
    assert "average precision" in (tmp_path / "out" / "report.md").read_text()
    for name in ("report.md", "loss_curves.png", "rewards_pred_vs_true.png", "bc_accuracy_per_offset.png"):
        assert (tmp_path / "out" / name).is_file(), name
    assert (tmp_path / "out" / "imagination" / "final" / "config.json").is_file()
