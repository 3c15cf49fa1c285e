"""The optimizer axis on the `cpu` preset: what each optimizer's step costs, and Muon vs AdamW
each at its best lr of a small grid.

    python benchmarks/bench_optimizers.py [--lrs 1.2e-3 2.4e-3 ...] [--seeds 3] [--threads 2]
                                          [--skip-runs] [--skip-speed]

1. Step time (interleaved, ratio of medians over repetitions, the `cpu` preset's shape, fp32):
   every optimizer's `train_step` against AdamW's; and Newton-Schulz on one layer's hidden
   matrices in fp32 and bf16, also with oneDNN held to AVX2 (a CPU without bf16 matrix units),
   in a subprocess each.
2. Runs: `train()` of the `cpu` preset (embedded corpus, its token budget) for adamw and muon
   at each lr and seeds 0..S-1, back to back in this process. Per optimizer and lr: final
   val_loss mean and sd over seeds (a diverged run counts at its first loss, as Wortsman et al.
   2023 cap them); each optimizer's best lr (lowest mean); the paired difference muon - adamw
   at each one's best lr (same seed: same initialisation and batches) with a t interval.
   The best lr is chosen on the same seeds that measure it, which favours both arms;
   `grid --tune-lr` chooses on seed 1000 and measures on fresh seeds.
3. Where the gain comes from: Muon at its best lr with its AdamW part (embedding, norms) at
   AdamW's best lr instead (`adamw_lr_ratio` = adamw's best / muon's best), paired by seed
   against Muon with the ratio 1 of the grid.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, median  # noqa: E402

OPTIMIZERS = ("adamw", "muon", "lion", "schedule_free_adamw", "sgd")


def cpu_config(**overrides):
    from tune_ablations.spec.resolve import resolve
    from tune_ablations.spec.runspec import RunSpec

    seed = overrides.pop("seed", 0)
    return resolve(RunSpec(preset="cpu", seed=seed, overrides={"precision": "fp32",
                                                               **overrides}))


def step_times(threads: int, reps: int = 5, steps: int = 10) -> dict[str, float]:
    """Median seconds per train_step of each optimizer, interleaved over `reps`."""
    import torch

    from tune_ablations.training.step import build_step, train_step

    torch.set_num_threads(threads)
    built = {}
    for name in OPTIMIZERS:
        cfg = cpu_config(optimizer=name)
        built[name] = build_step(cfg, cfg.data.vocab_size, torch.device("cpu"), amp=None)
    shape = (cfg.data.batch_size, cfg.data.seq_len)
    x = torch.randint(0, cfg.data.vocab_size, shape, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {n: [] for n in OPTIMIZERS}
    for s in built.values():  # warm-up
        train_step(s, x, x, 1e-3)
    for _ in range(reps):
        for name, s in built.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                train_step(s, x, x, 1e-3)
            times[name].append((time.perf_counter() - t0) / steps)
    return {n: median(t) for n, t in times.items()}


def ns_times() -> dict[str, float]:
    """ms to orthogonalise one `cpu`-preset layer's hidden matrices (q, k, v, proj, up,
    down), fp32 and bf16, one thread."""
    import torch

    from tune_ablations.training.optimizers import orthogonalize

    torch.set_num_threads(1)
    d, ff = 192, 768
    mats = [torch.randn(s) for s in [(d, d)] * 4 + [(ff, d), (d, ff)]]
    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        for m in mats:
            orthogonalize(m, dtype)
        t0 = time.perf_counter()
        for _ in range(5):
            for m in mats:
                orthogonalize(m, dtype)
        out[name] = (time.perf_counter() - t0) / 5 * 1000
    return out


def ns_report() -> None:
    for label, env in (("native", {}), ("oneDNN held to AVX2", {"ONEDNN_MAX_CPU_ISA": "AVX2"})):
        out = subprocess.run([sys.executable, __file__, "--ns-only"], capture_output=True,
                             text=True, env={**os.environ, **env}, check=True)
        t = json.loads(out.stdout)
        print(f"newton_schulz {label}: fp32 {t['fp32']:.1f} ms, bf16 {t['bf16']:.1f} ms per "
              f"layer (bf16/fp32 = {t['bf16'] / t['fp32']:.2f})")


def one_run(data, threads: int, **overrides) -> float:
    """Final val_loss of one `cpu`-preset run (a diverged run: its first loss)."""
    from tune_ablations.training.trainer import train

    t0 = time.perf_counter()
    r = train(cpu_config(**overrides), data=data, threads=threads)
    loss = r["final"]["val_loss"] if r["status"] == "completed" else r["initial_loss"]
    print(json.dumps({**overrides, "status": r["status"], "val_loss": loss,
                      "tokens_per_s": r["tokens_per_s"],
                      "wall_s": round(time.perf_counter() - t0, 1)}), flush=True)
    return loss


def run_grid(data, lrs: list[float], seeds: int, threads: int) -> dict:
    out: dict = {}
    for seed in range(seeds):
        for lr in lrs:
            for name in ("adamw", "muon"):
                loss = one_run(data, threads, optimizer=name, lr=lr, seed=seed)
                out.setdefault(name, {}).setdefault(lr, []).append(loss)
    return out


def paired(a: list[float], b: list[float]) -> str:
    """mean of a - b with a 95% paired t interval over seeds."""
    from scipy import stats

    diffs = [x - y for x, y in zip(a, b)]
    n, mean = len(diffs), statistics.mean(diffs)
    if n < 2:
        return f"{mean:+.4f} (one seed: no interval)"
    half = stats.t.ppf(0.975, n - 1) * statistics.stdev(diffs) / n ** 0.5
    return f"{mean:+.4f} [{mean - half:+.4f}, {mean + half:+.4f}] (95% paired t, n={n} seeds)"


def summarize(losses: dict) -> dict[str, float]:
    best = {}
    for name, by_lr in losses.items():
        for lr, xs in sorted(by_lr.items()):
            print(f"{name:>6} lr={lr:<8g} val_loss mean={statistics.mean(xs):.4f} "
                  f"sd={statistics.stdev(xs) if len(xs) > 1 else float('nan'):.4f} n={len(xs)}")
        best[name] = min(by_lr, key=lambda lr: statistics.mean(by_lr[lr]))
    edge = [n for n, lr in best.items() if lr in (min(losses[n]), max(losses[n]))]
    print(f"best lr: adamw {best['adamw']:g}, muon {best['muon']:g}"
          + (f" (at the grid's edge: {', '.join(edge)})" if edge else "")
          + "; muon - adamw at each one's best lr: "
          + paired(losses["muon"][best["muon"]], losses["adamw"][best["adamw"]]))
    return best


def split_check(data, losses: dict, best: dict, seeds: int, threads: int) -> None:
    ratio = best["adamw"] / best["muon"]
    split = [one_run(data, threads, optimizer="muon", lr=best["muon"], adamw_lr_ratio=ratio,
                     seed=seed) for seed in range(seeds)]
    print(f"muon at lr {best['muon']:g} with its AdamW part at {best['adamw']:g} "
          f"(adamw_lr_ratio={ratio:g}) minus the same with ratio 1: "
          + paired(split, losses["muon"][best["muon"]]))
    print("  and minus adamw at its best lr: " + paired(split, losses["adamw"][best["adamw"]]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lrs", type=float, nargs="+", default=[1.2e-3 * 2 ** i for i in range(7)])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-runs", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--ns-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.ns_only:
        print(json.dumps(ns_times()))
        return
    print(machine())
    if not args.skip_speed:
        t = step_times(args.threads)
        print("step_ms " + " ".join(f"{n}={1000 * s:.1f}" for n, s in t.items()))
        print("step_time_vs_adamw " + " ".join(f"{n}={s / t['adamw']:.2f}"
                                               for n, s in t.items()))
        ns_report()
    if not args.skip_runs:
        from tune_ablations.training.data import prepare_data

        t0 = time.perf_counter()
        data = prepare_data(cpu_config().data, log=lambda s: None)
        losses = run_grid(data, args.lrs, args.seeds, args.threads)
        split_check(data, losses, summarize(losses), args.seeds, args.threads)
        print(f"runs_wall_s={time.perf_counter() - t0:.0f}")


if __name__ == "__main__":
    main()
