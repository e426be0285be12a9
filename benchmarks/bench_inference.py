"""Inference speed of a Dreamer agent: `act()` latency and imagination throughput, with the KV cache against
recomputing the whole context window every frame (same run, same model).

    python benchmarks/bench_inference.py --preset tiny --latent-shape 32 16 16 [--device cpu|cuda]

- act(): `DreamerAgent.act` at batch 1 with a full context (the time window of `--context` frames is already
  filled before timing): per-frame latency p50 / p99 over `--frames` frames. The comparison is the same frame
  fed by recomputing the full window (the last `--context` frames, one uncached forward pass).
- rollouts: `DreamerAgentModel.imagine` from a `--context`-frame context, horizon `--horizon`, K = `--num-steps`
  sampler steps per frame, at each `--rollout-batch` size: `frames_per_s` counts the whole call (committing
  the context included); `generated_frames_per_s` is the rate of the generation loop alone, from the
  difference between a rollout of `--horizon` frames and one of 1 frame from the same context.

- `--live`: the live configuration of a real-time agent: the `medium` preset (about 127M parameters at 32 x 16 x 16
  latents), 16 frames of context, batch 1, no rollouts (`--rollout-batch` to add some).

Precision: fp32 on CPU, bf16 weights on CUDA (inference needs no fp32 master copy; `--dtype` overrides).
`--compile` wraps the model's forward in `torch.compile` (timed after the warm-up frames). Random weights: speed
does not depend on what the model learned. Prints one JSON line, with the process's peak resident memory
(`peak_rss_mb`) and, on CUDA, the peak allocated device memory.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "medium", "large"])
    parser.add_argument("--latent-shape", type=int, nargs=3, default=[32, 16, 16], metavar=("C", "H", "W"))
    parser.add_argument("--context", type=int, default=64, help="time_context_length: frames a frame reads")
    parser.add_argument("--frames", type=int, default=50, help="act() calls timed")
    parser.add_argument("--horizon", type=int, default=16, help="imagined frames per rollout")
    parser.add_argument("--num-steps", type=int, default=4, help="shortcut sampler steps per generated frame")
    parser.add_argument("--rollout-batch", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--attn-implementation", default=None, help="default: the model's choice per device")
    parser.add_argument("--live", action="store_true", help="the live configuration: medium preset, context 16, "
                        "batch 1, no rollouts unless --rollout-batch is given")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16"], help="default: bf16 on CUDA, fp32 else")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model's forward")
    args = parser.parse_args()
    if args.live:
        args.preset, args.context = "medium", 16
        args.rollout_batch = args.rollout_batch if args.rollout_batch != [1, 64] else []
    return args


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB (Linux reports ru_maxrss in KiB)."""
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    args = parse_args()
    import torch

    from modeling_dreamer import DreamerAgent, DreamerAgentModel, DreamerConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.bfloat16 if device.type == "cuda" else torch.float32)
    c, h, w = args.latent_shape
    config = DreamerConfig.from_preset(args.preset, latent_channels=c, latent_height=h, latent_width=w,
                                       time_context_length=args.context)
    kwargs = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
    torch.manual_seed(0)
    model = DreamerAgentModel._from_config(config, **kwargs).to(device=device, dtype=dtype).eval()
    if args.compile:
        model.forward = torch.compile(model.forward, dynamic=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    stream = torch.randn(args.context + args.frames, c, h, w, device=device, dtype=dtype)
    with torch.no_grad():
        # ---- act() with the cache, after filling the context ----
        agent = DreamerAgent(model, seed=0)
        agent.reset(batch_size=1)
        for t in range(args.context):
            agent.act(stream[t][None])
        cached: list[float] = []
        for t in range(args.context, args.context + args.frames):
            sync()
            start = time.perf_counter()
            agent.act(stream[t][None])
            sync()
            cached.append(time.perf_counter() - start)

        # ---- the same frames, recomputing the whole window each time ----
        level = torch.full((1, args.context), config.context_tau, device=device)
        step = torch.full_like(level, 1.0 / config.k_max)
        recomputed: list[float] = []
        for t in range(args.context, args.context + args.frames):
            window = stream[t - args.context + 1 : t + 1][None]
            sync()
            start = time.perf_counter()
            model(window, level, step)
            sync()
            recomputed.append(time.perf_counter() - start)

        # ---- imagination rollouts ----
        rollouts = {}
        for batch in args.rollout_batch:
            context = torch.randn(batch, args.context, c, h, w, device=device, dtype=dtype)
            generator = torch.Generator(device=device).manual_seed(0)
            model.imagine(context[:, :2], None, 2, args.num_steps, generator=generator)  # warm-up (a short context)
            sync()
            start = time.perf_counter()
            model.imagine(context, None, args.horizon, args.num_steps, generator=generator)
            sync()
            seconds = time.perf_counter() - start
            start = time.perf_counter()
            model.imagine(context, None, 1, args.num_steps, generator=generator)
            sync()
            one_frame = time.perf_counter() - start
            generated = batch * (args.horizon - 1) / max(seconds - one_frame, 1e-9) if args.horizon > 1 else None
            rollouts[str(batch)] = {"seconds": round(seconds, 3), "frames_per_s": round(batch * args.horizon / seconds, 1),
                                    "generated_frames_per_s": round(generated, 1) if generated else None}

    ms = lambda values, q: round(1000 * percentile(values, q), 2)  # noqa: E731
    print(json.dumps({
        "peak_rss_mb": peak_rss_mb(),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated(device) / 2**20, 1) if device.type == "cuda" else None,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "dtype": str(dtype).removeprefix("torch."), "preset": args.preset,
        "latent_shape": args.latent_shape, "context_frames": args.context, "tokens_per_frame":
        config.num_latent_tokens + config.num_register_tokens + 2 + config.num_agent_tokens,
        "attn_implementation": model.config._attn_implementation, "compiled": args.compile,
        "parameters_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "act_ms": {"p50": ms(cached, 0.5), "p99": ms(cached, 0.99)},
        "recompute_window_ms": {"p50": ms(recomputed, 0.5), "p99": ms(recomputed, 0.99)},
        "act_speedup_p50": round(statistics.median(recomputed) / statistics.median(cached), 1),
        "rollout": {"horizon": args.horizon, "num_steps": args.num_steps, **rollouts},
    }))


if __name__ == "__main__":
    main()
