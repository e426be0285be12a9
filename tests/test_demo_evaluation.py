"""The demo's paired comparison of two agents on the same game seeds."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

from demo_evaluation import paired_difference  # noqa: E402


def test_paired_difference_mean_and_standard_error() -> None:
    # Differences 2, 3, 0: mean 5/3; sample variance ((1/3)^2 + (4/3)^2 + (5/3)^2) / 2 = 7/3; s.e. sqrt(7/9).
    mean, stderr = paired_difference([3.0, 5.0, 4.0], [1.0, 2.0, 4.0])
    assert mean == pytest.approx(5 / 3)
    assert stderr == pytest.approx((7 / 9) ** 0.5)
    assert paired_difference([1.0], [0.5]) == (0.5, None)
