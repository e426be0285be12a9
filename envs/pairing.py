"""Returns over episodes, and the paired comparison of two policies played on the same seeds.

    python -m envs.pairing A.json B.json      # prints the paired difference A - B as JSON

Two policies played on the same episode seeds meet the same worlds, so the per-episode difference of
their returns cancels the luck of the world: its standard error is usually far smaller than that of
either mean (docs/environments.md).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def mean_and_stderr(values: Sequence[float] | np.ndarray) -> tuple[float, float | None]:
    """Mean and standard error of the mean (sample sd / sqrt(n)); the error is None with one value."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("mean_and_stderr: no values")
    stderr = float(values.std(ddof=1) / math.sqrt(values.size)) if values.size > 1 else None
    return float(values.mean()), stderr


def paired_difference(after: Sequence[float] | np.ndarray, before: Sequence[float] | np.ndarray) -> tuple[float, float | None]:
    """Mean and standard error of `after - before` over paired episodes (None with a single pair)."""
    after, before = np.asarray(after, dtype=np.float64), np.asarray(before, dtype=np.float64)
    if after.shape != before.shape:
        raise ValueError(f"paired_difference: {after.shape} returns cannot pair with {before.shape}")
    return mean_and_stderr(after - before)


def _load(result: str | Path | Mapping[str, Any], name: str) -> Mapping[str, Any]:
    if isinstance(result, Mapping):
        return result
    path = Path(result)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"pair: {name} file {path} does not exist") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"pair: {name} file {path} is not JSON: {error}") from None


def pair(a: str | Path | Mapping[str, Any], b: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """The paired difference `a - b` of two `python -m envs.evaluate` results (file paths or loaded dicts).

    Episodes pair up by seed: both results must hold the same `seeds` (in any order) and the same env.
    Returns ``{"mean", "stderr", "episodes"}`` (`stderr` None with a single episode).
    """
    results = {"a": _load(a, "a"), "b": _load(b, "b")}
    for name, result in results.items():
        missing = [key for key in ("returns", "seeds") if key not in result]
        if missing:
            raise ValueError(f"pair: result {name} has no {missing} (not written by envs.evaluate?)")
        if len(result["returns"]) != len(result["seeds"]):
            raise ValueError(f"pair: result {name} has {len(result['returns'])} returns for {len(result['seeds'])} seeds")
    first, second = results["a"], results["b"]
    if first.get("env") != second.get("env"):
        raise ValueError(f"pair: results are of different environments, {first.get('env')!r} and {second.get('env')!r}")
    by_seed = [dict(zip(result["seeds"], result["returns"])) for result in (first, second)]
    if set(by_seed[0]) != set(by_seed[1]) or len(by_seed[0]) != len(first["seeds"]):
        only_a, only_b = sorted(set(by_seed[0]) - set(by_seed[1])), sorted(set(by_seed[1]) - set(by_seed[0]))
        raise ValueError(f"pair: the results' episode seeds differ (only in a: {only_a[:5]}, only in b: {only_b[:5]}; "
                         "or a seed is repeated): evaluate both with the same --seed and --episodes")
    seeds = list(first["seeds"])
    mean, stderr = paired_difference([by_seed[0][s] for s in seeds], [by_seed[1][s] for s in seeds])
    return {"mean": mean, "stderr": stderr, "episodes": len(seeds)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m envs.pairing", description="Paired difference A - B of two envs.evaluate results.")
    parser.add_argument("a", help="FILE.json written by python -m envs.evaluate")
    parser.add_argument("b", help="FILE.json of the other policy, on the same seeds")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(pair(args.a, args.b)))
    except (OSError, ValueError) as error:
        parser.error(str(error))
    return 0


if __name__ == "__main__":
    sys.exit(main())
