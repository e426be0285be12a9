#!/usr/bin/env python
"""From pixels to an agent, in any gymnasium environment with discrete actions: one command.

    python scripts/env_demo.py --env ENV_ID --policy MODULE:CALLABLE --output DIR [--recipe cpu|gpu|smoke|FILE.yaml]
        [--env-kwargs JSON] [--threads N] [--start-at STEP] [--push-to-hub ORG/NAME-PREFIX]

Each step is the command a user would type; this script chains them and reads their outputs:

1. record the behaviour policy (`python -m envs.record`), and a few held-out episodes on other seeds;
2. train the tokenizer on the frames (`train.py --stage tokenizer`);
3. encode the recording into the prepared dataset (`python -m data.prepare --episodes`);
4. phase 1, 2 and 3 (`train.py --stage dynamics`, `agent`, `imagination`);
5. evaluate: dreams of the world model on the held-out episodes (`scripts/env_evaluation.py`), and the true return
   of random play, the behaviour policy and the phase-2 and phase-3 agents on the same seeds (`python -m
   envs.evaluate`, paired with `envs.pairing`);
6. write DIR/report.md (with pictures) and DIR/summary.json; with --push-to-hub, share the tokenizer, the agent
   and the recording (`envs.hub`).

A recipe (recipes/env_<name>.yaml) holds the sizes: the recording's, each `train.py` stage's arguments (written to
DIR/recipes/<stage>.yaml and run with `--config`), and the evaluation's. Nothing here knows the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `envs`, `data` and `training` are folders of the checkout
sys.path.insert(0, str(ROOT / "scripts"))

STAGES = ("tokenizer", "dynamics", "agent", "imagination")
POLICIES = ("random", "behaviour", "phase2", "phase3")
# The steps in order; `--start-at STEP` reuses the outputs of the earlier ones in DIR (e.g. to try phase-3 knobs).
STEPS = ("record", "tokenizer", "prepare", "dynamics", "agent", "imagination", "evaluate")


# ---- running the steps ----


class Pipeline:
    """Runs each step as its own process (teeing its output to DIR/logs/<step>.log) and times it."""

    def __init__(self, output: Path, threads: int | None) -> None:
        self.output = output
        self.logs = output / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.seconds: dict[str, float] = {}
        # SDL_VIDEODRIVER: classic-control environments render with pygame, which needs no display this way.
        self.env = {**os.environ, "SDL_VIDEODRIVER": os.environ.get("SDL_VIDEODRIVER", "dummy"),
                    "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        if threads:
            self.env["OMP_NUM_THREADS"] = str(threads)

    def run(self, step: str, command: list[str]) -> None:
        print(f"\n=== {step}\n$ {' '.join(command)}", flush=True)
        started = time.time()
        with (self.logs / f"{step}.log").open("w") as log:
            process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                if "\r" not in line:  # progress bars stay in the log
                    sys.stdout.write(line)
            code = process.wait()
        if code != 0:
            raise SystemExit(f"step '{step}' failed with exit code {code}; see {self.logs / f'{step}.log'}")
        self.seconds[step] = round(time.time() - started, 1)

    def timed(self, step: str):
        """A context manager timing an in-process step into `seconds`."""
        pipeline = self

        class Timer:
            def __enter__(self) -> None:
                print(f"\n=== {step}", flush=True)
                self.started = time.time()

            def __exit__(self, *exc: Any) -> None:
                pipeline.seconds[step] = round(time.time() - self.started, 1)

        return Timer()


def load_recipe(name: str) -> tuple[dict[str, Any], Path]:
    """The recipe `recipes/env_<name>.yaml` (or a YAML file given by path) and where it was read from."""
    import yaml

    path = Path(name) if name.endswith((".yaml", ".yml")) else ROOT / "recipes" / f"env_{name}.yaml"
    if not path.is_file():
        raise SystemExit(f"--recipe {name}: no file {path}")
    recipe = yaml.safe_load(path.read_text())
    missing = [key for key in ("record", "heldout", "evaluate", "dreams", *STAGES) if key not in recipe]
    if missing:
        raise SystemExit(f"--recipe {path}: missing sections {missing}")
    return recipe, path


def write_stage_recipes(recipe: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Each stage's `train.py` arguments as its own recipe file, so every run can be repeated as it is."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for stage in STAGES:
        paths[stage] = folder / f"{stage}.yaml"
        paths[stage].write_text(yaml.safe_dump({"stage": stage, **recipe[stage]}, sort_keys=False))
    return paths


def record_command(env_id: str, policy: str, output: Path, settings: dict[str, Any], env_kwargs: str | None) -> list[str]:
    command = [sys.executable, "-m", "envs.record", "--env", env_id, "--policy", policy, "--episodes",
               str(settings["episodes"]), "--seed", str(settings["seed"]), "--frame-size", str(settings["frame_size"]),
               "--output", str(output), "--overwrite", "--no-progress"]
    if settings.get("max_steps"):
        command += ["--max-steps", str(settings["max_steps"])]
    return command + (["--env-kwargs", env_kwargs] if env_kwargs else [])


def evaluate_command(env_id: str, who: list[str], output: Path, settings: dict[str, Any], env_kwargs: str | None) -> list[str]:
    command = [sys.executable, "-m", "envs.evaluate", "--env", env_id, *who, "--episodes", str(settings["episodes"]),
               "--seed", str(settings["seed"]), "--output", str(output), "--no-progress"]
    if settings.get("max_steps"):
        command += ["--max-steps", str(settings["max_steps"])]
    if settings.get("batch_size"):
        command += ["--batch-size", str(settings["batch_size"])]
    return command + (["--env-kwargs", env_kwargs] if env_kwargs else [])


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def final_metrics(run: Path) -> dict[str, float]:
    return read_json(run / "eval_metrics.json")


# ---- evaluation ----


def evaluate_dreams(output: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """The phase-2 world model's dreams on the held-out recording (the world model phase 3 imagines in), with
    pictures; returns the `dreams` section of the summary."""
    import torch

    from data.episodes import encode_episode
    from env_evaluation import CachedWorldModel, plot_dreams, read_episodes, score_dreams, write_gif, write_strip
    from modeling_dreamer import DreamerAgentModel, DreamerTokenizer

    torch.manual_seed(0)
    tokenizer = DreamerTokenizer.from_pretrained(output / "tokenizer" / "final").eval()
    episodes = read_episodes(output / "heldout")
    latents = [encode_episode(tokenizer, episode.frames) for episode in episodes]
    model = DreamerAgentModel.from_pretrained(output / "agent" / "final")
    world = CachedWorldModel(model, num_steps=settings["num_steps"], seed=settings.get("seed", 0))
    context, horizon = settings["context"], settings["horizon"]
    scores = score_dreams(world, tokenizer, episodes, latents, context, horizon, settings["per_episode"])
    dreams = scores.summary(context, settings["num_steps"], "phase-2 agent (agent/final)")
    write_strip(scores.example, context, output / "dreams_strip.png")
    write_gif(scores.example, context, output / "dreams.gif")
    plot_dreams(dreams, output / "dreams_psnr.png")
    return dreams


def returns_of(result: dict[str, Any]) -> dict[str, Any]:
    return {"mean": result["mean"], "stderr": result["stderr"], "episodes": result["episodes"]}


def paired(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    from envs.pairing import pair

    difference = pair(a, b)
    return {"mean": difference["mean"], "stderr": difference["stderr"]}


def criteria(summary: dict[str, Any]) -> dict[str, Any]:
    """The bars of docs/environments.md ("From pixels to an agent"), each with the figures it is judged on."""
    tokenizer, dreams, returns, pairs = summary["tokenizer"], summary["dreams"], summary["returns"], summary["paired"]
    above = [h for h, d, p in zip(dreams["horizons"], dreams["psnr"], dreams["persistence_psnr"]) if d > p]
    judged = [h for h in dreams["horizons"] if 4 <= h <= 16]
    gap = returns["behaviour"]["mean"] - returns["random"]["mean"]
    closed = (returns["phase2"]["mean"] - returns["random"]["mean"]) / gap if gap > 0 else None
    difference = pairs["phase3_minus_phase2"]
    return {
        "tokenizer_3db_above_baseline": tokenizer["psnr"] - tokenizer["baseline_psnr"] >= 3.0,
        "tokenizer_gain_db": round(tokenizer["psnr"] - tokenizer["baseline_psnr"], 3),
        "dreams_above_persistence_at_horizons_4_to_16": bool(judged) and all(h in above for h in judged),
        "dream_horizons_above_persistence": above,
        "phase2_gap_closed": None if closed is None else round(closed, 4),
        "phase2_closes_80_percent_of_the_gap": closed is not None and closed >= 0.8,
        "phase3_above_phase2_by_two_stderr": difference["stderr"] is not None
        and difference["mean"] > 2 * difference["stderr"],
        "phase3_above_behaviour": pairs["phase3_minus_behaviour"]["mean"] > 0,
        "phase3_above_behaviour_by_two_stderr": pairs["phase3_minus_behaviour"]["stderr"] is not None
        and pairs["phase3_minus_behaviour"]["mean"] > 2 * pairs["phase3_minus_behaviour"]["stderr"],
    }


def machine() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}


# ---- sharing ----


def share(output: Path, prefix: str) -> dict[str, str]:
    """Push the tokenizer, the phase-3 agent (naming the tokenizer's Hub id) and the recording."""
    from envs.hub import push_model, push_recording

    tokenizer = push_model(output / "tokenizer" / "final", f"{prefix}-tokenizer")
    agent = push_model(output / "imagination" / "final", f"{prefix}-agent", config_updates={"tokenizer_name": tokenizer})
    episodes = push_recording(output / "recording", f"{prefix}-episodes")
    return {"tokenizer": tokenizer, "agent": agent, "episodes": episodes}


# ---- the report ----


def report(summary: dict[str, Any]) -> str:
    t, d, r, p, c = (summary[k] for k in ("tokenizer", "dreams", "returns", "paired", "criteria"))
    seconds = summary["seconds"]
    def fmt(x: float | None, digits: int = 2) -> str:
        return "n/a" if x is None else f"{x:.{digits}f}"

    def verdict(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    rows = [f"| {h} | {fmt(a)} | {fmt(b)} | {fmt(e)} | {fmt(f)} |" for h, a, b, e, f in
            zip(d["horizons"], d["psnr"], d["persistence_psnr"], d["reconstruction_psnr"], d["copy_last_frame_psnr"])]
    lines = [
        f"# From pixels to an agent: `{summary['env']}`",
        "",
        f"Behaviour policy `{summary['policy']}`, recipe `{summary['recipe']}`; {summary['recording']['episodes']} "
        f"recorded episodes ({summary['recording']['frames']:,} frames of {summary['recording']['frame_size']} px).",
        f"Machine: {summary['machine']['platform']}, {summary['machine']['cpu_count']} CPUs, torch "
        f"{summary['machine']['torch']} ({summary['machine']['cuda'] or 'no GPU'}).",
        "",
        "Wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()),
        "",
        "## Tokenizer (held-out episodes)",
        "",
        f"PSNR {fmt(t['psnr'])} dB against {fmt(t['baseline_psnr'])} dB for an area-downsampled image that keeps as "
        f"many numbers as the latent {tuple(t['latent_shape'])} (gain {fmt(t['psnr'] - t['baseline_psnr'])} dB; "
        f"bar: 3 dB, {verdict(c['tokenizer_3db_above_baseline'])}).",
        "",
        "## Dreams (held-out episodes, true actions)",
        "",
        f"{d['contexts']} contexts of {d['context_frames']} real frames; the world model ({d['world_model']}) "
        f"dreams {len(d['horizons'])} frames with K = {d['num_steps']} sampler steps, each committed with the true "
        "action taken after it; the tokenizer decodes. PSNR (dB) against the real frames; persistence is the decoded "
        "last context frame repeated, the ceiling the tokenizer's reconstruction of the real frames.",
        f"Dreams above persistence at every horizon 4-16: {verdict(c['dreams_above_persistence_at_horizons_4_to_16'])} "
        f"(above at horizons {c['dream_horizons_above_persistence']}).",
        "",
        "| horizon | dreams | persistence (decoded) | reconstruction (ceiling) | real last frame repeated |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "![PSNR per horizon](dreams_psnr.png)",
        "",
        "Real frames, reconstructions and dreams (the last context frame, then the dream):",
        "",
        "![strip](dreams_strip.png)",
        "",
        "![dreams](dreams.gif)",
        "",
        "## Returns in the true environment",
        "",
        f"{r['random']['episodes']} episodes per policy on the same seeds; the agents act on the env's frames through "
        "the tokenizer and the KV-cached `act()`, sampling their actions.",
        "",
        "| policy | mean return | standard error |",
        "|---|---|---|",
        *[f"| {name} | {fmt(r[name]['mean'])} | {fmt(r[name]['stderr'])} |" for name in POLICIES],
        "",
        f"- phase 2 closes {fmt(100 * c['phase2_gap_closed'] if c['phase2_gap_closed'] is not None else None, 1)}% of "
        f"the gap from random to the behaviour policy (bar: 80%, {verdict(c['phase2_closes_80_percent_of_the_gap'])})",
        f"- phase 3 - phase 2, paired by seed: {fmt(p['phase3_minus_phase2']['mean'])} (standard error "
        f"{fmt(p['phase3_minus_phase2']['stderr'])}; bar: above two standard errors, "
        f"{verdict(c['phase3_above_phase2_by_two_stderr'])})",
        f"- phase 3 - behaviour, paired by seed: {fmt(p['phase3_minus_behaviour']['mean'])} (standard error "
        f"{fmt(p['phase3_minus_behaviour']['stderr'])}; above: {verdict(c['phase3_above_behaviour'])})",
        "",
        "![returns](returns.png)",
        "",
        "Raw numbers: `summary.json`, `eval/*.json`, `<stage>/metrics.jsonl`; the stages' recipes in `recipes/`; logs "
        "in `logs/`.",
    ]
    if summary.get("hub"):
        lines += ["", "Shared on the Hub: " + ", ".join(f"{k} `{v}`" for k, v in summary["hub"].items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", required=True, help="a gymnasium env id (module:EnvId imports module first)")
    parser.add_argument("--policy", required=True, help="the behaviour policy, MODULE:CALLABLE or random")
    parser.add_argument("--output", required=True, help="the folder of every run, result and the report")
    parser.add_argument("--recipe", default="cpu", help="cpu | gpu | smoke (recipes/env_<name>.yaml) or a YAML file of the same sections")
    parser.add_argument("--env-kwargs", default=None, help="JSON object of keyword arguments for gymnasium.make")
    parser.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of every step (default: torch's)")
    parser.add_argument("--push-to-hub", metavar="ORG/NAME-PREFIX", default=None,
                        help="share NAME-PREFIX-tokenizer, NAME-PREFIX-agent and NAME-PREFIX-episodes on the Hub")
    parser.add_argument("--start-at", choices=STEPS, default=STEPS[0],
                        help="reuse the outputs of the steps before this one, already in --output")
    args = parser.parse_args(argv)
    todo = set(STEPS[STEPS.index(args.start_at):])

    recipe, recipe_path = load_recipe(args.recipe)
    output = Path(args.output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    pipeline = Pipeline(output, args.threads)
    stage_recipes = write_stage_recipes(recipe, output / "recipes")
    python, started = sys.executable, time.time()

    # 1. the data: the behaviour policy's episodes, and held-out ones on other seeds for the dreams
    if "record" in todo:
        pipeline.run("record", record_command(args.env, args.policy, output / "recording", recipe["record"],
                                              args.env_kwargs))
        pipeline.run("record_heldout", record_command(args.env, args.policy, output / "heldout",
                                                      {**recipe["record"], **recipe["heldout"]}, args.env_kwargs))

    # 2-4. the tokenizer, the prepared dataset, phases 1-3: each the command a user types
    def train(stage: str, dataset: Path, init_from: Path | None = None) -> None:
        if stage not in todo:
            return
        command = [python, "train.py", "--config", str(stage_recipes[stage]), "--dataset_path", str(dataset),
                   "--output_dir", str(output / stage), "--overwrite_output_dir", "true"]
        pipeline.run(stage, command + (["--init_from", str(init_from)] if init_from else []))

    train("tokenizer", output / "recording")
    if "prepare" in todo:
        pipeline.run("prepare", [python, "-m", "data.prepare", "--episodes", str(output / "recording"), "--tokenizer",
                                 str(output / "tokenizer" / "final"), "--output", str(output / "prepared"),
                                 "--overwrite", "--no-progress"])
    train("dynamics", output / "prepared")
    train("agent", output / "prepared", output / "dynamics" / "final")
    train("imagination", output / "prepared", output / "agent" / "final")

    # 5. evaluation: dreams, then the four policies on the same seeds in the true environment
    with pipeline.timed("dreams"):
        dreams = evaluate_dreams(output, recipe["dreams"])
    evaluation = output / "eval"
    tokenizer_dir = str(output / "tokenizer" / "final")
    players = {"random": ["--policy", "random"], "behaviour": ["--policy", args.policy],
               "phase2": ["--agent", str(output / "agent" / "final"), "--tokenizer", tokenizer_dir],
               "phase3": ["--agent", str(output / "imagination" / "final"), "--tokenizer", tokenizer_dir]}
    for name, who in players.items():
        pipeline.run(f"evaluate_{name}", evaluate_command(args.env, who, evaluation / f"{name}.json", recipe["evaluate"],
                                                          args.env_kwargs))
    results = {name: read_json(evaluation / f"{name}.json") for name in POLICIES}

    # 6. the summary, the report and its pictures
    from env_evaluation import plot_returns
    from modeling_dreamer import DreamerTokenizerConfig

    tokenizer_metrics = final_metrics(output / "tokenizer")
    recording = read_json(output / "recording" / "recording.json")
    summary: dict[str, Any] = {
        "env": args.env, "env_kwargs": json.loads(args.env_kwargs) if args.env_kwargs else {}, "policy": args.policy,
        "recipe": str(recipe_path.relative_to(ROOT) if recipe_path.is_relative_to(ROOT) else recipe_path),
        "recording": {"episodes": recording["episodes"], "frames": recording["frames"],
                      "frame_size": recording["frame_size"][0], "return_mean": sum(recording["returns"]) / recording["episodes"]},
        "tokenizer": {"psnr": tokenizer_metrics["eval/psnr"], "baseline_psnr": tokenizer_metrics["eval/baseline_psnr"],
                      "latent_shape": list(DreamerTokenizerConfig.from_pretrained(tokenizer_dir).latent_shape)},
        "dreams": dreams,
        "returns": {name: returns_of(results[name]) for name in POLICIES},
        "paired": {"phase3_minus_phase2": paired(results["phase3"], results["phase2"]),
                   "phase3_minus_behaviour": paired(results["phase3"], results["behaviour"]),
                   "phase2_minus_random": paired(results["phase2"], results["random"])},
        "imagination": {k.removeprefix("eval/"): v for k, v in final_metrics(output / "imagination").items()
                        if not k.startswith("eval/bc_top1")},
        "agent": {k.removeprefix("eval/"): v for k, v in final_metrics(output / "agent").items()
                  if k.startswith(("eval/continuation", "eval/bc_top1/", "eval/dynamics_loss", "eval/reward_auc"))
                  and "/offset_" not in k},
        "machine": machine(),
    }
    summary["criteria"] = criteria(summary)
    plot_returns(summary["returns"], output / "returns.png", args.env)
    if args.push_to_hub:
        with pipeline.timed("push_to_hub"):
            summary["hub"] = share(output, args.push_to_hub)
    summary["seconds"] = {**pipeline.seconds, "total": round(time.time() - started, 1)}
    summary["reused_steps"] = [step for step in STEPS if step not in todo]  # run before, not timed here
    (output / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (output / "report.md").write_text(report(summary))
    print(f"\nfinished in {summary['seconds']['total']:.0f} s: {output / 'report.md'}")
    print(json.dumps(summary["criteria"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
