"""Peak memory of `python -m data.prepare` as the dataset grows (the largest video stays the same).

    python benchmarks/bench_prepare.py [--videos 9] [--frames 1000] [--scales 1 2 4] [--workdir DIR] [--keep]
                                       [--repo CHECKOUT]   # run another checkout's data.prepare, to compare

For each scale k it writes `k * videos` videos of `frames` frames each, synthetic `(32, 16, 16)`
float16 latents (16 KiB per frame; the defaults give 147 MB of latents at 1x) and a complete
features.json with gold events and deaths, then runs `python -m data.prepare` on them in a
subprocess and measures that process alone:

- `peak_rss_mb`: its peak resident set size (`ru_maxrss` from `os.wait4`, the kernel's VmHWM),
  which counts the touched pages of memory-mapped files as well as the heap;
- `peak_anon_mb` / `peak_file_mb`: the largest RssAnon (heap) and RssFile (mapped file pages) seen
  by polling `/proc/<pid>/status` every 20 ms, to tell which one a peak comes from;
- `latent_mb` (the latents' bytes, 1 MB = 1e6 bytes) and `wall_s`.

Prints a table and one JSON line. The videos all have the same length, so with memory bounded by
the largest video the peak stays flat as k grows; a peak that grows with k means something holds
the whole dataset. A benchmark, not a test: nothing here asserts a time or a size.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
LATENT_SHAPE = (32, 16, 16)
BINARY_KEYS = ("ability_q", "ability_w", "ability_e", "ability_r", "summoner_d", "summoner_f", "item_used", "recall_b")


def write_video(root: Path, video_id: str, frames: int, rng: np.random.Generator) -> int:
    """One video: `latents/<id>.npz` with `(frames, 32, 16, 16)` float16 and `features/<id>/features.json`.

    About one gold event every 40 frames and one death (a 30-frame health-bar absence) per 1,000
    frames, so the reward columns and the report have something to count. Returns the latent bytes.
    """
    latents = rng.standard_normal((frames, *LATENT_SHAPE), dtype=np.float32).astype(np.float16)
    np.savez(root / "latents" / f"{video_id}.npz", latents=latents, frame_indices=np.arange(frames, dtype=np.int32))
    gold = rng.random(frames) < 1 / 40
    entries = []
    for i in range(frames):
        dead = 500 <= i % 1000 < 530
        entries.append({
            "frame_idx": i, "gold_gained": int(rng.integers(20, 300)) if gold[i] else 0,
            "health_bar_x": None if dead else 100, "health_bar_y": None if dead else 50,
            "movement_slice": int(rng.integers(0, 18)), **{key: bool(rng.random() < 0.01) for key in BINARY_KEYS},
        })
    folder = root / "features" / video_id
    folder.mkdir(parents=True)
    (folder / "features.json").write_text(json.dumps({"video_id": video_id, "frames": entries}))
    return latents.nbytes


def generate(root: Path, num_videos: int, frames: int, seed: int) -> int:
    """Write `num_videos` videos under `root`; return the total latent bytes."""
    (root / "latents").mkdir(parents=True)
    (root / "features").mkdir()
    rng = np.random.default_rng(seed)
    return sum(write_video(root, f"video_{i:04d}", frames, rng) for i in range(num_videos))


def _poll_memory(pid: int, peaks: dict[str, int], stop: threading.Event) -> None:
    """Record the largest RssAnon and RssFile (kB) of `pid` until `stop` is set or it exits."""
    status = Path(f"/proc/{pid}/status")
    while not stop.is_set():
        try:
            text = status.read_text()
        except OSError:
            return
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key in peaks:
                peaks[key] = max(peaks[key], int(value.split()[0]))
        stop.wait(0.02)


def run_prepare(root: Path, output: Path, extra: list[str], repo: Path = REPO) -> dict:
    """Run `python -m data.prepare` of checkout `repo` on `root` in a subprocess; its peak memory (MB) and wall time."""
    command = [sys.executable, "-m", "data.prepare", "--latents-dir", str(root / "latents"),
               "--features-dir", str(root / "features"), "--output", str(output), "--no-progress", *extra]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks = {"RssAnon": 0, "RssFile": 0}
    stop = threading.Event()
    poller = threading.Thread(target=_poll_memory, args=(process.pid, peaks, stop), daemon=True)
    poller.start()
    # wait4 gives the rusage of this child alone (RUSAGE_CHILDREN would be the max over all of them).
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    stop.set()
    poller.join()
    stderr = process.stderr.read().decode(errors="replace")
    process.stderr.close()
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"data.prepare failed (status {process.returncode}):\n{stderr}")
    return {
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: kB
        "peak_anon_mb": round(peaks["RssAnon"] / 1024, 1),
        "peak_file_mb": round(peaks["RssFile"] / 1024, 1),
        "wall_s": round(wall, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=int, default=9, help="videos at scale 1 (the base size)")
    parser.add_argument("--frames", type=int, default=1000, help="frames per video (16 KiB of latents each)")
    parser.add_argument("--scales", type=int, nargs="+", default=[1, 2, 4], help="multiples of the base size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, help="where to write the inputs and outputs (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated inputs and outputs")
    parser.add_argument("--prepare-args", default="", help="extra arguments for data.prepare, one string")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout whose data.prepare runs (default: this one)")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    workdir.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for scale in args.scales:
            root, output = workdir / f"x{scale}" / "raw", workdir / f"x{scale}" / "prepared"
            shutil.rmtree(root.parent, ignore_errors=True)
            latent_bytes = generate(root, scale * args.videos, args.frames, args.seed)
            measured = run_prepare(root, output, args.prepare_args.split(), args.repo.resolve())
            results.append({"scale": scale, "videos": scale * args.videos, "frames_per_video": args.frames,
                            "latent_mb": round(latent_bytes / 1e6, 1), **measured})
            if not args.keep:
                shutil.rmtree(root.parent)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)

    print(f"{'scale':>5} {'videos':>6} {'latent MB':>10} {'peak RSS MB':>12} {'anon MB':>8} {'file MB':>8} {'wall s':>7}")
    for r in results:
        print(f"{r['scale']:>5} {r['videos']:>6} {r['latent_mb']:>10} {r['peak_rss_mb']:>12} "
              f"{r['peak_anon_mb']:>8} {r['peak_file_mb']:>8} {r['wall_s']:>7}")
    print(json.dumps({"benchmark": "bench_prepare", "results": results}))


if __name__ == "__main__":
    main()
