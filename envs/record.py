"""Record a policy playing a gymnasium environment, as an HF dataset of frames, actions and rewards.

    python -m envs.record --env ENV_ID --policy MODULE:CALLABLE|random --episodes N --seed S \\
        --frame-size 64 --output DIR [--max-steps M] [--env-kwargs JSON] [--overwrite] [--no-progress] \\
        [--push-to-hub ORG/NAME]

Episode e is ``env.reset(seed=S + e)``, played by ``policy(env.unwrapped, observation, rng)`` with
``rng = numpy.random.default_rng(S + e)``, until the env says `terminated` or `truncated`, or for at most
M steps (the episode is then marked `truncated`). Frames come from the image observation or from
``render()`` in `rgb_array` mode, resized to `--frame-size` (`envs.frames`). The folder's layout and
columns: `envs.recording`; the whole contract: docs/environments.md. `--push-to-hub ORG/NAME` then uploads the
folder as a Hub dataset repository (`envs.hub.push_recording`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from envs.environment import open_env
from envs.frames import RESAMPLING, env_frame
from envs.policies import load_policy
from envs.recording import FORMAT, FORMAT_VERSION, RecordingWriter


def check_counts(episodes: int, max_steps: int | None) -> None:
    """`--episodes` >= 1 and `--max-steps` None or >= 1, else a `ValueError` naming the argument."""
    if isinstance(episodes, bool) or not isinstance(episodes, int) or episodes < 1:
        raise ValueError(f"--episodes must be an integer >= 1, got {episodes!r}")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1):
        raise ValueError(f"--max-steps must be an integer >= 1, got {max_steps!r}")


def record_episodes(
    env_id: str,
    output: str | Path,
    policy: str = "random",
    episodes: int = 1,
    seed: int = 0,
    frame_size: int = 64,
    max_steps: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Record `episodes` episodes of `env_id` played by `policy` into `output`; returns the metadata written.

    Bad arguments (unknown env, continuous actions, no frames, a bad policy, an output folder in use)
    raise a `ValueError` naming the argument before anything is written.
    """
    from tqdm.auto import tqdm

    check_counts(episodes, max_steps)
    if isinstance(frame_size, bool) or not isinstance(frame_size, int) or frame_size < 8:
        raise ValueError(f"--frame-size must be an integer >= 8 (pixels), got {frame_size!r}")
    opened = open_env(env_id, frames=True, env_kwargs=env_kwargs)
    env, mapping = opened.env, opened.mapping
    writer = None
    try:
        play = load_policy(policy, mapping)
        writer = RecordingWriter(output, mapping, overwrite=overwrite)
        lengths, returns, ends = [], [], {"terminated": 0, "truncated": 0, "capped": 0}
        started = time.perf_counter()
        bar = tqdm(total=episodes, unit="episode", desc=f"recording {env_id}", disable=not progress)
        for episode in range(episodes):
            episode_seed = seed + episode
            observation, _ = env.reset(seed=episode_seed)
            rng = np.random.default_rng(episode_seed)
            frames = [env_frame(env, observation, opened.frame_source, frame_size)]
            actions: list[dict[str, int | bool]] = []
            rewards = [0.0]
            terminated = truncated = False
            while True:
                if max_steps is not None and len(actions) >= max_steps:
                    truncated = True  # cut here by --max-steps: the env did not end the episode
                    ends["capped"] += 1
                    break
                action = play(env.unwrapped, observation, rng)
                try:
                    actions.append(mapping.from_env(action))
                except ValueError as error:
                    raise ValueError(f"--policy {policy!r} at episode {episode}, step {len(actions)}: {error}") from None
                observation, reward, terminated, truncated, _ = env.step(action)
                rewards.append(float(reward))
                frames.append(env_frame(env, observation, opened.frame_source, frame_size))
                if terminated or truncated:
                    break
            ends["terminated"] += bool(terminated)
            ends["truncated"] += bool(truncated)
            writer.add_episode(episode, frames, actions, rewards, terminated, truncated)
            lengths.append(len(actions))
            returns.append(float(sum(rewards)))
            bar.set_postfix(steps=sum(lengths), refresh=False)
            bar.update(1)
        bar.close()
        seconds = time.perf_counter() - started
        steps = int(sum(lengths))
        metadata = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "env_id": env_id,
            "env_kwargs": dict(env_kwargs or {}),
            "policy": policy,
            "episodes": episodes,
            "seed": seed,
            "episode_seeds": [seed + e for e in range(episodes)],
            "seed_rule": "episode e: env.reset(seed=seed + e); policy rng numpy.random.default_rng(seed + e)",
            "max_steps": max_steps,
            "frame_size": [frame_size, frame_size],
            "frame_source": opened.frame_source,
            "resampling": RESAMPLING,
            "observation_space": str(env.observation_space),
            "action_mapping": mapping.describe(),
            "frames": writer.rows,
            "steps": steps,
            "episode_lengths": lengths,
            "returns": returns,
            "episode_ends": ends,
            "seconds": round(seconds, 3),
            "steps_per_second": round(steps / seconds, 1) if seconds > 0 else None,
            "gymnasium_version": _gymnasium_version(),
        }
        writer.close(metadata)
        writer = None
        return metadata
    finally:
        if writer is not None:
            writer.abort()
        env.close()


def _gymnasium_version() -> str:
    import gymnasium

    return gymnasium.__version__


def parse_env_kwargs(text: str | None) -> dict[str, Any]:
    """`--env-kwargs` JSON object -> dict (a `ValueError` naming the argument otherwise)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"--env-kwargs is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--env-kwargs must be a JSON object, got {text!r}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m envs.record", description=__doc__.split("\n")[0])
    parser.add_argument("--env", required=True, help="a registered gymnasium env id (module:EnvId imports module first)")
    parser.add_argument("--policy", default="random", help="MODULE:CALLABLE, policy(env, observation, rng) -> action, or 'random'")
    parser.add_argument("--episodes", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0, help="episode e is reset with seed + e")
    parser.add_argument("--frame-size", type=int, default=64, help="frames are resized to this many pixels square")
    parser.add_argument("--output", required=True, help="folder of the recording (must be new or empty)")
    parser.add_argument("--max-steps", type=int, default=None, help="end (truncate) an episode after this many steps")
    parser.add_argument("--env-kwargs", default=None, help='JSON object of keyword arguments for gymnasium.make, e.g. \'{"frames": 100}\'')
    parser.add_argument("--overwrite", action="store_true", help="replace an existing recording in --output")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--push-to-hub", metavar="ORG/NAME", default=None,
                        help="then upload the recording to this Hub dataset repository (created if missing)")
    args = parser.parse_args(argv)
    try:
        metadata = record_episodes(args.env, args.output, args.policy, args.episodes, args.seed, args.frame_size,
                                   args.max_steps, parse_env_kwargs(args.env_kwargs), args.overwrite, not args.no_progress)
    except ValueError as error:
        parser.error(str(error))
    print(f"wrote {metadata['episodes']} episodes, {metadata['frames']} frames to {args.output} "
          f"({metadata['steps_per_second']} steps/s)")
    if args.push_to_hub:
        from envs.hub import push_recording

        print(f"pushed the recording to the dataset repository {push_recording(args.output, args.push_to_hub)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
