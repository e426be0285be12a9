"""The GPU check script is ready for a device: its dry run (every step at tiny sizes, on the CPU) completes, each
step succeeds, and the resumed run's final model equals the straight one bitwise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # every benchmark and a few training runs at tiny sizes: a few minutes on 2 cores
def test_the_gpu_check_dry_run_completes(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "2"}
    subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(tmp_path)], env=env,
                   check=True, capture_output=True, timeout=1200)
    results = [json.loads(line) for line in (tmp_path / "gpu_check.jsonl").read_text().splitlines()]
    steps = {r["step"]: r for r in results}
    failed = {step: r.get("last_line") for step, r in steps.items() if r["rc"] != 0}
    assert not failed, failed
    for name in ("model tiny eager ", "train", "run cpu agent", "run cpu resume", "run cpu imagination",
                 "run cpu tokenizer", "tests gpu"):
        assert name in steps, name
    assert steps["run cpu resume is bitwise"]["bitwise"] is True
    assert steps["train"]["loop_step_s"] > 0 and "loop_over_bare" in steps["train"]
