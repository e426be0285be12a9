"""Training-step throughput of the Dreamer model, as model FLOP utilisation (MFU).

    python benchmarks/bench_model.py --preset tiny --batch-size 2 --frames 16 --latent-shape 32 16 16

One train step = forward + backward + fused AdamW step of ``DreamerAgentModel`` (``--no-agent``:
``DreamerModel``) on random inputs, with a plain sum-of-squares loss over every output.

Precision: on CPU fp32 (the reference); on CUDA bf16 autocast with fp32 master weights, as
training runs (``--precision`` overrides).

FLOPs are counted once with ``torch.utils.flop_counter`` (matmuls and attention; elementwise ops
are free) on a step with the ``eager`` attention, which computes the same math as every backend,
so MFU is comparable across backends. The reference peak is a square matmul measured in the same
process (CPU: 2048^3 fp32; CUDA: 8192^3 bf16), interleaved with the step timings because speed
drifts; MFU = achieved FLOP/s / matmul FLOP/s, per repeat, and the JSON line reports medians.

Input checks: ``model.validate_inputs`` (what ``forward`` runs first) is timed alone on the same
inputs and reported as milliseconds and as a share of the step. Prints one JSON line.

``--variants eager,sdpa:transformers,sdpa:stacked`` times several attention settings on the same
model in the same process, round-robin within each repeat (so drift hits all alike); the JSON line
then has one entry per variant with its median step time, MFU and step-time ratio to the first.
A variant is ``<attn_implementation>[:<sdpa function>]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import time


# A candidate attention variant, measured against transformers' sdpa (``--sdpa-function stacked``);
# the model registers it only if it wins (it did not: docs/model.md).
def sdpa_stacked_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """sdpa with the queries of a KV group stacked along the sequence axis when no mask applies.

    Without a mask every query is independent of the others, so ``(N, H, Lq, Dh)`` queries against
    ``(N, KV, Lk, Dh)`` keys equal ``(N, KV, G * Lq, Dh)`` queries against the same keys: one fused
    call on the un-repeated K/V, without ``enable_gqa``. With a mask (or a soft cap, or plain
    multi-head attention) it is transformers' ``sdpa_attention_forward``.
    """
    import torch.nn.functional as F
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    n, num_heads, q_len, head_dim = query.shape
    num_kv = key.shape[1]
    if attention_mask is not None or num_heads == num_kv or kwargs.get("softcap") is not None:
        return ALL_ATTENTION_FUNCTIONS["sdpa"](
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    stacked = query.reshape(n, num_kv, (num_heads // num_kv) * q_len, head_dim)
    out = F.scaled_dot_product_attention(
        stacked, key, value, dropout_p=dropout if module.training else 0.0, scale=scaling
    )
    return out.view(n, num_heads, q_len, head_dim).transpose(1, 2).contiguous(), None


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small", "medium", "large"])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--latent-shape", type=int, nargs=3, default=[32, 16, 16], metavar=("C", "H", "W"))
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument(
        "--attn-implementation", default="auto", choices=["auto", "eager", "sdpa", "flex_attention"],
        help="auto: the model's per-device default (docs/model.md)",
    )
    parser.add_argument(
        "--sdpa-function", default="dreamer", choices=["dreamer", "transformers", "stacked"],
        help="which function 'sdpa' runs: the model's registration (dreamer), transformers' own, or the "
        "stacked-query GQA variant (to compare the two)",
    )
    parser.add_argument("--softcap", type=float, default=None, help="override attn_logit_softcapping; 0 disables it")
    parser.add_argument("--no-agent", action="store_true", help="benchmark DreamerModel without agent tokens/heads")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model")
    parser.add_argument(
        "--precision", default="auto", choices=["auto", "fp32", "bf16-autocast"],
        help="auto: fp32 on CPU, bf16 autocast with fp32 master weights on CUDA",
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps-per-repeat", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--variants", default=None, help="comma-separated attention variants timed round-robin (see above)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from modeling_dreamer import DreamerAgentModel, DreamerConfig, DreamerModel
    from modeling_dreamer.attention import DREAMER_ATTENTION_FUNCTIONS, resolve_attn_implementation
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = args.precision if args.precision != "auto" else ("bf16-autocast" if device.type == "cuda" else "fp32")
    registered_sdpa = DREAMER_ATTENTION_FUNCTIONS["sdpa"]
    sdpa_functions = {
        "dreamer": registered_sdpa, "transformers": ALL_ATTENTION_FUNCTIONS["sdpa"], "stacked": sdpa_stacked_attention_forward,
    }

    # The candidate computes what transformers' sdpa does (mask-free GQA, as in the space layers).
    q, k, v = torch.randn(3, 4, 7, 8), torch.randn(3, 2, 7, 8), torch.randn(3, 2, 7, 8)
    gqa = type("Module", (), {"num_key_value_groups": 2, "is_causal": False, "training": False})()
    torch.testing.assert_close(
        sdpa_stacked_attention_forward(gqa, q, k, v, None)[0], ALL_ATTENTION_FUNCTIONS["sdpa"](gqa, q, k, v, None)[0]
    )

    def use_variant(variant: str) -> None:
        implementation, _, sdpa_function = variant.partition(":")
        config._attn_implementation = implementation
        DREAMER_ATTENTION_FUNCTIONS["sdpa"] = sdpa_functions[sdpa_function or args.sdpa_function]

    variants = args.variants.split(",") if args.variants else [f"{args.attn_implementation}:{args.sdpa_function}"]

    c, h, w = args.latent_shape
    overrides = {"latent_channels": c, "latent_height": h, "latent_width": w}
    if args.softcap is not None:
        overrides["attn_logit_softcapping"] = args.softcap or None
    config = DreamerConfig.from_preset(args.preset, **overrides)
    config._attn_implementation = variants[0].partition(":")[0]
    torch.manual_seed(0)
    model = (DreamerModel if args.no_agent else DreamerAgentModel)(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    step_model = torch.compile(model) if args.compile else model

    b, t = args.batch_size, args.frames
    latents = torch.randn(b, t, c, h, w, device=device)
    signal_level = torch.randint(0, config.k_max + 1, (b, t), device=device) / config.k_max
    step_size = 1.0 / 2 ** torch.randint(0, 7, (b, t), device=device).float()
    actions = {
        name: torch.randint(0, spec.get("n", 2), (b, t), device=device) for name, spec in config.action_space.items()
    }
    independent = torch.arange(b, device=device) == 0  # one example in independent-frame mode
    inputs = dict(latents=latents, signal_level=signal_level, step_size=step_size, actions=actions, independent_frames=independent)

    def autocast():
        if precision == "bf16-autocast":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(forward=step_model) -> None:
        with autocast():
            out = forward(**inputs)
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

    # FLOPs of the model's math, counted with the eager attention (fused kernels hide theirs).
    config._attn_implementation = "eager"
    with FlopCounterMode(display=False) as counter:
        train_step(model)
    step_flops = counter.get_total_flops()
    for variant in variants:
        use_variant(variant)
        for _ in range(args.warmup):
            train_step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    size, peak_dtype = (8192, torch.bfloat16) if device.type == "cuda" else (2048, torch.float32)
    a = torch.randn(size, size, device=device, dtype=peak_dtype)
    matmul_flops = 2 * size**3
    step_times = {v: [] for v in variants}
    mfus = {v: [] for v in variants}
    matmul_flops_per_s = []
    for _ in range(args.repeats):
        sync()
        start = time.perf_counter()
        for _ in range(10):
            a @ a
        sync()
        peak = 10 * matmul_flops / (time.perf_counter() - start)
        matmul_flops_per_s.append(peak)
        for variant in variants:
            use_variant(variant)
            start = time.perf_counter()
            for _ in range(args.steps_per_repeat):
                train_step()
            sync()
            step_time = (time.perf_counter() - start) / args.steps_per_repeat
            step_times[variant].append(step_time)
            mfus[variant].append(step_flops / step_time / peak)
    use_variant(variants[0])

    # The input checks alone, as forward runs them (synchronous off CUDA, one async flag on CUDA).
    check_times = []
    for _ in range(50):
        sync()
        start = time.perf_counter()
        model.validate_inputs(**inputs)
        sync()
        check_times.append(time.perf_counter() - start)

    check_time = statistics.median(check_times)

    def summary(variant: str) -> dict:
        implementation, _, sdpa_function = variant.partition(":")
        times = step_times[variant]
        return {
            "attn_implementation": implementation,
            "attn_resolved": resolve_attn_implementation(implementation, device, config.attn_logit_softcapping),
            "sdpa_function": sdpa_function or args.sdpa_function,
            "step_time_s": round(statistics.median(times), 4),
            "frames_per_s": round(b * t / statistics.median(times), 2),
            "achieved_gflops": round(step_flops / statistics.median(times) / 1e9, 1),
            "mfu": round(statistics.median(mfus[variant]), 3),
            "mfu_min_max": [round(min(mfus[variant]), 3), round(max(mfus[variant]), 3)],
            "step_time_ratio_to_first": round(statistics.median(times) / statistics.median(step_times[variants[0]]), 3),
        }

    first = summary(variants[0])
    step_time = first["step_time_s"]
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
                + (0 if args.no_agent else config.num_agent_tokens),
                **{k: v for k, v in first.items() if k != "step_time_ratio_to_first"},
                "variants": [summary(v) for v in variants] if len(variants) > 1 else None,
                "attn_logit_softcapping": config.attn_logit_softcapping,
                "compile": args.compile,
                "precision": precision,
                "device": str(device),
                "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "threads": torch.get_num_threads(),
                "parameters": sum(p.numel() for p in model.parameters()),
                "step_gflop": round(step_flops / 1e9, 2),
                "matmul_peak": f"{size}^3 {str(peak_dtype).removeprefix('torch.')}",
                "matmul_gflops": round(statistics.median(matmul_flops_per_s) / 1e9, 1),
                "input_check_ms": round(check_time * 1e3, 3),
                "input_check_share": round(check_time / step_time, 6),
                "peak_memory_mb": round(peak_memory_mb, 1),
                "repeats": args.repeats,
            }
        )
    )


if __name__ == "__main__":
    main()
