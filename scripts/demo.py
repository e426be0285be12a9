#!/usr/bin/env python
"""The end-to-end demo behind `make demo`, on a CPU-only machine.

1. generate the synthetic game in the user's formats (`python -m data.synthetic`),
2. prepare it into a DatasetDict (`python -m data.prepare`),
3. pretrain the dynamics briefly (`train.py --stage dynamics`, DreamerV4 phase 1),
4. finetune the agent from that checkpoint (`train.py --stage agent`, phase 2),
5. evaluate on held-out videos and write `report.md`, PNG plots and `summary.json`.

Each step is the same command a user would type; the demo only chains them and reads their outputs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def run(step: str, command: list[str], log: Path) -> float:
    """Run one pipeline step, teeing its output to a log; returns its wall time."""
    print(f"\n=== {step}\n$ {' '.join(command)}", flush=True)
    started = time.time()
    with log.open("w") as handle:
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        assert process.stdout is not None
        for line in process.stdout:
            handle.write(line)
            sys.stdout.write(line)
            sys.stdout.flush()
        code = process.wait()
    if code != 0:
        raise SystemExit(f"demo step '{step}' failed with exit code {code}; see {log}")
    return time.time() - started


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_losses(records: dict[str, list[dict]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(records), figsize=(6 * len(records), 4), squeeze=False)
    for ax, (stage, rows) in zip(axes[0], records.items()):
        steps = [r for r in rows if "step" in r and not r.get("final") and any(k.startswith("loss/") for k in r)]
        for key in sorted({k for r in steps for k in r if k.startswith("loss/")}):
            xs = [r["step"] for r in steps if key in r]
            ys = [r[key] for r in steps if key in r]
            ax.plot(xs, ys, label=key.removeprefix("loss/"))
        ax.set_yscale("log")
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("raw loss (before RMS normalisation)")
        ax.set_title(f"{stage} stage")
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_rewards(predictions: dict[str, np.ndarray], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pred = predictions["reward_pred"][..., 0].ravel()
    true = predictions["reward_true"][..., 0].ravel()
    mask = predictions["reward_mask"][..., 0].ravel().astype(bool)
    pred, true = pred[mask], true[mask]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    rng = np.random.default_rng(0)
    jitter = rng.normal(0, 0.05, size=true.shape)
    axes[0].scatter(true + jitter, pred, s=4, alpha=0.3)
    lo, hi = min(true.min(), pred.min()), max(true.max(), pred.max())
    axes[0].plot([lo, hi], [lo, hi], "k--", lw=1)
    axes[0].set_xlabel("true reward (jittered)")
    axes[0].set_ylabel("predicted reward (offset 0)")
    axes[0].set_title("held-out frames: predicted vs true reward")
    axes[1].hist([np.abs(pred[true == 0]), np.abs(pred[true != 0])], bins=40, label=["no reward", "reward event"],
                 log=True)
    axes[1].set_xlabel("|predicted reward|")
    axes[1].set_title("score separation of reward events")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_bc(metrics: dict[str, float], components: list[str], horizon: int, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    offsets = list(range(horizon + 1))
    for name in components:
        values = [metrics.get(f"eval/bc_top1/{name}/offset_{n}", float("nan")) for n in offsets]
        line, = ax.plot(offsets, values, marker="o", label=name)
        ax.axhline(metrics.get(f"eval/bc_majority/{name}", float("nan")), color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel("MTP offset n (predicting the action at t + n)")
    ax.set_ylabel("held-out top-1 accuracy")
    ax.set_title("behaviour cloning accuracy per offset (dotted: majority class)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="demo_output", help="where the report, plots and runs go")
    parser.add_argument("--data", default="demo_data", help="where the generated and prepared data go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dynamics-recipe", default="recipes/demo_dynamics.yaml")
    parser.add_argument("--agent-recipe", default="recipes/demo_agent.yaml")
    parser.add_argument("--quick", action="store_true", help="a few steps of each stage (for tests)")
    args = parser.parse_args()

    output, data = (ROOT / args.output).resolve(), (ROOT / args.data).resolve()
    output.mkdir(parents=True, exist_ok=True)
    logs = output / "logs"
    logs.mkdir(exist_ok=True)
    python = sys.executable
    quick = ["--max_steps", "3", "--eval_steps", "0", "--save_steps", "0", "--logging_steps", "1"] if args.quick else []
    timings: dict[str, float] = {}
    started = time.time()

    timings["generate"] = run("generate the synthetic game", [
        python, "-m", "data.synthetic", "--output", str(data / "raw"), "--seed", str(args.seed)], logs / "generate.log")
    timings["prepare"] = run("prepare the dataset", [
        python, "-m", "data.prepare", "--latents-dir", str(data / "raw" / "latents"),
        "--features-dir", str(data / "raw" / "features"), "--output", str(data / "prepared"), "--overwrite",
        "--seed", str(args.seed)], logs / "prepare.log")
    timings["dynamics"] = run("phase 1: pretrain the dynamics", [
        python, "train.py", "--config", args.dynamics_recipe, "--dataset_path", str(data / "prepared"),
        "--output_dir", str(output / "dynamics"), "--overwrite_output_dir", "true", *quick], logs / "dynamics.log")
    timings["agent"] = run("phase 2: finetune the agent", [
        python, "train.py", "--config", args.agent_recipe, "--dataset_path", str(data / "prepared"),
        "--output_dir", str(output / "agent"), "--init_from", str(output / "dynamics" / "final"),
        "--overwrite_output_dir", "true", *quick],
        logs / "agent.log")
    timings["total"] = time.time() - started

    # ---- report ----
    dyn_rows = read_metrics(output / "dynamics" / "metrics.jsonl")
    agent_rows = read_metrics(output / "agent" / "metrics.jsonl")
    final = json.loads((output / "agent" / "eval_metrics.json").read_text())
    dyn_final = json.loads((output / "dynamics" / "eval_metrics.json").read_text())
    setup = agent_rows[0]
    config = json.loads((output / "agent" / "final" / "config.json").read_text())
    components = list(config["action_space"])
    predictions = dict(np.load(output / "agent" / "eval_predictions.npz"))

    plot_losses({"dynamics": dyn_rows, "agent": agent_rows}, output / "loss_curves.png")
    plot_rewards(predictions, output / "rewards_pred_vs_true.png")
    plot_bc(final, components, config["mtp_length"], output / "bc_accuracy_per_offset.png")

    bc = {
        name: {
            "top1": final[f"eval/bc_top1/{name}"],
            "majority_rate": final[f"eval/bc_majority/{name}"],
            "top1_per_offset": [final[f"eval/bc_top1/{name}/offset_{n}"] for n in range(config["mtp_length"] + 1)],
        }
        for name in components
    }
    summary = {
        "reward_auc": final["eval/reward_auc"],
        "reward_mae": final["eval/reward_mae"],
        "reward_auc_per_offset": [final.get(f"eval/reward_auc/offset_{n}") for n in range(config["mtp_length"] + 1)],
        "twohot_clamped_share": final["eval/twohot_clamped_share"],
        "dynamics_loss_after_pretraining": dyn_final.get("eval/dynamics_loss"),
        "dynamics_loss_after_finetuning": final.get("eval/dynamics_loss"),
        "bc": bc,
        "checks": {
            "reward_auc_at_least_0.9": final["eval/reward_auc"] >= 0.9,
            "movement_top1_at_least_twice_majority": bc["movement"]["top1"] >= 2 * bc["movement"]["majority_rate"]
            if "movement" in bc else None,
        },
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "device": setup.get("device"),
        "steps": {"dynamics": dyn_rows[0].get("total_steps"), "agent": setup.get("total_steps")},
        "quick": args.quick,
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=2))

    lines = [
        "# DreamerV4 agent finetuning demo",
        "",
        "Synthetic game in the user's formats (`python -m data.synthetic`), prepared with `python -m data.prepare`,",
        "phase 1 (dynamics pretraining) then phase 2 (agent finetuning) with `train.py`, evaluated on held-out videos.",
        "",
        f"- device: {setup.get('device')}, world size {setup.get('world_size')}, mixed precision "
        f"{setup.get('mixed_precision')}",
        f"- steps: dynamics {dyn_rows[0].get('total_steps')}, agent {setup.get('total_steps')}; "
        f"parameters {setup['parameters'].get('total'):,}",
        f"- wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()),
        "",
        "## Held-out results",
        "",
        f"- reward event AUC (offset 0): **{summary['reward_auc']:.3f}** (target >= 0.9)",
        f"- reward MAE (offset 0): {summary['reward_mae']:.3f}; twohot targets clamped: "
        f"{summary['twohot_clamped_share']:.4f}",
        f"- dynamics loss: {summary['dynamics_loss_after_pretraining']:.4f} after phase 1, "
        f"{summary['dynamics_loss_after_finetuning']:.4f} after phase 2",
        "",
        "| action component | top-1 | majority-class rate | ratio |",
        "|---|---|---|---|",
        *[f"| {n} | {v['top1']:.3f} | {v['majority_rate']:.3f} | {v['top1'] / max(v['majority_rate'], 1e-9):.2f} |"
          for n, v in bc.items()],
        "",
        "## Plots",
        "",
        "![loss curves](loss_curves.png)",
        "",
        "![predicted vs true rewards](rewards_pred_vs_true.png)",
        "",
        "![BC accuracy per offset](bc_accuracy_per_offset.png)",
        "",
        "Raw numbers: `summary.json`, `agent/metrics.jsonl`, `dynamics/metrics.jsonl`; logs in `logs/`.",
    ]
    (output / "report.md").write_text("\n".join(lines) + "\n")
    print(f"\nDemo finished in {timings['total']:.0f} s. Report: {output / 'report.md'}")
    print(json.dumps(summary["checks"], indent=2))


if __name__ == "__main__":
    main()
