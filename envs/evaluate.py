"""Evaluate a policy or a trained agent in a gymnasium environment, on seeds that pair across runs.

    python -m envs.evaluate --env ENV_ID (--agent AGENT_DIR --tokenizer TOKENIZER_DIR | --policy MODULE:CALLABLE|random) \\
        --episodes N --seed S --output FILE.json [--greedy] [--max-steps M] [--batch-size B] [--env-kwargs JSON]

Episode e is ``env.reset(seed=S + e)`` (the seeds of `python -m envs.record`), played until `terminated`,
`truncated` or M steps. FILE.json holds per-episode `returns` (sum of the step rewards) and `lengths` (steps),
their `mean` and `stderr`, and the `seeds`, so two runs on the same seeds pair up:
`envs.pairing.pair(a_json, b_json)` (or ``python -m envs.pairing A.json B.json``) is the paired difference.

- A policy (``policy(env.unwrapped, observation, rng)``, rng ``numpy.random.default_rng(S + e)``) plays the
  episodes one by one, on the env's own observations (no frames are rendered).
- An agent sees frames (`envs.agent_player`): batches of up to B episodes (default: all) step in lockstep.
  Batch k (episodes k * B ..) seeds the agent's one generator with S + k * B; the generator draws the
  observation noise of every frame the agent commits (at its context signal level) and, unless `--greedy`,
  the sampled actions, for the whole batch at once. So results depend on B, greedy or not: two agent runs
  pair up when they use the same B.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from envs.environment import OpenedEnv, open_env
from envs.pairing import mean_and_stderr
from envs.policies import Policy, load_policy

if TYPE_CHECKING:  # torch and the models load only for an agent
    from envs.agent_player import AgentPlayer
from envs.record import check_counts, parse_env_kwargs


def _play_policy(opened: OpenedEnv, policy: Policy, seeds: list[int], max_steps: int | None, progress: bool,
                 spec: str) -> tuple[np.ndarray, np.ndarray]:
    """(returns, lengths) `(N,)` of the policy playing one episode per seed, one after the other."""
    from tqdm.auto import tqdm

    env = opened.env
    returns, lengths = np.zeros(len(seeds)), np.zeros(len(seeds), np.int64)
    for episode, seed in enumerate(tqdm(seeds, unit="episode", desc=f"evaluating on {opened.env_id}", disable=not progress)):
        observation, _ = env.reset(seed=seed)
        rng = np.random.default_rng(seed)
        while max_steps is None or lengths[episode] < max_steps:
            action = policy(env.unwrapped, observation, rng)
            if not env.action_space.contains(action):
                raise ValueError(f"--policy {spec!r} at episode {episode}, step {lengths[episode]}: action {action!r} "
                                 f"is not in the action space {env.action_space}")
            observation, reward, terminated, truncated, _ = env.step(action)
            returns[episode] += float(reward)
            lengths[episode] += 1
            if terminated or truncated:
                break
    return returns, lengths


def _play_agent(env_id: str, env_kwargs: dict[str, Any], player: "AgentPlayer", seeds: list[int],
                max_steps: int | None, batch_size: int, progress: bool, first: OpenedEnv) -> tuple[np.ndarray, np.ndarray]:
    """(returns, lengths) `(N,)` of the agent, in lockstep batches of `batch_size` envs (`first` and copies)."""
    from tqdm.auto import tqdm

    pool = [first] + [open_env(env_id, frames=True, env_kwargs=env_kwargs) for _ in range(min(batch_size, len(seeds)) - 1)]
    returns, lengths = [], []
    try:
        with tqdm(total=len(seeds), unit="episode", desc=f"agent on {env_id}", disable=not progress) as bar:
            for start in range(0, len(seeds), batch_size):
                chunk = seeds[start:start + batch_size]
                r, n = player.play([opened.env for opened in pool[:len(chunk)]], chunk, first.frame_source, max_steps,
                                   agent_seed=seeds[0] + start)
                returns.append(r)
                lengths.append(n)
                bar.update(len(chunk))
    finally:
        for opened in pool[1:]:
            opened.close()
    return np.concatenate(returns), np.concatenate(lengths)


def evaluate_episodes(
    env_id: str,
    policy: str | None = None,
    agent: str | Path | None = None,
    tokenizer: str | Path | None = None,
    episodes: int = 10,
    seed: int = 0,
    max_steps: int | None = None,
    greedy: bool = False,
    batch_size: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Play `episodes` episodes with `policy` (a ``MODULE:CALLABLE`` or ``random``) or with `agent` + `tokenizer`
    (folders); returns the result written by ``python -m envs.evaluate`` (module docstring)."""
    check_counts(episodes, max_steps)
    if (policy is None) == (agent is None):
        raise ValueError("give either --policy or --agent (with --tokenizer), not both or neither")
    if agent is not None and tokenizer is None:
        raise ValueError("--agent needs --tokenizer: the agent acts on latents of the tokenizer it was trained with")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"--batch-size must be an integer >= 1, got {batch_size!r}")
    env_kwargs = dict(env_kwargs or {})
    seeds = [seed + e for e in range(episodes)]
    opened = open_env(env_id, frames=agent is not None, env_kwargs=env_kwargs)
    try:
        if policy is not None:
            who = {"policy": policy}
            play = load_policy(policy, opened.mapping)
            started = time.perf_counter()
            returns, lengths = _play_policy(opened, play, seeds, max_steps, progress, policy)
        else:
            from envs.agent_player import AgentPlayer

            batch_size = batch_size or episodes
            who = {"agent": str(agent), "tokenizer": str(tokenizer), "greedy": greedy, "batch_size": batch_size}
            player = AgentPlayer(agent, tokenizer, opened.mapping, device=device, greedy=greedy)
            started = time.perf_counter()  # playing only: loading the models is not a step
            returns, lengths = _play_agent(env_id, env_kwargs, player, seeds, max_steps, batch_size, progress, opened)
        seconds = time.perf_counter() - started
    finally:
        opened.close()
    mean, stderr = mean_and_stderr(returns)
    steps = int(lengths.sum())
    return {
        "env": env_id,
        "env_kwargs": env_kwargs,
        **who,
        "episodes": episodes,
        "seed": seed,
        "seeds": seeds,
        "max_steps": max_steps,
        "returns": returns.tolist(),
        "lengths": lengths.tolist(),
        "mean": mean,
        "stderr": stderr,
        "mean_length": float(lengths.mean()),
        "action_space": opened.mapping.action_space,
        "seconds": round(seconds, 3),
        "steps_per_second": round(steps / seconds, 1) if seconds > 0 else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m envs.evaluate", description=__doc__.split("\n")[0])
    parser.add_argument("--env", required=True, help="a registered gymnasium env id (module:EnvId imports module first)")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--policy", help="MODULE:CALLABLE, policy(env, observation, rng) -> action, or 'random'")
    who.add_argument("--agent", help="a saved DreamerAgentModel folder (needs --tokenizer)")
    parser.add_argument("--tokenizer", help="the DreamerTokenizer folder whose latents the agent was trained on")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0, help="episode e is reset with seed + e")
    parser.add_argument("--output", required=True, help="FILE.json to write")
    parser.add_argument("--greedy", action="store_true", help="the agent takes its most likely action (default: samples)")
    parser.add_argument("--max-steps", type=int, default=None, help="end an episode after this many steps")
    parser.add_argument("--batch-size", type=int, default=None, help="agent only: episodes played in lockstep (default: all)")
    parser.add_argument("--device", default=None, help="agent only: torch device (default: cuda if available, else cpu)")
    parser.add_argument("--env-kwargs", default=None, help="JSON object of keyword arguments for gymnasium.make")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.tokenizer is not None and args.agent is None:
        parser.error("--tokenizer goes with --agent")
    try:
        result = evaluate_episodes(args.env, args.policy, args.agent, args.tokenizer, args.episodes, args.seed,
                                   args.max_steps, args.greedy, args.batch_size, parse_env_kwargs(args.env_kwargs),
                                   args.device, not args.no_progress)
    except (ValueError, OSError) as error:
        parser.error(str(error))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1))
    stderr = "n/a" if result["stderr"] is None else f"{result['stderr']:.3f}"
    print(f"{args.episodes} episodes: mean return {result['mean']:.3f} (stderr {stderr}), "
          f"{result['steps_per_second']} steps/s -> {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
