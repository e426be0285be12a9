#!/usr/bin/env python
"""Train a Dreamer model with Accelerate: one loop (`training/loop.py`), one module per stage
(`training/stages/`).

    accelerate launch [--config_file accelerate_configs/cpu.yaml] train.py --config recipes/demo_agent.yaml \\
        [--key value ...]
    python train.py --config recipes/demo_agent.yaml        # one device, no launcher needed

Stages (`--stage`): `dynamics` (DreamerV4 phase 1, dynamics pretraining), `agent` (phase 2, agent
finetuning), `imagination` (phase 3, PMPO in imagination); `python train.py --help` lists every argument,
`python train.py --stage agent --help` a stage's. See docs/training.md.

Bad input and impossible requests (the project's `DreamerError`s) end with one line naming the file, argument
or problem; any other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Parse the arguments, pick the stage, run the loop; returns the final held-out metrics."""
    from modeling_dreamer.errors import ArgumentError, DreamerError
    from training.arguments import parse_arguments
    from training.loop import train
    from training.stages import STAGES

    try:
        args = parse_arguments(argv, STAGES)
        return train(STAGES[args.training.stage](args), args)
    except ArgumentError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except DreamerError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main(sys.argv[1:])
