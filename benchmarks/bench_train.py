"""Throughput of `train.py`'s training step, split into what the loop adds and what the objective costs.

    python benchmarks/bench_train.py --preset tiny --batch-size 2 --frames 16 --latent-shape 32 16 16

Three steps of stage `agent` on the same model configuration, in this process, one after the other:

- `model_step`: forward + backward + AdamW of `DreamerAgentModel` on a random batch already on the device, with a
  plain sum-of-squares loss (what `bench_model.py` times): the model alone;
- `bare_step`: the stage's own losses (`AgentStage.compute_losses`: the paper's routing, dynamics with the two
  bootstrap passes on the examples routed to it, reward, behaviour cloning), the running-RMS sum, backward,
  clipping and AdamW, on a fixed batch of the prepared dataset already on the device: the same work as the
  loop's step without the loop;
- `loop_step`: `training.loop.train` itself (the data loader and the mixture sampler, the generator per
  micro-batch, Accelerate's accumulate and backward, the non-finite guard, the schedule, logging), timed from
  its own `metrics.jsonl` (`elapsed_s`, logged every step), the first `--warmup` steps left out.

`loop_over_bare` = bare step time / loop step time is what the loop costs (1.0: nothing). The objective's own
cost is reported apart: `bootstrap_s`, the time of the two no-gradient bootstrap passes alone, and
`bare_over_model`. Precision: fp32 on CPU; on CUDA bf16 autocast for every step, as train.py runs. Prints one
JSON line with the peak resident memory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository's training/ and data/ packages (not installed)


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
    parser.add_argument("--attn-implementation", default=None, help="default: the model's choice per device")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (train.py --torch_compile)")
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


def timed(step, repeats: int, warmup: int, sync) -> list[float]:
    times = []
    for index in range(warmup + repeats):
        sync()
        start = time.perf_counter()
        step()
        sync()
        if index >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    args = parse_args()
    import torch

    from training.arguments import parse_arguments
    from training.data import load_windows
    from training.loop import LogWindow, clip_gradients, train
    from training.objectives import LossNormalizer
    from training.stages import STAGES

    if args.threads:
        torch.set_num_threads(args.threads)
    workdir = (ROOT / args.workdir).resolve()
    dataset = prepared_dataset(workdir, args.latent_shape)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    b, t = args.batch_size, args.frames
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if device.type == "cuda" else contextlib.nullcontext

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    output = workdir / "run"
    argv = ["--dataset_path", str(dataset), "--output_dir", str(output), "--overwrite_output_dir", "true",
            "--stage", "agent", "--preset", args.preset, "--window_length", str(t),
            "--per_device_train_batch_size", str(b), "--max_steps", str(args.warmup + args.steps),
            "--logging_steps", "1", "--save_steps", "0", "--eval_steps", "0", "--max_eval_windows", "1",
            "--report_to", "none", "--learning_rate", "1e-4", "--probe_baseline", "false"]
    if args.attn_implementation:
        argv += ["--attn_implementation", args.attn_implementation]
    if args.compile:
        argv += ["--torch_compile", "true"]
    run_args = parse_arguments(argv, STAGES)

    # ---- the stage's losses without the loop (and the model alone) ----
    stage = STAGES["agent"](run_args)
    data = load_windows(run_args, 1)
    stage.bind_data(data)
    torch.manual_seed(0)
    model, _ = stage.build_model(data.schema)
    model = model.to(device).train()
    stage.configure_trainable(model)
    step_model = torch.compile(model) if args.compile else model
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    batch = next(iter(data.train_loader))
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    normalizer = LossNormalizer(stage.loss_terms).to(device)
    params = [p for p in model.parameters() if p.requires_grad]

    class Clipper:  # what clip_gradients calls on the Accelerator
        clip_grad_norm_ = staticmethod(torch.nn.utils.clip_grad_norm_)

    def bare_step() -> None:
        generator = torch.Generator(device=device).manual_seed(0)
        with autocast():
            result = stage.compute_losses(step_model, batch, generator, model)
        total, _ = normalizer.combine(result.losses, result.counts, stage.loss_weights())
        total.backward()
        clip_gradients(Clipper(), {"all": params}, 1.0, LogWindow())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def model_step() -> None:
        config = model.config
        with autocast():
            out = step_model(batch["latents"].float(), torch.ones(b, t, device=device),
                             torch.full((b, t), 1.0 / config.k_max, device=device),
                             actions={n: batch[n] for n in config.action_space}, action_mask=batch["has_action"])
        loss = out.latent_pred.float().square().mean() + out.reward_logits.float().square().mean()
        loss = loss + sum(x.float().square().mean() for x in out.policy_logits.values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def bootstrap_only() -> None:  # the objective's extra passes: two no-gradient forwards of the routed rows
        from training.objectives import bootstrap_target

        generator = torch.Generator(device=device).manual_seed(0)
        noised = stage.noised_batch(batch, generator)
        rows = noised.dynamics_rows
        if rows:
            index = torch.tensor(rows, device=device)
            inputs = {"actions": {k: v[index] for k, v in noised.inputs["actions"].items()},
                      "action_mask": noised.inputs["action_mask"][index],
                      "independent_frames": noised.inputs["independent_frames"][index]}
            with autocast():
                bootstrap_target(lambda z, tau, d: model(z, tau, d, **inputs).latent_pred.float(), noised.z_tilde[index],
                                 noised.tau[index], noised.step_size[index], 1.0 / model.config.k_max)

    bare_times = timed(bare_step, args.steps, args.warmup, sync)
    model_times = timed(model_step, args.steps, args.warmup, sync)
    bootstrap_times = timed(bootstrap_only, args.steps, args.warmup, sync)

    # ---- train.py's step ----
    train(STAGES["agent"](run_args), run_args)
    elapsed = [r["elapsed_s"] for r in map(json.loads, (output / "metrics.jsonl").read_text().splitlines())
               if "skipped_steps" in r]
    loop_times = [later - earlier for earlier, later in zip(elapsed, elapsed[1:])][args.warmup - 1:]

    median = statistics.median
    model_s, bare_s, loop_s = median(model_times), median(bare_times), median(loop_times)
    print(json.dumps({
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu", "threads": torch.get_num_threads(),
        "preset": args.preset, "batch": b, "frames": t, "latent_shape": args.latent_shape, "compile": args.compile,
        "model_step_s": round(model_s, 4), "bare_step_s": round(bare_s, 4), "loop_step_s": round(loop_s, 4),
        "bootstrap_s": round(median(bootstrap_times), 4),
        "loop_over_bare": round(bare_s / loop_s, 3), "bare_over_model": round(model_s / bare_s, 3),
        "loop_frames_per_s": round(b * t / loop_s, 2),
        "bare_step_s_all": [round(x, 4) for x in bare_times], "loop_step_s_all": [round(x, 4) for x in loop_times],
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if device.type == "cuda" else None,
        "finite": math.isfinite(loop_s),
    }))


if __name__ == "__main__":
    main()
