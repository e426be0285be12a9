"""Training-step throughput of the Dreamer model, as model FLOP utilisation (MFU).

    python benchmarks/bench_model.py --preset tiny --batch-size 2 --frames 16 --latent-shape 32 16 16

One train step = forward + backward + fused AdamW step of ``DreamerAgentModel`` (``--no-agent``:
``DreamerModel``) on random inputs, with a plain sum-of-squares loss over every output. FLOPs are
counted once with ``torch.utils.flop_counter`` (matmuls and attention; elementwise ops are free).
The reference peak is a 2048x2048 fp32 matmul measured in the same process, interleaved with the
step timings because this machine's speed drifts; MFU = achieved GFLOP/s / matmul GFLOP/s, per
repeat, and the JSON line reports medians. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "medium", "large"])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--latent-shape", type=int, nargs=3, default=[32, 16, 16], metavar=("C", "H", "W"))
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--attn-implementation", default="sdpa", choices=["eager", "sdpa"])
    parser.add_argument("--softcap", type=float, default=None, help="override attn_logit_softcap; 0 disables it")
    parser.add_argument("--no-agent", action="store_true", help="benchmark DreamerModel without agent tokens/heads")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps-per-repeat", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from modeling_dreamer import DreamerAgentModel, DreamerConfig, DreamerModel

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, args.dtype)
    c, h, w = args.latent_shape
    overrides = {"latent_channels": c, "latent_height": h, "latent_width": w}
    if args.softcap is not None:
        overrides["attn_logit_softcap"] = args.softcap or None
    config = DreamerConfig.from_preset(args.preset, **overrides)
    config._attn_implementation = args.attn_implementation
    torch.manual_seed(0)
    model = (DreamerModel if args.no_agent else DreamerAgentModel)(config).to(device=device, dtype=dtype).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    step_model = torch.compile(model) if args.compile else model

    b, t = args.batch_size, args.frames
    latents = torch.randn(b, t, c, h, w, device=device, dtype=dtype)
    signal_level = torch.randint(0, config.k_max + 1, (b, t), device=device) / config.k_max
    step_size = 1.0 / 2 ** torch.randint(0, 7, (b, t), device=device).float()
    actions = {
        name: torch.randint(0, spec.get("n", 2), (b, t), device=device) for name, spec in config.action_space.items()
    }
    independent = torch.arange(b, device=device) == 0  # one example in independent-frame mode

    def train_step() -> None:
        out = step_model(latents, signal_level, step_size, actions=actions, independent_frames=independent)
        loss = out.latent_pred.float().square().mean()
        if not args.no_agent:
            loss = loss + out.reward_logits.float().square().mean() + out.value_logits.float().square().mean()
            loss = loss + sum(x.float().square().mean() for x in out.policy_logits.values())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    with FlopCounterMode(display=False) as counter:
        train_step()
    step_flops = counter.get_total_flops()
    for _ in range(args.warmup):
        train_step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    a = torch.randn(2048, 2048, device=device)
    matmul_flops = 2 * 2048**3
    step_times, mfus, matmul_gflops = [], [], []
    for _ in range(args.repeats):
        sync()
        start = time.perf_counter()
        for _ in range(10):
            a @ a
        sync()
        peak = 10 * matmul_flops / (time.perf_counter() - start) / 1e9
        start = time.perf_counter()
        for _ in range(args.steps_per_repeat):
            train_step()
        sync()
        step_time = (time.perf_counter() - start) / args.steps_per_repeat
        step_times.append(step_time)
        matmul_gflops.append(peak)
        mfus.append(step_flops / step_time / 1e9 / peak)

    step_time = statistics.median(step_times)
    if device.type == "cuda":
        peak_memory_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_memory_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # process peak RSS
    print(
        json.dumps(
            {
                "preset": args.preset,
                "model": "DreamerModel" if args.no_agent else "DreamerAgentModel",
                "batch_size": b,
                "frames": t,
                "latent_shape": [c, h, w],
                "tokens_per_frame": config.num_latent_tokens + config.num_register_tokens + 2
                + (0 if args.no_agent else config.agent_tokens_per_frame),
                "attn_implementation": args.attn_implementation,
                "attn_logit_softcap": config.attn_logit_softcap,
                "compile": args.compile,
                "dtype": args.dtype,
                "device": str(device),
                "threads": torch.get_num_threads(),
                "parameters": sum(p.numel() for p in model.parameters()),
                "step_gflop": round(step_flops / 1e9, 2),
                "step_time_s": round(step_time, 4),
                "frames_per_s": round(b * t / step_time, 2),
                "achieved_gflops": round(step_flops / step_time / 1e9, 1),
                "matmul_gflops": round(statistics.median(matmul_gflops), 1),
                "mfu": round(statistics.median(mfus), 3),
                "mfu_min_max": [round(min(mfus), 3), round(max(mfus), 3)],
                "peak_memory_mb": round(peak_memory_mb, 1),
                "repeats": args.repeats,
            }
        )
    )


if __name__ == "__main__":
    main()
