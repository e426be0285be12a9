"""The scripted behaviour policies of recipes/env_policies.py on hand states, and their imperfection."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from recipes.env_policies import acrobot_policy, cartpole_policy, mountaincar_policy


class NeverRandom:
    """A generator whose `random()` never falls below the random-action probability."""

    def random(self) -> float:
        return 0.99

    def integers(self, n: int) -> int:
        raise AssertionError("no random action was asked for")


@pytest.mark.parametrize("state, expected", [((0.0, 0.0, 0.1, 0.0), 1), ((0.0, 0.0, -0.1, 0.0), 0),
                                             ((0.0, 0.0, 0.1, -0.4), 0), ((0.0, 0.0, -0.1, 0.4), 1)])
def test_cartpole_pushes_where_the_pole_is_falling(state: tuple, expected: int) -> None:
    # angle + 0.5 * angular velocity: 0.1, -0.1, -0.1, 0.1
    assert cartpole_policy(SimpleNamespace(state=state), None, NeverRandom()) == expected


@pytest.mark.parametrize("velocity, expected", [(0.3, 0), (-0.3, 2), (0.0, 2)])
def test_acrobot_torques_against_the_first_links_swing(velocity: float, expected: int) -> None:
    assert acrobot_policy(SimpleNamespace(state=(0.5, -0.2, velocity, 1.0)), None, NeverRandom()) == expected


@pytest.mark.parametrize("velocity, expected", [(0.01, 2), (-0.01, 0), (0.0, 0)])
def test_mountaincar_pushes_the_way_the_car_moves(velocity: float, expected: int) -> None:
    assert mountaincar_policy(SimpleNamespace(state=(-0.5, velocity)), None, NeverRandom()) == expected


@pytest.mark.parametrize("policy, state, actions, p_random", [(cartpole_policy, (0.0, 0.0, 0.2, 0.0), 2, 0.5),
                                                               (acrobot_policy, (0.0, 0.0, 0.3, 0.0), 3, 0.5),
                                                               (mountaincar_policy, (-0.5, 0.01), 3, 0.3)])
def test_a_share_of_the_actions_is_uniformly_random(policy, state: tuple, actions: int, p_random: float) -> None:
    env, rng = SimpleNamespace(state=state), np.random.default_rng(0)
    chosen = np.array([policy(env, None, rng) for _ in range(4000)])
    scripted = policy(env, None, NeverRandom())
    # P(scripted) = 1 - p + p / actions; every other action p / actions.
    assert np.mean(chosen == scripted) == pytest.approx(1 - p_random + p_random / actions, abs=0.03)
    assert set(chosen.tolist()) == set(range(actions))
