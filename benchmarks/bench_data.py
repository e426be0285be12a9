"""Data-layer throughput: random T-frame windows from a >= 2 GB prepared dataset.

    python benchmarks/bench_data.py [--workdir bench_output] [--window-length 32] [--seconds 10]

Builds (once, then reuses) a prepared dataset of 32x16x16 float16 latents with the demo game
(`python -m data.synthetic` then `python -m data.prepare`, each in a subprocess so the build's
memory does not count), then prints one JSON line:
`windows_per_s` (random windows, one process, WindowDataset reads), `loader_windows_per_s`
(torch DataLoader + MixtureSampler + collate_windows, batch 16, num_workers 0), `peak_rss_mb`
of this process, (which counts the touched pages of the memory-mapped files), its split into anonymous and
file-backed resident memory at the end, and the dataset's size on disk.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def memory_mb() -> dict[str, float]:
    """Resident memory split into anonymous (heap: what the process owns) and file-backed pages
    (the memory-mapped Arrow files: page cache, shared and reclaimable). Linux only."""
    fields = {}
    status = Path("/proc/self/status")
    for line in status.read_text().splitlines() if status.exists() else []:
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile"):
            fields[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_anon_mb": fields.get("RssAnon"), "rss_file_mb": fields.get("RssFile")}


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def build(workdir: Path, num_videos: int, frames: int) -> Path:
    prepared = workdir / "prepared"
    if (prepared / "dataset_dict.json").exists():
        return prepared
    raw = workdir / "raw"
    shutil.rmtree(raw, ignore_errors=True)
    run = [sys.executable, "-m"]
    subprocess.run(run + ["data.synthetic", "--output", str(raw), "--num-videos", str(num_videos),
                          "--frames", str(frames), "--latent-shape", "32", "16", "16"], check=True)
    subprocess.run(run + ["data.prepare", "--latents-dir", str(raw / "latents"), "--features-dir",
                          str(raw / "features"), "--output", str(prepared), "--overwrite", "--no-progress"], check=True)
    shutil.rmtree(raw)
    return prepared


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("bench_output"))
    parser.add_argument("--num-videos", type=int, default=132)
    parser.add_argument("--frames", type=int, default=1000, help="frames per video (132 x 1000 x 16 KiB = 2.1 GB)")
    parser.add_argument("--window-length", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each measurement")
    args = parser.parse_args()

    started = time.perf_counter()
    prepared = build(args.workdir, args.num_videos, args.frames)
    build_s = time.perf_counter() - started

    import torch
    from torch.utils.data import DataLoader

    from data.sampler import MixtureSampler
    from data.schema import load_prepared
    from data.windows import WindowDataset, collate_windows

    dataset_dict, _ = load_prepared(prepared)
    split = dataset_dict["train"]
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    windows = WindowDataset(split, args.window_length, stride=1)
    rss_indexed = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    rng = np.random.default_rng(0)
    reads, deadline = 0, time.perf_counter() + args.seconds
    began = time.perf_counter()
    while time.perf_counter() < deadline:
        for index in rng.integers(len(windows), size=256):
            windows[int(index)]
        reads += 256
    windows_per_s = reads / (time.perf_counter() - began)

    sampler = MixtureSampler(len(windows), windows.relevant_windows(), relevant_fraction=0.5, seed=0)
    loader = DataLoader(windows, batch_size=args.batch_size, sampler=sampler, collate_fn=collate_windows, num_workers=0)
    loaded, began = 0, time.perf_counter()
    for batch in loader:
        assert batch["latents"].dtype == torch.float16
        loaded += len(batch["video_id"])
        if time.perf_counter() - began > args.seconds:
            break
    loader_windows_per_s = loaded / (time.perf_counter() - began)

    print(json.dumps({
        "windows_per_s": round(windows_per_s, 1),
        "loader_windows_per_s": round(loader_windows_per_s, 1),
        "window_length": args.window_length,
        "batch_size": args.batch_size,
        "latent_shape": [32, 16, 16],
        "num_windows": len(windows),
        "train_frames": len(split),
        "dataset_bytes": folder_bytes(prepared),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_after_load_mb": round(rss_loaded, 1),
        "rss_after_index_mb": round(rss_indexed, 1),
        "build_or_reuse_s": round(build_s, 1),
        **memory_mb(),
    }))


if __name__ == "__main__":
    main()
