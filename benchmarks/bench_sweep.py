"""Sweep overhead and memory: the six-ablation grid through Ray Tune against the same six
`train()` calls back to back in one process, and two at a time (one thread each); and the fixed
cost per trial of a search of many tiny trials.

    python benchmarks/bench_sweep.py [--preset cpu] [--skip-serial] [--tiny-trials 40]

Prints wall seconds of each schedule, the Ray/best-plain ratio (target <= 1.10, Ray's start-up
included), the fixed cost per trial per slot (target <= 1 s), and peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

from tune_ablations.spec.questions import reference  # noqa: E402

ABLATIONS = ["baseline", *reference().names]  # the default grid's arms


def _one(args: tuple[str, str, int]) -> float:
    import torch

    from tune_ablations.spec.presets import build_ablation
    from tune_ablations.training.trainer import train

    name, preset, threads = args
    torch.set_num_threads(threads)
    train(build_ablation(name, preset), threads=threads)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plain(preset: str, parallel: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    jobs = [(n, preset, 2 if parallel == 1 else 1) for n in ABLATIONS]
    with mp.get_context("spawn").Pool(parallel, maxtasksperchild=1) as pool:
        rss = pool.map(_one, jobs, chunksize=1)
    return time.perf_counter() - t0, max(rss)


def ray_grid(preset: str) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", (
            "import resource, sys; from tune_ablations import grid; "
            f"c = grid.main(['--preset', '{preset}', '--storage', '{tmp}', '--name', 'b']); "
            "print('DRIVER_RSS_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024); "
            "sys.exit(c)")], cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        assert out.returncode == 0, out.stderr[-2000:]
        driver = float(out.stdout.split("DRIVER_RSS_MB")[1].split()[0])
        trial_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        n = sum(1 for p in Path(tmp, "b").glob("*/outcome.json")
                if json.loads(p.read_text())["status"] == "completed")
        assert n == len(ABLATIONS)
    return wall, driver, trial_rss


def tiny_trials(n: int, slots: int = 2) -> None:
    """A search of n tiny trials, `slots` at a time, no early stopping: the wall time beyond
    the trials' own run time, per trial per slot, is the sweep's fixed cost per trial."""
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "tune_ablations.search", "--space", "lr",
                              "--preset", "tiny", "--set", "text_samples=0", "--num-samples",
                              str(n), "--scheduler", "none", "--max-concurrent", str(slots),
                              "--storage", tmp, "--name", "t"], cwd=ROOT, capture_output=True,
                             text=True)
        wall = time.perf_counter() - t0
        assert out.returncode == 0, out.stderr[-2000:]
        runs = [json.loads(p.read_text())["wall_time_s"] for p in
                Path(tmp, "t").glob("*/outcome.json")]
    assert len(runs) == n
    ideal = sum(runs) / slots
    per_trial = (wall - ideal) / (n / slots)
    print(f"tiny_trials n={n} slots={slots} wall_s={wall:.1f} trial_run_s_sum={sum(runs):.1f} "
          f"fixed_cost_per_trial_per_slot_s={per_trial:.2f} (target <= 1.0; includes the "
          "driver's start-up, spread over the trials)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--skip-serial", action="store_true")
    ap.add_argument("--tiny-trials", type=int, default=40,
                    help="trials of the fixed-cost benchmark (0: skip it)")
    ap.add_argument("--only-tiny", action="store_true", help="only the fixed-cost benchmark")
    args = ap.parse_args()
    print(f"machine {machine()}")
    if args.tiny_trials:
        tiny_trials(args.tiny_trials)
    if args.only_tiny:
        return
    # Warm the token cache so no schedule pays for tokenization.
    from tune_ablations.spec.presets import build_ablation
    from tune_ablations.training.data import prepare_data

    prepare_data(build_ablation("baseline", args.preset).data, log=lambda s: None)
    ray_s, driver_mb, child_mb = ray_grid(args.preset)
    two_s, trial_mb = plain(args.preset, min(2, os.cpu_count() or 1))
    times = {"ray_grid": ray_s, "plain_two_at_a_time": two_s}
    if not args.skip_serial:
        times["plain_back_to_back"], _ = plain(args.preset, 1)
    best = min(v for k, v in times.items() if k != "ray_grid")
    for k, v in times.items():
        print(f"schedule={k} wall_s={v:.1f}")
    print(f"ray_vs_best_plain={ray_s / best:.3f} (target <= 1.10)")
    print(f"peak_rss_mb driver={driver_mb:.0f} largest_ray_process={child_mb:.0f} "
          f"plain_trial={trial_mb:.0f}")


if __name__ == "__main__":
    main()
