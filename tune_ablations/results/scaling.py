"""Scaling fits over an experiment's completed runs, named for what the design supports.

Design choices:
- With at least 3 model sizes and 3 token budgets, the Chinchilla form
  L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, approach 3): Huber loss on
  log-loss, L-BFGS from a grid of starts, N the non-embedding parameters (Kaplan et al. 2020),
  D the tokens trained. Its compute-optimal frontier (C = 6 N D) gives the loss predicted at
  10x the largest compute, with bootstrap intervals over runs.
- With one token budget, the fit is L(N | D) = E_D + A / N^alpha: a law in size at that budget,
  named so, and no extrapolation along compute is offered (D did not vary).
- Anything less is refused with the design it would need.
- The fit is sensitive to its optimizer and starts (Besiroglu et al. 2024): every start is
  tried, the best kept, and the bootstrap shows the spread.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from ..spec.names import METRIC, Status

HUBER_DELTA = 1e-3
MIN_RUNS = 5


def _huber(r: np.ndarray, delta: float = HUBER_DELTA) -> tuple[np.ndarray, np.ndarray]:
    """Huber loss of each residual and its derivative."""
    a = np.abs(r)
    small = a <= delta
    return np.where(small, 0.5 * r * r, delta * (a - 0.5 * delta)), \
        np.where(small, r, delta * np.sign(r))


def _objective(logs: list[np.ndarray], logl: np.ndarray):
    """Huber loss of log L against log(sum_k exp(c_k - x_k * log_k) + exp(e)) and its gradient,
    for parameters (c_1..c_m, e, x_1..x_m): the fitting problem of approach 3."""
    m = len(logs)

    def f(p):
        c, e, x = p[:m], p[m], p[m + 1:]
        terms = np.stack([c[k] - x[k] * logs[k] for k in range(m)] + [np.full_like(logl, e)])
        top = terms.max(axis=0)
        w = np.exp(terms - top)
        total = w.sum(axis=0)
        loss, dloss = _huber(top + np.log(total) - logl)
        w = w / total  # d lse / d term
        grad = np.concatenate([(dloss * w[:m]).sum(axis=1), [(dloss * w[m]).sum()],
                               [-(dloss * w[k] * logs[k]).sum() for k in range(m)]])
        return float(loss.sum()), grad

    return f


def _fit_best(objective, starts: list[np.ndarray], keep: int = 16) -> np.ndarray:
    """L-BFGS from the `keep` best points of a grid of starts; the best end point."""
    from scipy.optimize import minimize

    ranked = sorted(starts, key=lambda x0: objective(x0)[0])[:keep]
    best, best_val = None, math.inf
    for x0 in ranked:
        res = minimize(objective, x0, jac=True, method="L-BFGS-B")
        if res.fun < best_val:
            best, best_val = res.x, res.fun
    return best


def fit_chinchilla(n, d, loss, start: dict | None = None) -> dict[str, float]:
    """(E, A, alpha, B, beta) of L(N, D) = E + A/N^alpha + B/D^beta (a fit warm-started from
    `start` tries it first)."""
    logn, logd, logl = (np.log(np.asarray(x, dtype=float)) for x in (n, d, loss))
    objective = _objective([logn, logd], logl)
    starts = [np.array([a, b, e, al, be], dtype=float) for a, b, e, al, be in itertools.product(
        (0.0, 5.0, 10.0, 15.0), (0.0, 5.0, 10.0, 15.0), (-1.0, 0.0, 1.0), (0.2, 0.5),
        (0.2, 0.5))]
    if start:
        starts = [np.array([math.log(start["A"]), math.log(start["B"]), math.log(start["E"]),
                            start["alpha"], start["beta"]])]
    a, b, e, alpha, beta = _fit_best(objective, starts)
    return {"E": float(np.exp(e)), "A": float(np.exp(a)), "alpha": float(alpha),
            "B": float(np.exp(b)), "beta": float(beta)}


def fit_size_law(n, loss, start: dict | None = None) -> dict[str, float]:
    """(E, A, alpha) of L(N | D) = E + A/N^alpha at one token budget."""
    logn, logl = np.log(np.asarray(n, dtype=float)), np.log(np.asarray(loss, dtype=float))
    objective = _objective([logn], logl)
    starts = [np.array(s, dtype=float) for s in itertools.product(
        (0.0, 5.0, 10.0, 15.0), (-1.0, 0.0, 1.0), (0.1, 0.3, 0.6))]
    if start:
        starts = [np.array([math.log(start["A"]), math.log(start["E"]), start["alpha"]])]
    a, e, alpha = _fit_best(objective, starts)
    return {"E": float(np.exp(e)), "A": float(np.exp(a)), "alpha": float(alpha)}


def chinchilla_loss(p: dict[str, float], n, d):
    return p["E"] + p["A"] / np.power(n, p["alpha"]) + p["B"] / np.power(d, p["beta"])


def optimal_loss(p: dict[str, float], compute: float) -> tuple[float, float]:
    """(loss, N) on the compute-optimal frontier at training compute C = 6 N D."""
    ns = np.geomspace(1e2, 1e13, 4000)
    losses = chinchilla_loss(p, ns, compute / (6 * ns))
    i = int(np.argmin(losses))
    return float(losses[i]), float(ns[i])


def _ci(values: list[float]) -> list[float]:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values \
        else [math.nan, math.nan]


def fit_runs(n, d, loss, *, n_boot: int = 200, seed: int = 0, extrapolate: float = 10.0
             ) -> dict[str, Any]:
    """The fit the design supports, with bootstrap (resampling runs) 95% intervals."""
    n, d, loss = (np.asarray(x, dtype=float) for x in (n, d, loss))
    ok = np.isfinite(n) & np.isfinite(d) & np.isfinite(loss) & (n > 0) & (d > 0)
    n, d, loss = n[ok], d[ok], loss[ok]
    sizes, budgets = len(np.unique(n)), len(np.unique(d))
    if len(n) < MIN_RUNS or sizes < 3:
        raise ValueError(f"a scaling fit needs at least {MIN_RUNS} completed runs at 3 or more "
                         f"model sizes; got {len(n)} runs at {sizes} sizes and {budgets} token "
                         "budgets")
    if budgets >= 3:
        return _chinchilla(n, d, loss, n_boot, seed, extrapolate)
    if budgets == 1:
        return _size_law(n, float(d[0]), loss, n_boot, seed)
    raise ValueError(f"{budgets} token budgets: a law in size and data needs 3 or more (vary "
                     "max_steps or --tokens), a law in size alone needs one")


def _chinchilla(n, d, loss, n_boot, seed, extrapolate) -> dict[str, Any]:
    p = fit_chinchilla(n, d, loss)
    target = extrapolate * float((6 * n * d).max())
    pred, n_opt = optimal_loss(p, target)
    rng, boots = np.random.default_rng(seed), []
    for _ in range(n_boot):
        i = rng.integers(0, len(n), len(n))
        if len(np.unique(n[i])) >= 3 and len(np.unique(d[i])) >= 3:
            b = fit_chinchilla(n[i], d[i], loss[i], start=p)
            boots.append((b, optimal_loss(b, target)[0]))
    why = _unidentified(p, n_opt, n, loss)
    out = {"form": "L(N, D) = E + A/N^alpha + B/D^beta", "n": int(len(n)), **p,
           "alpha_ci95": _ci([b["alpha"] for b, _ in boots]),
           "beta_ci95": _ci([b["beta"] for b, _ in boots]), "compute_max": target / extrapolate,
           "extrapolate": extrapolate, "predicted_loss": pred, "optimal_n": n_opt,
           "predicted_loss_ci95": _ci([v for _, v in boots]), "n_boot_ok": len(boots),
           "identified": not why}
    head = (f"{out['form']} over {len(n)} completed runs (N non-embedding parameters, D "
            f"tokens): E={p['E']:.3f}, alpha={p['alpha']:.3f} (95% bootstrap CI "
            f"{out['alpha_ci95'][0]:.3f} to {out['alpha_ci95'][1]:.3f}), beta={p['beta']:.3f} "
            f"({out['beta_ci95'][0]:.3f} to {out['beta_ci95'][1]:.3f})")
    out["summary"] = head + (
        f"; no extrapolation along compute is reported: {why}." if why else
        f"; on the compute-optimal frontier (C = 6ND) at {extrapolate:g}x the largest compute: "
        f"loss {pred:.3f} (95% CI {out['predicted_loss_ci95'][0]:.3f} to "
        f"{out['predicted_loss_ci95'][1]:.3f}) at N={n_opt:.3g}.")
    return out


def _unidentified(p: dict[str, float], n_opt: float, n, loss) -> str:
    """Why the fit cannot support an extrapolation along compute ('' when it can)."""
    if p["E"] <= 0.01 * float(np.min(loss)):
        return (f"E={p['E']:.3g} sits at its bound 0 (the runs span too little size and data "
                "to separate the irreducible loss from the power laws)")
    if not float(np.min(n)) / 10 <= n_opt <= 100 * float(np.max(n)):
        return (f"the fitted compute-optimal size N={n_opt:.3g} lies far outside the sizes "
                f"trained ({float(np.min(n)):.3g} to {float(np.max(n)):.3g})")
    return ""


def _size_law(n, d: float, loss, n_boot, seed) -> dict[str, Any]:
    p = fit_size_law(n, loss)
    rng, alphas = np.random.default_rng(seed), []
    for _ in range(n_boot):
        i = rng.integers(0, len(n), len(n))
        if len(np.unique(n[i])) >= 3:
            alphas.append(fit_size_law(n[i], loss[i], start=p)["alpha"])
    ci = _ci(alphas)
    return {"form": "L(N | D) = E_D + A/N^alpha", "n": int(len(n)), "tokens": d, **p,
            "alpha_ci95": ci, "n_boot_ok": len(alphas),
            "E_at_bound": bool(p["E"] <= 1e-6 * max(1.0, float(loss.min()))),
            "summary": (f"L(N | D={d:,.0f} tokens) = E_D + A/N^alpha over {len(n)} completed "
                        f"runs (N non-embedding parameters): E_D={p['E']:.3f}, alpha="
                        f"{p['alpha']:.3f} (95% bootstrap CI {ci[0]:.3f} to {ci[1]:.3f}). "
                        "A law in size at one token budget: it says nothing about more data "
                        "or compute, so no extrapolation along compute is made; vary the "
                        "budget too (3 or more) for L(N, D).")}


def fit_experiment(res) -> dict[str, Any]:
    """The scaling fit of an experiment's completed runs."""
    df = res.trials
    done = df[df["status"].astype(str) == Status.COMPLETED] if len(df) else df
    if done.empty:
        raise ValueError("a scaling fit needs completed runs; this experiment has none")
    return fit_runs(done["non_embedding_params"].astype(float).to_numpy(),
                    done["tokens_seen"].astype(float).to_numpy(),
                    done[METRIC].astype(float).to_numpy())
