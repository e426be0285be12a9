"""Environments: the coin game, recording any gymnasium environment, and evaluating policies in it.

`import envs` registers `CoinGame-v0` with gymnasium (when it is installed: the `envs` extra; the coin
game itself is plain numpy). Everything else is imported on first use (torch only where an agent plays),
so `import envs` costs no more than gymnasium's registry. docs/environments.md describes the package.

| module | what |
|---|---|
| `coin_game` | the demo's game (`CoinGame`), its rules, movement slices and latent renderer |
| `coin_env` | `CoinGameEnv`, the game as a `gymnasium.Env` (`CoinGame-v0`), and its board drawing |
| `scripted_player` | the scripted player (`ScriptedPlayer`, `scripted_policy`) |
| `coin_play` | whole episodes of the game (`play_episode`, `Episode`) and the demo's seed scheme |
| `coin_evaluation` | `evaluate_policy`, `PolicyEvaluation`: the demo's paired evaluation on latents |
| `pairing` | `mean_and_stderr`, `paired_difference`, `pair` (of two `envs.evaluate` results) |
| `action_mapping` | `ActionMapping`: gymnasium action spaces <-> categorical / binary components |
| `policies` | the policy contract, `load_policy("MODULE:CALLABLE" or "random")` |
| `environment` | `open_env`: make an env by id and check that it qualifies |
| `frames` | frames from an env (image observation or `render()`), resized |
| `recording` | the recorded dataset's files (`RecordingWriter`, `load_recording`) |
| `record` | `python -m envs.record` |
| `agent_player` | a `DreamerAgent` with its tokenizer playing a batch of envs in lockstep |
| `evaluate` | `python -m envs.evaluate` |
"""

from __future__ import annotations

import importlib
from typing import Any

COIN_GAME_ID = "CoinGame-v0"

try:
    from gymnasium.envs.registration import register, registry
except ImportError:  # the coin game itself is plain numpy: data.synthetic and the demo run without gymnasium
    pass
else:
    if COIN_GAME_ID not in registry:
        # The env ends its episodes itself (truncated at its `frames`), so no TimeLimit wrapper is added.
        register(id=COIN_GAME_ID, entry_point="envs.coin_env:CoinGameEnv")

_EXPORTS = {
    "CoinGame": "envs.coin_game",
    "GameRules": "envs.coin_game",
    "Observation": "envs.coin_game",
    "CoinGameEnv": "envs.coin_env",
    "ScriptedPlayer": "envs.scripted_player",
    "PlayerStyle": "envs.scripted_player",
    "scripted_policy": "envs.scripted_player",
    "Episode": "envs.coin_play",
    "play_episode": "envs.coin_play",
    "video_seeds": "envs.coin_play",
    "evaluation_seeds": "envs.coin_play",
    "evaluate_policy": "envs.coin_evaluation",
    "PolicyEvaluation": "envs.coin_evaluation",
    "mean_and_stderr": "envs.pairing",
    "paired_difference": "envs.pairing",
    "pair": "envs.pairing",
    "ActionMapping": "envs.action_mapping",
    "load_policy": "envs.policies",
    "open_env": "envs.environment",
    "load_recording": "envs.recording",
    "record_episodes": "envs.record",
    "evaluate_episodes": "envs.evaluate",
}

__all__ = ["COIN_GAME_ID", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'envs' has no attribute {name!r}")
