"""The `cpu` preset's learning rate, measured on seeds the grid never reports: the baseline at
its equal-token budget over a grid of learning rates, each on the tuning seeds 1001-1005
(`spec.names.TUNING_SEEDS_FROM`: the grid's comparisons use seeds 0-4), two runs at a time with
one thread each, as the grid runs them.

    python benchmarks/bench_preset_lr.py [--lrs 2e-3,...] [--seeds 1001,...] [--precision bf16]

Every run trains in one precision (`--precision`, default bf16 on a CPU with bf16 units, else
fp32): `precision=auto` decides per run by a timing probe and mixed bf16 and fp32 runs within
one measurement here.

Prints per lr the mean final val_loss, its seed SD, and the paired difference from the
preset's lr over the same seeds (the seeds share initialisation and data order across lrs)
with a 95% t interval; then which lr is best and whether it beats the preset's beyond noise.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import has_fast_bf16, machine  # noqa: E402

DEFAULT_LRS = "2e-3,2.4e-3,2.8e-3,3.2e-3,4e-3"


def run(lr: float, seed: int, precision: str) -> tuple[float, int, str, float, str]:
    """(lr, seed, status, final val_loss, precision) of the cpu baseline at `lr`."""
    import torch

    from tune_ablations.spec.resolve import resolve
    from tune_ablations.spec.runspec import RunSpec
    from tune_ablations.training.trainer import train

    torch.set_num_threads(1)
    cfg = resolve(RunSpec(ablation="baseline", preset="cpu", seed=seed).with_params(
        lr=lr, precision=precision))
    out = train(cfg, threads=1)
    return lr, seed, out["status"], float(out["final"]["val_loss"]), out["precision"]


def main() -> None:
    from scipy.stats import t as student

    from tune_ablations.spec.names import TUNING_SEEDS_FROM
    from tune_ablations.spec.resolve import resolve
    from tune_ablations.spec.runspec import RunSpec

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lrs", default=DEFAULT_LRS)
    ap.add_argument("--seeds", default="1001,1002,1003,1004,1005")
    ap.add_argument("--precision", choices=("bf16", "fp32"),
                    default="bf16" if has_fast_bf16() else "fp32")
    args = ap.parse_args()
    lrs = [float(x) for x in args.lrs.split(",")]
    seeds = [int(x) for x in args.seeds.split(",")]
    if min(seeds) < TUNING_SEEDS_FROM:
        raise SystemExit(f"--seeds must be >= {TUNING_SEEDS_FROM}: the grid reports seeds 0-4")
    preset = resolve(RunSpec(ablation="baseline", preset="cpu")).optim.lr
    print(f"machine {machine()}")
    t0 = time.perf_counter()
    with ProcessPoolExecutor(2) as pool:
        got = list(pool.map(run, *zip(*[(lr, s, args.precision) for lr in lrs
                                         for s in seeds])))
    loss = {(lr, s): v for lr, s, status, v, _ in got if status == "completed"}
    print(f"wall_s={time.perf_counter() - t0:.0f} runs={len(got)} precision="
          f"{sorted({p for *_, p in got})} preset_lr={preset:g}")
    print("\n| lr | mean val_loss (seeds " + ", ".join(map(str, seeds)) + ") | seed SD | "
          f"paired difference from {preset:g} (95% t interval) | diverged |")
    print("|---|---|---|---|---|")
    for lr in lrs:
        v = [loss[(lr, s)] for s in seeds if (lr, s) in loss]
        d = [loss[(lr, s)] - loss[(preset, s)] for s in seeds
             if (lr, s) in loss and (preset, s) in loss]
        half = (student.ppf(0.975, len(d) - 1) * np.std(d, ddof=1) / math.sqrt(len(d))
                if len(d) > 1 else math.nan)
        cell = "-" if lr == preset else f"{np.mean(d):+.3f} ({np.mean(d) - half:+.3f} to " \
                                        f"{np.mean(d) + half:+.3f})"
        print(f"| {lr:g} | {np.mean(v):.3f} | {np.std(v, ddof=1):.3f} | {cell} | "
              f"{len(seeds) - len(v)} |")


if __name__ == "__main__":
    main()
