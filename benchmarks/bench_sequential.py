"""The seeds procedure's error rates, power, interval coverage and bias by simulation, the old
procedure beside the new one on the same simulated sweeps (no training; seconds).

    python benchmarks/bench_sequential.py [--sweeps 10000] [--candidates]

- old: the randomized-block t (seeds as blocks, noise pooled over every arm), z-boundaries'
  nominal levels, looks from 2 seeds, printing the deciding look's estimate and its interval
  at the decision's nominal level (the procedure before issue 28; kept here only to compare).
- new: `results.sequential` as shipped (each arm's own paired t moderated toward the open arms'
  pooled variance with one prior df, t-calibrated boundaries, looks from 3 seeds, the 95%
  repeated interval from every seed).
- `--candidates` adds the other procedures the choice was made among (plain paired t, more
  prior df, pooling over every arm), for RESULTS section 14.

Familywise error: share of sweeps declaring at least one arm whose true difference is 0, with
its Monte-Carlo 95% interval. Power: one arm k SDs of a paired difference away (equal noise).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tune_ablations.results import sequential as Q  # noqa: E402
from tune_ablations.results.simulation import (  # noqa: E402
    LIMITS,
    SCENARIOS,
    Scenario,
    simulate,
)


def block_t(y: np.ndarray, counts: np.ndarray, members: np.ndarray) -> Q.LookStats:
    """The old test: least squares of loss = arm + seed + noise over every observed cell,
    the contrast arm - baseline against the residual variance pooled over all arms."""
    from scipy.stats import t as student

    sweeps, groups, seeds = y.shape
    nb = counts.max(axis=1)
    s = np.arange(seeds)
    w = np.concatenate([(s[None, :] < nb[:, None])[:, None, :],
                        s[None, None, :] < counts[:, :, None]], axis=1) & np.isfinite(y)
    x = np.zeros((groups * seeds, groups + seeds - 1))
    for r, (g, k) in enumerate((g, k) for g in range(groups) for k in range(seeds)):
        x[r, g] = 1
        if k:
            x[r, groups + k - 1] = 1
    wf = w.reshape(sweeps, -1).astype(float)
    xw = x[None] * wf[:, :, None]
    yw = np.nan_to_num(y.reshape(sweeps, -1)) * wf
    beta = np.einsum("sij,sj->si", np.linalg.pinv(xw), yw)
    resid = (yw - np.einsum("sij,sj->si", xw, beta)) * wf
    df = wf.sum(axis=1) - np.linalg.matrix_rank(xw)
    sigma2 = (resid ** 2).sum(axis=1) / np.maximum(df, 1)
    cov = np.linalg.pinv(np.einsum("sji,sjk->sik", xw, xw))
    a = np.arange(1, groups)
    diff = beta[:, 1:groups] - beta[:, :1]
    var = cov[:, a, a] + cov[:, :1, 0] - 2 * cov[:, 0, 1:groups]
    se = np.sqrt(np.maximum(var, 0) * sigma2[:, None])
    dof = np.repeat(df[:, None], groups - 1, axis=1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = 2 * student.sf(np.abs(diff) / se, np.maximum(dof, 1))
    n = (w[:, 1:, :] & w[:, :1, :]).sum(axis=-1)
    nan = np.full_like(diff, np.nan)
    return Q.LookStats(n, diff, se, dof, np.where(dof > 0, p, np.nan), nan, nan,
                       np.zeros_like(diff))


def old_printed(sc: Scenario, sweeps: int, seed: int) -> dict:
    """The old procedure's error and what it printed: the deciding look's estimate and its
    interval at the decision's nominal level."""
    from scipy.stats import t as student

    y = sc.losses(sweeps, 5, np.random.default_rng(seed))
    out = Q.decide_batch(y, [2, 3, 4, 5], max_seeds=5, test=block_t, levels=Q.z_levels)
    truth = sc.truth
    null = truth == 0
    diff, se, dof = (out.at_decision(k) for k in ("diff", "se", "df"))
    half = student.ppf(1 - out.nominal / 2, np.maximum(dof, 1)) * se
    right = (out.verdict == np.sign(truth)[None]) & ~null[None]
    hits = np.maximum(right.sum(axis=0), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        bias = np.where(right, diff, 0).sum(axis=0) / hits / np.where(null, np.nan, truth)
    return {"fwer": float(((out.verdict != 0) & null[None]).any(axis=1).mean()),
            "power": np.where(null, np.nan, right.mean(axis=0)),
            "coverage": ((diff - half <= truth) & (truth <= diff + half)).mean(axis=0),
            "bias": bias}


def interval(rate: float, n: int) -> str:
    half = 1.96 * math.sqrt(max(rate * (1 - rate), 1e-12) / n)
    return f"{rate:.4f} ({max(0, rate - half):.3f}-{rate + half:.3f})"


def error_table(sweeps: int) -> None:
    limit = Q.ALPHA + 1.96 * math.sqrt(Q.ALPHA * (1 - Q.ALPHA) / sweeps)
    print(f"\n## Familywise error, {sweeps:,} sweeps per scenario (pass: <= {limit:.4f})\n")
    print("| scenario | old: familywise error (95% MC interval) | new | new: lowest coverage "
          "of the 95% interval | old: lowest coverage of its printed interval |")
    print("|---|---|---|---|---|")
    for name, sc in [*SCENARIOS.items(), *LIMITS.items()]:
        old = old_printed(sc, sweeps, 11)
        new = simulate(sc, sweeps, seed=11)
        print(f"| {name}{' (limit)' if name in LIMITS else ''} | {interval(old['fwer'], sweeps)}"
              f" | {interval(new.fwer, sweeps)} | {new.coverage.min():.4f} | "
              f"{old['coverage'].min():.4f} |")
    print("\nScenarios:")
    for sc in [*SCENARIOS.values(), *LIMITS.values()]:
        print(f"- {sc.name}: {sc.note}")


def power_table(sweeps: int) -> None:
    print(f"\n## Power: one arm k SDs of a paired difference from the baseline, equal noise, "
          f"{sweeps:,} sweeps\n")
    print("| k | old: found | new: found | old: estimate / truth at a verdict | new: estimate / "
          "truth at a verdict | new: 95% coverage of that arm | new: trials per sweep |")
    print("|---|---|---|---|---|---|---|")
    for k in (1, 2, 3):
        sc = Scenario(name=f"{k}sd", sds=(1.0,) * 5, baseline_sd=1.0,
                      effects=(k * math.sqrt(2), 0.0, 0.0, 0.0, 0.0))
        old, new = old_printed(sc, sweeps, 5), simulate(sc, sweeps, seed=5)
        print(f"| {k} | {old['power'][0]:.3f} | {new.power[0]:.3f} | {old['bias'][0]:.2f} | "
              f"{new.bias[0]:.2f} | {new.coverage[0]:.4f} | {new.trials:.1f} |")


def candidates_table(sweeps: int) -> None:
    """Every candidate on the scenarios that decided the choice."""
    moderated = Q.moderated_t()

    def pool_all(y, counts, members):
        return moderated(y, counts, np.ones_like(members))

    cands = {"plain paired t (prior df 0)": dict(test=Q.moderated_t(0.0)),
             "prior df 1 (shipped)": {},
             "prior df 2": dict(test=Q.moderated_t(2.0)),
             "prior df 1, pooled over every arm": dict(test=pool_all),
             "prior df 1, z-boundaries' levels": dict(levels=Q.z_levels)}
    names = ["equal", "single_arm", "measured", "partial_measured", "partial_one_at_5x",
             "skewed", "measured_unstable"]
    sd2 = Scenario(name="2sd", sds=(1.0,) * 5, baseline_sd=1.0,
                   effects=(2 * math.sqrt(2), 0.0, 0.0, 0.0, 0.0))
    print(f"\n## Candidates, {sweeps:,} sweeps per cell (familywise error; power at 2 SD)\n")
    print("| procedure | " + " | ".join(names) + " | power at 2 SD |")
    print("|---|" + "---|" * (len(names) + 1))
    for label, kw in cands.items():
        cells = [f"{simulate(SCENARIOS[n], sweeps, seed=11, **kw).fwer:.4f}" for n in names]
        cells.append(f"{simulate(sd2, sweeps, seed=5, **kw).power[0]:.3f}")
        print(f"| {label} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sweeps", type=int, default=10_000)
    ap.add_argument("--candidates", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    error_table(args.sweeps)
    power_table(args.sweeps)
    if args.candidates:
        candidates_table(args.sweeps)
    print(f"\nseconds={time.perf_counter() - t0:.0f}")


if __name__ == "__main__":
    main()
