"""Scaling fits over an experiment's completed runs, named for what the design supports, with
intervals that mean what they say and an extrapolation only where the runs identify the law.

Design choices:
- With at least 3 model sizes and 3 token budgets, the Chinchilla form
  L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022). With one token budget the fit
  is L(N | D) = E_D + A / N^alpha, a law in size at that budget, never extrapolated along
  compute. Anything less is refused with the design it would need.
- One convention for N and compute, the one `--iso-flops` budgets and MFU use
  (`spec.flops`): N is every parameter (the tied embedding once) and a run's compute is its
  recorded FLOPs per token (6N plus the attention term) times its tokens. The frontier prices a
  model of N parameters on D tokens at 6ND times the attention share of the largest run.
- The fit is sensitive to its optimizer and starts (Besiroglu et al. 2024), and a bootstrap
  refit warm-started at the point estimate never leaves its basin (intervals 10-40x too narrow
  on synthetic designs). So the exponents are profiled instead of searched from starts: for
  fixed exponents the law is linear in (E, A, B), solved exactly as nonnegative least squares,
  over a grid of the whole exponent box, then finer grids around the best point; every
  bootstrap resample gets its own global optimum, all resamples at once as one batch.
- The residuals are relative, (fit - loss) / loss, i.e. log-loss to first order, in least
  squares. Chinchilla's Huber delta of 1e-3 on log-loss sits far below the 1-2% seed noise of
  small runs, where it becomes a least-absolute-deviations fit whose optimizer crawls along
  the law's flat valleys (an interval then depends on an iteration cap).
- Intervals are bootstrap percentiles over resampled runs, with the Monte-Carlo error of each
  end from the order statistics of the draws (`N_BOOT` draws: the error is stated, not hidden).
- The law is identified only when the fit itself says so: E's interval stays clear of its
  bound 0, each exponent's interval stays clear of its bounds and is narrower than the
  exponent, and the Gauss-Newton Hessian of the fit (log terms centred on the design) is well
  conditioned. Otherwise no extrapolation is reported and the summary names the reason.
  tests/test_scaling.py checks coverage on designs drawn from the shipped `scaling` space.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

from ..spec.names import METRIC, Status

MIN_RUNS = 5
N_BOOT = 200
"""Bootstrap resamples; each interval end states its Monte-Carlo error."""
EXPONENT_MAX = 2.5
"""Exponents are fitted in [0, EXPONENT_MAX]; an interval reaching a bound is not identified."""
MAX_CONDITION = 1e8
"""Gauss-Newton Hessian condition number above which the design cannot separate the terms."""
_COARSE = 0.1  # the exponents' grid step over the whole box, for every fit
_REFINE = (0.02, 0.004, 0.0008)  # then +-5 steps of each around the best point so far
_SUPPORTS = {k: [list(c) for r in range(1, k + 1) for c in itertools.combinations(range(k), r)]
             for k in (2, 3)}


# --- the fitting problem: for fixed exponents, nonnegative least squares in (E, A_1..A_m) ------

def _solve_small(M: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Batched M x = r for 1x1, 2x2 and 3x3 symmetric M (Cramer's rule; singular -> huge)."""
    k = M.shape[-1]
    if k == 1:
        return r / np.where(M[..., 0, :] == 0, 1e-300, M[..., 0, :])
    if k == 2:
        a, b, d = M[..., 0, 0], M[..., 0, 1], M[..., 1, 1]
        det = a * d - b * b
        det = np.where(det == 0, 1e-300, det)
        return np.stack([(d * r[..., 0] - b * r[..., 1]) / det,
                         (a * r[..., 1] - b * r[..., 0]) / det], -1)
    adj = np.stack([np.cross(M[..., 1, :], M[..., 2, :]), np.cross(M[..., 2, :], M[..., 0, :]),
                    np.cross(M[..., 0, :], M[..., 1, :])], -2)
    det = (M[..., 0, :] * adj[..., 0, :]).sum(-1)
    det = np.where(det == 0, 1e-300, det)
    return np.einsum("...ji,...j->...i", adj, r) / det[..., None]


def _nnls(M: np.ndarray, r: np.ndarray, s0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact nonnegative least squares from the normal equations (M, r, s0 = y'Wy), every
    support tried: the optimum is the least-squares solution on its support."""
    best = np.broadcast_to(s0, M.shape[:-2]).astype(float).copy()
    coef = np.zeros(M.shape[:-1])
    for S in _SUPPORTS[M.shape[-1]]:
        c = _solve_small(M[..., S, :][..., :, S], r[..., S])
        sse = s0 - (r[..., S] * c).sum(-1)
        ok = (c >= 0).all(-1) & (sse < best)
        best = np.where(ok, sse, best)
        full = np.zeros_like(coef)
        full[..., S] = c
        coef = np.where(ok[..., None], full, coef)
    return coef, best


def _profile(logs: np.ndarray, y: np.ndarray, W: np.ndarray, grid: np.ndarray):
    """For each resample b and exponents grid[b, g] (or one grid (G, m) for every resample):
    the best (E, A'...) >= 0 and the weighted sum of squared relative residuals. `logs` are
    centred, so A' is the coefficient at the design's geometric mean."""
    ones = np.ones(grid.shape[:-1] + (logs.shape[1], 1))
    X = np.concatenate([ones, np.exp(-grid[..., None, :] * logs.T)], -1)  # (..., G, n, k)
    w = W / y ** 2  # relative residuals: (fit - y) / y, about log(fit / y)
    if X.ndim == 3:  # one grid for every resample: one matrix product
        Q = (X[..., :, None] * X[..., None, :]).transpose(1, 0, 2, 3).reshape(len(y), -1)
        M = (w @ Q).reshape(len(W), *X.shape[:1], X.shape[-1], X.shape[-1])
        r = ((w * y) @ X.transpose(1, 0, 2).reshape(len(y), -1)).reshape(len(W), len(X), -1)
    else:
        M = np.matmul((X * w[:, None, :, None]).transpose(0, 1, 3, 2), X)
        r = np.einsum("bi,bgij->bgj", w * y, X, optimize=True)
    return _nnls(M, r, W.sum(1)[:, None])


def fit_law(logs: np.ndarray, loss: np.ndarray, W: np.ndarray | None = None) -> np.ndarray:
    """(E, A_1..A_m, x_1..x_m) minimising the squared relative residuals of
    E + sum_k A_k exp(-x_k logs_k) against `loss`, for each row of run weights W (B, n)
    (default: every run once). The exponents are profiled: a grid over the whole box, then
    finer grids around each resample's best point, with E and the A_k exact (nonnegative least
    squares) at every point, so every resample gets its own global optimum."""
    m, n = logs.shape
    W = np.ones((1, n)) if W is None else np.asarray(W, float)
    y = np.asarray(loss, float)
    centre = logs.mean(1)
    logs = logs - centre[:, None]
    axis = np.arange(0.0, EXPONENT_MAX + 1e-9, _COARSE)
    grid = np.array(list(itertools.product(axis, repeat=m)))
    coef, sse = _profile(logs, y, W, grid)
    at = np.arange(len(W))
    i = np.argmin(sse, 1)
    best, coef = grid[i], coef[at, i]
    for step in _REFINE:
        offsets = np.array(list(itertools.product(np.arange(-5, 6) * step, repeat=m)))
        local = np.clip(best[:, None, :] + offsets, 0.0, EXPONENT_MAX)
        c, sse = _profile(logs, y, W, local)
        i = np.argmin(sse, 1)
        best, coef = local[at, i], c[at, i]
    return np.concatenate([coef[:, :1], coef[:, 1:] * np.exp(best * centre), best], 1)


def _params(p: np.ndarray) -> dict[str, float]:
    if len(p) == 5:
        return {"E": float(p[0]), "A": float(p[1]), "alpha": float(p[3]), "B": float(p[2]),
                "beta": float(p[4])}
    return {"E": float(p[0]), "A": float(p[1]), "alpha": float(p[2])}


def fit_chinchilla(n, d, loss) -> dict[str, float]:
    """(E, A, alpha, B, beta) of L(N, D) = E + A/N^alpha + B/D^beta."""
    logs = np.log(np.stack([np.asarray(n, float), np.asarray(d, float)]))
    return _params(fit_law(logs, loss)[0])


def fit_size_law(n, loss) -> dict[str, float]:
    """(E, A, alpha) of L(N | D) = E + A/N^alpha at one token budget."""
    return _params(fit_law(np.log(np.asarray(n, float))[None], loss)[0])


def chinchilla_loss(p: dict[str, float], n, d):
    return p["E"] + p["A"] / np.power(n, p["alpha"]) + p["B"] / np.power(d, p["beta"])


_FRONTIER_N = np.geomspace(1e2, 1e13, 3000)


def frontier(P: np.ndarray, compute: float, flops_per_nd: float = 6.0
             ) -> tuple[np.ndarray, np.ndarray]:
    """(loss, N) on the compute-optimal frontier at `compute` FLOPs, for each parameter row of
    P (B, 5): a model of N parameters on D tokens costs flops_per_nd * N * D."""
    n = _FRONTIER_N[None]
    d = compute / (flops_per_nd * n)
    losses = P[:, 0:1] + P[:, 1:2] / n ** P[:, 3:4] + P[:, 2:3] / d ** P[:, 4:5]
    i = np.argmin(losses, 1)
    return losses[np.arange(len(P)), i], _FRONTIER_N[i]


def optimal_loss(p: dict[str, float], compute: float, flops_per_nd: float = 6.0
                 ) -> tuple[float, float]:
    """(loss, N) on the compute-optimal frontier of one fit."""
    row = np.array([[p["E"], p["A"], p["B"], p["alpha"], p["beta"]]])
    loss, n = frontier(row, compute, flops_per_nd)
    return float(loss[0]), float(n[0])


# --- intervals and identification ------------------------------------------------------------

def interval(values) -> dict[str, float]:
    """95% percentile interval of bootstrap draws and the Monte-Carlo error of its ends: half
    the spread of the order statistics one binomial SD of rank either side of each end."""
    v = np.sort(np.asarray(values, float))
    if not len(v):
        return {"low": math.nan, "high": math.nan, "mc_error": math.nan}
    lo, hi = np.percentile(v, [2.5, 97.5])
    k = math.sqrt(len(v) * 0.025 * 0.975)

    def spread(q: float) -> float:
        a, b = q * (len(v) - 1) - k, q * (len(v) - 1) + k
        return float(np.interp(b, np.arange(len(v)), v) - np.interp(a, np.arange(len(v)), v)) / 2

    return {"low": float(lo), "high": float(hi),
            "mc_error": max(spread(0.025), spread(0.975))}


def condition_number(p: np.ndarray, logs: np.ndarray) -> float:
    """Condition number of the Gauss-Newton Hessian J'J of the fit at p = (E, A_k.., x_k..),
    J the derivatives of log L in (log E, log A_k, x_k) with each log term centred on the
    design's mean (so intercepts and slopes are not collinear by construction)."""
    m = len(logs)
    centred = logs - logs.mean(1, keepdims=True)
    terms = p[1:m + 1, None] * np.exp(-p[m + 1:, None] * logs)  # A_k / N_k^x_k, (m, n)
    total = p[0] + terms.sum(0)
    J = np.concatenate([[np.full(logs.shape[1], p[0])], terms, -terms * centred]).T
    J = J / total[:, None]
    ev = np.linalg.eigvalsh(J.T @ J)
    return float(ev[-1] / ev[0]) if ev[0] > 0 else math.inf


def unidentified(p: dict[str, float], cis: dict[str, dict], cond: float, loss) -> str:
    """Why the runs do not identify the law ('' when they do), from the fit itself."""
    floor = 0.01 * float(np.min(loss))
    e = cis["E"]
    if p["E"] <= floor or e["low"] <= floor:
        return (f"E's 95% bootstrap interval ({e['low']:.3g} to {e['high']:.3g}) reaches its "
                "bound 0: the runs span too little size and data to separate the irreducible "
                "loss from the power laws")
    for key in ("alpha", "beta"):
        if key not in cis:
            continue
        c = cis[key]
        if c["low"] <= 0.01 or c["high"] >= EXPONENT_MAX - 0.01:
            return (f"{key}'s 95% bootstrap interval ({c['low']:.3f} to {c['high']:.3f}) "
                    f"reaches a bound of [0, {EXPONENT_MAX:g}]")
        if c["high"] - c["low"] > p[key]:
            return (f"{key}'s 95% bootstrap interval ({c['low']:.3f} to {c['high']:.3f}) is "
                    f"wider than {key} itself ({p[key]:.3f})")
    if not cond < MAX_CONDITION:
        return (f"the fit's Gauss-Newton Hessian has condition number {cond:.2g} (above "
                f"{MAX_CONDITION:.0e}): the design cannot separate the law's terms")
    return ""


# --- the fit a design supports -----------------------------------------------------------------

def fit_runs(n, d, loss, *, flops=None, n_boot: int = N_BOOT, seed: int = 0,
             extrapolate: float = 10.0) -> dict[str, Any]:
    """The fit the design supports, with bootstrap (resampling runs) 95% intervals. `n`: the
    parameters of each run, `d` its tokens, `flops` its training FLOPs (default 6ND)."""
    n, d, loss = (np.asarray(x, dtype=float) for x in (n, d, loss))
    flops = 6.0 * n * d if flops is None else np.asarray(flops, dtype=float)
    ok = np.isfinite(n) & np.isfinite(d) & np.isfinite(loss) & np.isfinite(flops) & (n > 0) \
        & (d > 0) & (loss > 0)
    n, d, loss, flops = n[ok], d[ok], loss[ok], flops[ok]
    sizes, budgets = len(np.unique(n)), len(np.unique(d))
    if len(n) < MIN_RUNS or sizes < 3:
        raise ValueError(f"a scaling fit needs at least {MIN_RUNS} completed runs at 3 or more "
                         f"model sizes; got {len(n)} runs at {sizes} sizes and {budgets} token "
                         "budgets")
    if budgets >= 3:
        return _chinchilla(n, d, loss, flops, n_boot, seed, extrapolate)
    if budgets == 1:
        return _size_law(n, float(d[0]), loss, n_boot, seed)
    raise ValueError(f"{budgets} token budgets: a law in size and data needs 3 or more (vary "
                     "max_steps or --tokens), a law in size alone needs one")


def _resamples(n_runs: int, n_boot: int, seed: int) -> np.ndarray:
    """Bootstrap multiplicities of each run (n_boot, n_runs)."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_runs, np.full(n_runs, 1.0 / n_runs), size=n_boot).astype(float)


def _usable(W: np.ndarray, *axes: np.ndarray) -> np.ndarray:
    """Resamples that keep 3 distinct values on every axis (a fit needs them)."""
    return np.array([all(len(np.unique(a[w > 0])) >= 3 for a in axes) for w in W], bool)


CONVENTION = ("N counts every parameter (the tied embedding once) and compute is the recorded "
              "training FLOPs (6N + 12 x n_layers x d_model x seq_len per token), as "
              "--iso-flops counts them")


def _chinchilla(n, d, loss, flops, n_boot, seed, extrapolate) -> dict[str, Any]:
    logs = np.log(np.stack([n, d]))
    P = fit_law(logs, loss)[0]
    p = _params(P)
    W = _resamples(len(n), n_boot, seed)
    boots = fit_law(logs, loss, W[_usable(W, n, d)])
    top = int(np.argmax(flops))
    per_nd = float(flops[top] / (n[top] * d[top]))  # 6 x (1 + the attention share)
    target = extrapolate * float(flops.max())
    pred, n_opt = optimal_loss(p, target, per_nd)
    cis = {"E": interval(boots[:, 0]), "alpha": interval(boots[:, 3]),
           "beta": interval(boots[:, 4]),
           "predicted_loss": interval(frontier(boots, target, per_nd)[0])}
    cond = condition_number(P, logs)
    why = unidentified(p, cis, cond, loss) or _far(n_opt, n)
    out = {"form": "L(N, D) = E + A/N^alpha + B/D^beta", "n": int(len(n)), **p,
           **{f"{k}_ci95": [c["low"], c["high"]] for k, c in cis.items()},
           "mc_error": {k: c["mc_error"] for k, c in cis.items()}, "condition": cond,
           "compute_max": target / extrapolate, "flops_per_nd": per_nd,
           "extrapolate": extrapolate, "convention": CONVENTION, "n_boot": n_boot,
           "n_boot_ok": len(boots), "identified": not why, "unidentified_because": why}
    if not why:
        out.update(predicted_loss=pred, optimal_n=n_opt)
    out["summary"] = _summary(out, cis, why, pred, n_opt)
    return out


def _far(n_opt: float, n) -> str:
    if float(np.min(n)) / 10 <= n_opt <= 100 * float(np.max(n)):
        return ""
    return (f"the fitted compute-optimal size N={n_opt:.3g} lies far outside the sizes trained "
            f"({float(np.min(n)):.3g} to {float(np.max(n)):.3g})")


def _summary(out: dict, cis: dict, why: str, pred: float, n_opt: float) -> str:
    shown = ("E", "alpha", "beta") + (() if why else ("predicted_loss",))
    mc = max(out["mc_error"][k] for k in shown)
    head = (f"{out['form']} over {out['n']} completed runs ({CONVENTION}): "
            f"E={out['E']:.3f} (95% bootstrap CI {cis['E']['low']:.3f} to "
            f"{cis['E']['high']:.3f}), alpha={out['alpha']:.3f} ({cis['alpha']['low']:.3f} to "
            f"{cis['alpha']['high']:.3f}), beta={out['beta']:.3f} ({cis['beta']['low']:.3f} to "
            f"{cis['beta']['high']:.3f}); {out['n_boot_ok']} resamples of the runs, each fitted "
            f"over the whole range of exponents (Monte-Carlo error of the interval ends up to "
            f"{mc:.2g})")
    if why:
        return head + f". Not identified, so no extrapolation along compute is reported: {why}."
    pl = cis["predicted_loss"]
    return head + (f". On the compute-optimal frontier at {out['extrapolate']:g}x the largest "
                   f"compute ({out['extrapolate'] * out['compute_max']:.3g} FLOPs): loss "
                   f"{pred:.3f} (95% CI {pl['low']:.3f} to {pl['high']:.3f}) at N={n_opt:.3g}.")


def _size_law(n, d: float, loss, n_boot, seed) -> dict[str, Any]:
    logs = np.log(n)[None]
    p = _params(fit_law(logs, loss)[0])
    W = _resamples(len(n), n_boot, seed)
    boots = fit_law(logs, loss, W[_usable(W, n)])
    ci = interval(boots[:, 2])
    e_ci = interval(boots[:, 0])
    return {"form": "L(N | D) = E_D + A/N^alpha", "n": int(len(n)), "tokens": d, **p,
            "alpha_ci95": [ci["low"], ci["high"]], "E_ci95": [e_ci["low"], e_ci["high"]],
            "mc_error": {"alpha": ci["mc_error"], "E": e_ci["mc_error"]},
            "n_boot": n_boot, "n_boot_ok": len(boots), "convention": CONVENTION,
            "E_at_bound": bool(e_ci["low"] <= 0.01 * float(loss.min())),
            "summary": (f"L(N | D={d:,.0f} tokens) = E_D + A/N^alpha over {len(n)} completed "
                        f"runs ({CONVENTION}): E_D={p['E']:.3f} (95% bootstrap CI "
                        f"{e_ci['low']:.3f} to {e_ci['high']:.3f}), alpha={p['alpha']:.3f} "
                        f"({ci['low']:.3f} to {ci['high']:.3f}; {len(boots)} resamples, each "
                        "fitted over the whole range of alpha). A law in size at one token "
                        "budget: it says nothing about more data or compute, so no "
                        "extrapolation along compute is made; vary the budget too (3 or more) "
                        "for L(N, D).")}


def fit_experiment(res) -> dict[str, Any]:
    """The scaling fit of an experiment's completed runs, in the convention of `spec.flops`."""
    df = res.trials
    done = df[df["status"].astype(str) == Status.COMPLETED] if len(df) else df
    if done.empty:
        raise ValueError("a scaling fit needs completed runs; this experiment has none")
    missing = [c for c in ("params", "flops_per_token", "tokens_seen") if c not in done]
    if missing:
        raise ValueError(f"a scaling fit needs each run's {', '.join(missing)} (recorded by the "
                         "trainer in outcome.json); this experiment lacks them")
    tokens = done["tokens_seen"].astype(float).to_numpy()
    return fit_runs(done["params"].astype(float).to_numpy(), tokens,
                    done[METRIC].astype(float).to_numpy(),
                    flops=done["flops_per_token"].astype(float).to_numpy() * tokens)
