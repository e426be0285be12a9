#!/usr/bin/env python
"""Train a Dreamer world model or agent with Accelerate: one loop (`training/loop.py`), one module per
stage (`training/stages/`).

    accelerate launch [--config_file accelerate_configs/cpu.yaml] train.py --config recipes/demo_agent.yaml \\
        [--key value ...]
    python train.py --config recipes/demo_agent.yaml        # one device, no launcher needed

Stages: `dynamics` (DreamerV4 phase 1), `agent` (phase 2); `python train.py --help` lists every argument.
See docs/training.md.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse the arguments, pick the stage, run the loop; returns the final held-out metrics."""
    from training.arguments import parse_arguments
    from training.checkpointing import RunError
    from training.loop import train
    from training.stages import STAGES

    args = parse_arguments(argv, STAGES)
    try:
        stage = STAGES[args.training.stage](args)
        return train(stage, args)
    except (RunError, ValueError) as error:
        # Bad input or an impossible request: one clear line, no traceback.
        raise SystemExit(f"train.py: error: {error}") from None


if __name__ == "__main__":
    main(sys.argv[1:])
