"""Scripted behaviour policies of the environments `make demo-env` and the docs run (the policy contract:
`envs/policies.py`, ``policy(env, observation, rng) -> action``, `env` unwrapped, `rng` seeded per episode).

Each is decent but imperfect on purpose: behaviour cloning copies its flaws, so imagination training (phase 3)
has room to do better than the play it learned from. This is the only module besides the coin game that names
an environment; the pipeline itself (`scripts/env_demo.py`, `envs/`) takes any policy as ``MODULE:CALLABLE``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# CartPole-v1: push towards where the pole is falling, judged by its angle and angular velocity. Alone this
# controller balances for the whole 500 steps; with each push replaced by a coin flip half of the time it
# drops the pole after about 150 steps (measured over 200 seeds: mean 151, standard error 8; random play: 24).
CARTPOLE_ANGLE_VELOCITY_GAIN = 0.5
CARTPOLE_RANDOM_PUSH_PROBABILITY = 0.5


def cartpole_policy(env: Any, observation: Any, rng: np.random.Generator) -> int:
    """CartPole-v1: 1 (push right) when the pole leans or swings right, else 0; a random push half of the time.
    Reads the true state from the unwrapped env (the agent that clones it sees only frames)."""
    if rng.random() < CARTPOLE_RANDOM_PUSH_PROBABILITY:
        return int(rng.integers(2))
    _, _, angle, angular_velocity = env.state
    return int(angle + CARTPOLE_ANGLE_VELOCITY_GAIN * angular_velocity > 0)


# Acrobot-v1 (torques -1, 0, +1 on the joint between the links): torque against the first link's swing, which
# pumps energy into the swing. Alone it reaches the goal height in about 84 steps; with each torque replaced by a
# uniform choice half of the time, in about 155 (measured over 30 seeds: 84.2 +- 2.8 and 155.1 +- 4.0; random play
# never reaches it within the 500 steps). The CPU recipe's agent stage was then tuned on this environment.
ACROBOT_RANDOM_TORQUE_PROBABILITY = 0.5


def acrobot_policy(env: Any, observation: Any, rng: np.random.Generator) -> int:
    """Acrobot-v1: torque -1 (action 0) while the first link swings in the positive direction, else +1 (action
    2); a uniformly random action half of the time. Reads the true state from the unwrapped env."""
    if rng.random() < ACROBOT_RANDOM_TORQUE_PROBABILITY:
        return int(rng.integers(3))
    _, _, first_link_velocity, _ = env.state
    return 0 if first_link_velocity > 0 else 2


# MountainCar-v0 (push left, none, right): push the way the car moves, which pumps energy into the swing between
# the hills. Alone it reaches the flag in about 126 steps; with a uniformly random action 30% of the time, in
# about 159 (measured over 30 seeds: 126.5 +- 6.1 and 158.7 +- 2.3; random play never reaches it within the 200
# steps). Written after the CPU recipe was fixed: an environment the recipe was not tuned on.
MOUNTAINCAR_RANDOM_ACTION_PROBABILITY = 0.3


def mountaincar_policy(env: Any, observation: Any, rng: np.random.Generator) -> int:
    """MountainCar-v0: push right (2) while the car moves right, else left (0); a uniformly random action 30% of
    the time. Reads the true state from the unwrapped env."""
    if rng.random() < MOUNTAINCAR_RANDOM_ACTION_PROBABILITY:
        return int(rng.integers(3))
    _, velocity = env.state
    return 2 if velocity > 0 else 0
