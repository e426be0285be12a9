"""Throughput of `train.py`'s real training step against the model-only step of the same configuration.

    python benchmarks/bench_train.py --preset tiny --batch-size 2 --frames 16 --latent-shape 32 16 16

- model-only: forward + backward + AdamW of `DreamerAgentModel` on one random batch already on the device
  (what `bench_model.py` times);
- train.py: `training.loop.train` with stage `agent` on a prepared dataset of the synthetic game at that latent
  shape (built once under `--workdir`): the data loader with the mixture sampler, noise drawn on the device,
  the paper's loss routing (dynamics on uniform windows with the two bootstrap passes, reward on all, BC on
  relevant windows), running-RMS normalisation, the non-finite guard, clipping, AdamW and the schedule.
  Per-step times come from the loop's own `metrics.jsonl` (`elapsed_s`, logged every step), the first
  `--warmup` steps left out.

Both run in this process, one after the other, with the same threads and precision (fp32 on CPU; on CUDA
train.py's bf16 autocast and the model-only step under the same autocast). Reports frames per second of each
and their ratio. The loop's step does more work than the model-only step by construction: the bootstrap
target's two no-gradient forward passes on the examples routed to the dynamics loss. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "medium", "large"])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--latent-shape", type=int, nargs=3, default=[32, 16, 16], metavar=("C", "H", "W"))
    parser.add_argument("--steps", type=int, default=8, help="timed steps of each")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workdir", default="bench_output/train")
    return parser.parse_args()


def prepared_dataset(workdir: Path, latent_shape: list[int]) -> Path:
    """The synthetic game at this latent shape, generated and prepared once."""
    prepared = workdir / f"prepared_{'x'.join(map(str, latent_shape))}"
    if not (prepared / "dataset_dict.json").exists():
        raw = workdir / "raw"
        subprocess.run([sys.executable, "-m", "data.synthetic", "--output", str(raw), "--num-videos", "12",
                        "--frames", "300", "--latent-shape", *map(str, latent_shape)], cwd=ROOT, check=True)
        subprocess.run([sys.executable, "-m", "data.prepare", "--latents-dir", str(raw / "latents"), "--features-dir",
                        str(raw / "features"), "--output", str(prepared), "--overwrite", "--no-progress"],
                       cwd=ROOT, check=True)
    return prepared


def main() -> None:
    args = parse_args()
    import torch

    from modeling_dreamer import DreamerAgentModel, DreamerConfig
    from training.arguments import parse_arguments
    from training.loop import train
    from training.stages import STAGES

    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = (ROOT / args.workdir).resolve()
    dataset = prepared_dataset(workdir, args.latent_shape)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    c, h, w = args.latent_shape
    b, t = args.batch_size, args.frames

    # ---- model-only step ----
    config = DreamerConfig.from_preset(args.preset, latent_channels=c, latent_height=h, latent_width=w)
    torch.manual_seed(0)
    model = DreamerAgentModel._from_config(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    inputs = dict(
        latents=torch.randn(b, t, c, h, w, device=device),
        signal_level=torch.randint(0, config.k_max + 1, (b, t), device=device) / config.k_max,
        step_size=1.0 / 2 ** torch.randint(0, 7, (b, t), device=device).float(),
        actions={n: torch.randint(0, s.get("n", 2), (b, t), device=device) for n, s in config.action_space.items()},
    )
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext

    def model_step() -> None:
        with autocast():
            out = model(**inputs)
        loss = out.latent_pred.float().square().mean() + out.reward_logits.float().square().mean()
        loss = loss + sum(x.float().square().mean() for x in out.policy_logits.values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    model_times = []
    for step in range(args.warmup + args.steps):
        sync()
        start = time.perf_counter()
        model_step()
        sync()
        if step >= args.warmup:
            model_times.append(time.perf_counter() - start)
    del model, optimizer

    # ---- train.py's step ----
    output = workdir / "run"
    argv = ["--dataset_path", str(dataset), "--output_dir", str(output), "--overwrite_output_dir", "true",
            "--stage", "agent", "--preset", args.preset, "--window_length", str(t),
            "--per_device_train_batch_size", str(b), "--max_steps", str(args.warmup + args.steps),
            "--logging_steps", "1", "--save_steps", "0", "--eval_steps", "0", "--max_eval_windows", "1",
            "--report_to", "none", "--learning_rate", "1e-4"]
    run = parse_arguments(argv, STAGES)
    train(STAGES["agent"](run), run)
    elapsed = [r["elapsed_s"] for r in map(json.loads, (output / "metrics.jsonl").read_text().splitlines())
               if "skipped_steps" in r]
    loop_times = [later - earlier for earlier, later in zip(elapsed, elapsed[1:])][args.warmup - 1 :]

    model_step_s, loop_step_s = statistics.median(model_times), statistics.median(loop_times)
    print(json.dumps({
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "threads": torch.get_num_threads(),
        "preset": args.preset, "batch": b, "frames": t, "latent_shape": args.latent_shape,
        "model_step_s": round(model_step_s, 3), "train_step_s": round(loop_step_s, 3),
        "model_frames_per_s": round(b * t / model_step_s, 2), "train_frames_per_s": round(b * t / loop_step_s, 2),
        "train_over_model": round(model_step_s / loop_step_s, 3),
        "model_step_s_all": [round(x, 3) for x in model_times], "train_step_s_all": [round(x, 3) for x in loop_times],
    }))


if __name__ == "__main__":
    main()
