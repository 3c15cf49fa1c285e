"""Every arm at its own best learning rate (`grid --tune-lr K`): the lr sweep's curves, each
arm's optimum with an honest interval, lr sensitivity, and the conclusions that change when arms
are compared at their own optimum instead of at their configured lr.

Design choices:
- The lr sweep's trials (seed `LR_SWEEP_SEED`, and `LR_REPLICATE_SEED` at the configured lr and
  at the lowest and highest lrs that ran to the end) choose each arm's lr; the seeding phase
  (seeds 0, 1, ... at the chosen lr) answers, with the default grid's sequential procedure. The
  runs that answer are not the runs that chose, so the answer carries no winner's curse.
- Seed noise depends strongly on the lr (benchmarks/RESULTS.md, section 5: a seed SD of 0.009
  at 2.4e-3, 0.175 at 8e-3), so it is measured, not assumed: wherever an lr has 2 or more runs
  (the second seeds; the seeding phase at the chosen lr) its SD is measured there, and between
  those lrs it is interpolated in log(SD) against log(lr).
- The bracket, always: the lrs that cannot be told apart from the best one (no other swept lr
  is lower by more than z x the SE of the difference, Bonferroni over the comparisons; Gupta's
  subset selection), so the best lr among the swept ones is in it with about 95% probability,
  and, for a curve with one minimum, the optimum lies between the nearest swept lrs outside
  it. An end of that bracket that is the end of the swept range is open: the report then says
  the optimum may lie beyond the range and to widen --lr-span.
- A parabola in log(lr), weighted by the measured noise, gives a finer optimum only when it
  earns it: 4 or more full-budget lrs, no lack of fit (chi-square of the weighted residuals,
  p >= 0.05), and a 95% interval inside the swept range. That interval is the hull of two
  bootstrap intervals, the parabola through every point and the parabola through the best
  point and its two neighbours (loss curves are asymmetric: the instability side rises faster,
  and the two fits disagree by as much as the asymmetry moves the vertex), each refitted 1,000
  times under the measured noise with each measured SD itself redrawn from its sampling
  distribution (an SD from two seeds is uncertain). Otherwise the bracket is the interval and
  is labelled so. tests/test_lr_tuning.py checks both against asymmetric, heteroscedastic
  curves shaped like section 5.
- The chosen lr is a swept lr, so the seeding phase trains exactly what was measured: nearest
  the parabola's vertex when the parabola is reported, else the best measured one.
- The fixed-lr comparison uses each arm's runs at its configured lr (the lr sweep's two seeds
  there), paired by seed with the baseline's, its uncertainty the pooled SD of those paired
  differences: noise measured at those lrs, not borrowed from the seeding phase's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..spec.names import LR_REPLICATE_SEED, LR_SWEEP_SEED, METRIC, Status

BOOTSTRAPS = 1000
ALPHA = 0.05
"""Error rate of the bracket (Bonferroni over its comparisons) and the lack-of-fit test."""
MIN_PARABOLA_POINTS = 4
"""A parabola through 3 points fits exactly: its lack of fit cannot be tested."""


@dataclass
class LrFit:
    """One arm's lr curve, its optimum and how well it is known."""
    arm: str
    lrs: list[float]
    """The full-budget points' distinct learning rates, ascending."""
    losses: list[float]
    """Mean final loss at each."""
    runs: list[int] = field(default_factory=list)
    """Full-budget runs (seeds) at each."""
    sd: list[float] = field(default_factory=list)
    """Seed SD used at each lr: measured where it has 2+ runs, interpolated between."""
    noise: str = ""
    """Where the seed noise was measured ("" when nowhere)."""
    kind: str = ""
    """`parabola` (its vertex and interval), `bracket` (the lrs around the best that cannot be
    told apart from it) or "" (no interval: see `refused`)."""
    opt_lr: float = math.nan
    """Fitted optimum (parabola only)."""
    opt_lr_ci: tuple[float, float] = (math.nan, math.nan)
    """95% interval of the optimum: the parabola's, or the bracket (nan: open at that end)."""
    opt_loss: float = math.nan
    """Fitted loss at the optimum (parabola only)."""
    opt_loss_ci: tuple[float, float] = (math.nan, math.nan)
    indistinct: list[float] = field(default_factory=list)
    """The lrs that cannot be told apart from the best measured one."""
    lack_of_fit_p: float = math.nan
    """p-value of the weighted parabola's lack of fit (nan when not tested)."""
    why_bracket: str = ""
    """Why the parabola's interval is not reported ("" when it is)."""
    refused: str = ""
    """Why no interval is given ("" when one is)."""
    interior: float = math.nan
    """Share of the parabola's bootstrap refits whose vertex lies inside the range."""
    chosen: float = math.nan
    """The swept lr the seeding phase trains."""
    coef: tuple[float, ...] = field(default_factory=tuple)
    """Weighted parabola in x = ln(lr), highest power first (empty when not fitted)."""


def lr_grid(center: float, k: int, span: float) -> list[float]:
    """`k` learning rates evenly spaced in log scale from center/span to center*span."""
    return [float(center * span ** t) for t in np.linspace(-1.0, 1.0, k)]


def centre_out(lrs: list[float]) -> list[float]:
    """The configured (centre) lr first, then outward alternately: the ends, the likeliest to
    be stopped early, start last."""
    mid = len(lrs) // 2
    order = sorted(range(len(lrs)), key=lambda i: (abs(i - mid), i))
    return [lrs[i] for i in order]


def replicate_lrs(centre: float, completed: list[float]) -> list[float]:
    """Where the lr sweep's second seed runs: the configured lr and the lowest and highest lrs
    that ran to the end (the noise model's anchors across the range)."""
    picks = [centre, *([min(completed), max(completed)] if completed else [])]
    return sorted({round(v, 15): v for v in picks}.values())


# --- the noise, the bracket and the parabola ---------------------------------------------------

def _groups(lrs, losses) -> tuple[np.ndarray, list[np.ndarray]]:
    by: dict[float, list[float]] = {}
    for lr, y in zip(lrs, losses):
        key = next((k for k in by if math.isclose(k, lr, rel_tol=1e-9)), float(lr))
        by.setdefault(key, []).append(float(y))
    keys = sorted(by)
    return np.asarray(keys, float), [np.asarray(by[k]) for k in keys]


def _noise(x: np.ndarray, groups: list[np.ndarray]):
    """(SD at each x, anchors' x, SD, degrees of freedom). SDs are measured where an lr has 2+
    runs; log SD is unbiased for its few degrees of freedom (E log s^2 = log sigma^2 +
    digamma(df/2) - log(df/2): an SD from 2 seeds is half the truth in log-mean) and, with 3 or
    more anchors, fitted as a line in log(lr) weighted by df (one 2-seed SD is too noisy to
    trust alone); with fewer, interpolated between them."""
    from scipy.special import digamma

    at = [i for i, g in enumerate(groups) if len(g) >= 2]
    if not at:
        return None, None, None, None
    sd = np.array([max(float(np.std(groups[i], ddof=1)), 1e-4) for i in at])
    df = np.array([len(groups[i]) - 1 for i in at], float)
    log_sd = np.log(sd) - 0.5 * (digamma(df / 2) - np.log(df / 2))
    if len(at) >= 3:
        slope, icpt = np.polyfit(x[at], log_sd, 1, w=np.sqrt(df))
        return np.exp(icpt + slope * x), x[at], sd, df
    return np.exp(np.interp(x, x[at], log_sd)), x[at], sd, df


def _bracket(m: np.ndarray, se: np.ndarray) -> list[int]:
    """Indices no other point beats by more than z * SE of the difference (Bonferroni over the
    K - 1 comparisons of each point): contains the truly best point with ~95% probability."""
    from scipy.stats import norm

    z = float(norm.ppf(1 - ALPHA / max(1, len(m) - 1)))
    diff = m[:, None] - m[None, :]
    return [i for i in range(len(m)) if not np.any(diff[i] > z * np.hypot(se[i], se))]


def _vertices(coef: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Vertex of each parabola (3, B); one opening downward has no minimum: +-inf on the side
    its lower end is."""
    a, b = coef[0], coef[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        v = -b / (2 * a)
    low_end_lower = a * lo * lo + b * lo < a * hi * hi + b * hi
    return np.where(a > 0, v, np.where(low_end_lower, -np.inf, np.inf))


def _cubic_minima(c: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The local minimum of each cubic (4, B) (+-inf toward its lower end when it has none)."""
    a, b, k = 3 * c[0], 2 * c[1], c[2]
    disc = b * b - 4 * a * k
    root = np.sqrt(np.maximum(disc, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        r1, r2 = (-b + root) / (2 * a), (-b - root) / (2 * a)
    r = np.where(2 * a * r1 + b > 0, r1, r2)  # the root where the curvature is positive
    y = lambda t: ((c[0] * t + c[1]) * t + c[2]) * t  # noqa: E731
    side = np.where(y(lo) < y(hi), -np.inf, np.inf)
    return np.where((disc > 0) & np.isfinite(r), r, side)


def _noise_draws(sd: np.ndarray, dof: float, rng) -> np.ndarray:
    """(K, B) SDs at each lr for each refit: the measured noise model, its scale redrawn from
    its sampling distribution (sqrt(dof / chi2_dof), dof pooled over the lrs it was measured
    at): an SD measured from a few seeds may be well below the truth."""
    return sd[:, None] * np.sqrt(dof / rng.chisquare(dof, BOOTSTRAPS))[None, :]


def _weighted_fit(x: np.ndarray, Y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares parabolas for each column of Y: (3, B)."""
    X = np.stack([x * x, x, np.ones_like(x)], 1) * np.sqrt(w)[:, None]
    return np.linalg.lstsq(X, Y * np.sqrt(w)[:, None], rcond=None)[0]


def _parabola(fit: LrFit, x, m, n, se, noise, seed: int) -> None:
    """The weighted parabola: its lack of fit, and its vertex interval (the hull of the global
    and the local fit's bootstrap intervals) when it fits and is pinned inside the range."""
    from scipy.stats import f as fisher

    w = 1.0 / se ** 2
    coef = _weighted_fit(x, m[:, None], w)[:, 0]
    fit.coef = tuple(float(c) for c in coef)
    dof = float(sum(noise[2]))  # the noise's degrees of freedom, pooled over its anchors
    chi2 = float((w * (m - np.polyval(coef, x)) ** 2).sum())
    fit.lack_of_fit_p = float(fisher.sf(chi2 / (len(x) - 3), len(x) - 3, dof))
    if fit.lack_of_fit_p < ALPHA:
        fit.why_bracket = (f"the parabola does not fit the points (lack of fit p="
                           f"{fit.lack_of_fit_p:.2g} against the measured noise)")
        return
    rng = np.random.default_rng(seed)
    noise_se = _noise_draws(se * np.sqrt(n), dof, rng) / np.sqrt(n)[:, None]
    z = rng.standard_normal((len(x), BOOTSTRAPS))
    boot = _weighted_fit(x, np.polyval(coef, x)[:, None] + noise_se * z, w)
    v = _vertices(boot, x[0], x[-1])
    fit.interior = float(np.mean((v >= x[0]) & (v <= x[-1])))
    j = int(np.argmin(m))
    near = [j - 1, j, j + 1]
    local = np.linalg.solve(np.stack([x[near] ** 2, x[near], np.ones(3)], 1),
                            m[near][:, None] + noise_se[near] * z[near])
    vl = _vertices(local, x[near[0]], x[near[-1]])
    ends = [v, vl]
    if len(x) >= 5:  # a cubic: the asymmetry itself, with a degree of freedom left
        Xc = np.stack([x ** 3, x * x, x, np.ones_like(x)], 1) * np.sqrt(w)[:, None]
        cub = np.linalg.lstsq(Xc, (m[:, None] + noise_se * z) * np.sqrt(w)[:, None], rcond=None)[0]
        ends.append(_cubic_minima(cub, x[0], x[-1]))
    ends = [np.clip(u, x[0] - 50.0, x[-1] + 50.0) for u in ends]  # no minimum: far out
    lo = min(np.percentile(u, 2.5) for u in ends)
    hi = max(np.percentile(u, 97.5) for u in ends)
    xv = float(_vertices(coef[:, None], x[0], x[-1])[0])
    if not (x[0] <= lo and hi <= x[-1] and lo <= xv <= hi):
        fit.why_bracket = ("the parabola's optimum is not pinned inside the range (its 95% "
                           "interval reaches an end)")
        return
    fit.kind = "parabola"
    fit.opt_lr, fit.opt_loss = math.exp(xv), float(np.polyval(coef, xv))
    fit.opt_lr_ci = (math.exp(lo), math.exp(hi))
    inside = np.isfinite(v) & (v >= x[0]) & (v <= x[-1])
    a, b, c = boot[:, inside]
    mins = a * v[inside] ** 2 + b * v[inside] + c
    fit.opt_loss_ci = tuple(float(q) for q in np.percentile(mins, [2.5, 97.5])) if len(mins) \
        else (math.nan, math.nan)
    fit.chosen = float(math.exp(x[np.argmin(np.abs(x - xv))]))


def _edges(fit: LrFit, x: np.ndarray, S: list[int], swept: dict[float, str]) -> None:
    """The bracket from the indistinct set S: open at an end of the full-budget points unless a
    diverged lr bounds it; what an open end means, in terms of the swept range."""
    lo = math.exp(x[S[0] - 1]) if S[0] > 0 else math.nan
    hi = math.exp(x[S[-1] + 1]) if S[-1] < len(x) - 1 else math.nan
    below = sorted(lr for lr in swept if lr < math.exp(x[0]) * (1 - 1e-9))
    above = sorted(lr for lr in swept if lr > math.exp(x[-1]) * (1 + 1e-9))
    # A diverged lr (its loss exploded, or it never beat the unigram reference) is worse than
    # any finite loss: the nearest one beyond the full-budget points bounds the optimum.
    if math.isnan(lo):
        lo = next((lr for lr in reversed(below) if swept[lr] == Status.DIVERGED), math.nan)
    if math.isnan(hi):
        hi = next((lr for lr in above if swept[lr] == Status.DIVERGED), math.nan)
    fit.opt_lr_ci = (lo, hi)
    if math.isnan(lo):
        fit.refused = _open_end(math.exp(x[0]), below, swept, "lowest", "below")
    elif math.isnan(hi):
        fit.refused = _open_end(math.exp(x[-1]), above, swept, "highest", "above")


def _open_end(end: float, beyond: list[float], swept: dict[float, str], which: str,
              side: str) -> str:
    if not beyond:
        return (f"the {which} lr swept ({end:.3g}) cannot be told apart from the best: the "
                f"optimum may lie {side} the range; widen --lr-span")
    how = ", ".join(f"{lr:.3g} {swept[lr]}" for lr in beyond)
    return (f"the {which} lr that ran to the end ({end:.3g}) cannot be told apart from the best, "
            f"and the lrs swept {side} it did not run to the end ({how}): nothing measured "
            f"bounds the optimum {side}")


def fit_lr_curve(arm: str, lrs: list[float], losses: list[float],
                 swept: dict[float, str] | None = None, seed: int = 0) -> LrFit:
    """The arm's optimum from its full-budget (lr, loss) points (repeated lrs are seeds);
    `swept` names every lr the sweep trained with its status (stopped early, diverged, ...)."""
    x_lr, groups = _groups(lrs, losses)
    fit = LrFit(arm, [float(v) for v in x_lr], [float(g.mean()) for g in groups],
                runs=[len(g) for g in groups])
    swept = dict(swept or {})
    if len(x_lr) < 3:
        fit.refused = f"{len(x_lr)} full-budget lr(s); a fit needs 3"
        fit.chosen = fit.lrs[int(np.argmin(fit.losses))] if len(x_lr) else math.nan
        return fit
    x, m, n = np.log(x_lr), np.array(fit.losses), np.array(fit.runs, float)
    best = int(np.argmin(m))
    fit.chosen = fit.lrs[best]
    sd, *anchors = _noise(x, groups)
    if sd is None:
        fit.refused = ("no seed noise measured (no lr has 2 runs): the best measured lr is "
                       "chosen, with no interval")
        return fit
    fit.sd = [float(v) for v in sd]
    fit.noise = ", ".join(f"{math.exp(a):.3g} ({int(d) + 1} runs)"
                          for a, d in zip(anchors[0], anchors[2]))
    se = sd / np.sqrt(n)
    S = _bracket(m, se)
    fit.indistinct = [fit.lrs[i] for i in S]
    _edges(fit, x, S, swept)
    if fit.refused:
        return fit
    fit.kind = "bracket"
    if len(x) < MIN_PARABOLA_POINTS:
        fit.why_bracket = (f"{len(x)} full-budget lrs: a parabola through 3 points cannot be "
                           "tested for lack of fit")
    elif best in (0, len(x) - 1):
        fit.why_bracket = (f"the best point is the {'lowest' if best == 0 else 'highest'} lr "
                           "that ran to the end, bounded beyond by a diverged lr")
    else:
        bracket = fit.opt_lr_ci
        _parabola(fit, x, m, n, se, anchors, seed)
        if fit.kind != "parabola":
            fit.opt_lr_ci, fit.chosen = bracket, fit.lrs[best]
    return fit


# --- from the results tables -------------------------------------------------------------------

SWEEP_SEEDS = (LR_SWEEP_SEED, LR_REPLICATE_SEED)


def sweep_trials(df):
    """The lr sweep's trials (those that chose each arm's lr), both of its seeds."""
    return df[df["seed"].isin(SWEEP_SEEDS)]


def seeding_trials(df):
    """Every trial but the lr sweep's: what a grid's answer is computed from."""
    return df[~df["seed"].isin(SWEEP_SEEDS)]


def arm_points(df, arm: str) -> tuple[list[float], list[float], dict[float, str]]:
    """(lrs, final losses) of every full-budget run of the arm (the lr sweep's and the seeding
    phase's: all measure the final loss at their lr), and the status of every lr swept."""
    g = df[df["ablation"].astype(str) == arm]
    done = g[g["status"].astype(str) == Status.COMPLETED].dropna(subset=[METRIC])
    swept = {}
    for lr, status in zip(sweep_trials(g)["lr"], sweep_trials(g)["status"].astype(str)):
        if status == Status.COMPLETED or float(lr) not in swept:
            swept[float(lr)] = status
    return [float(v) for v in done["lr"]], [float(v) for v in done[METRIC]], swept


def fits(df) -> dict[str, LrFit]:
    """Every arm's fit from all its full-budget runs."""
    arms = dict.fromkeys(sweep_trials(df)["ablation"].astype(str))
    return {a: fit_lr_curve(a, *arm_points(df, a)) for a in arms}


@dataclass
class FixedLr:
    """One arm against the baseline at both arms' configured lr (the lr sweep's runs there)."""
    arm: str
    diff: float
    """Mean over seeds of (arm - baseline) at the configured lrs, paired by seed."""
    half_width: float
    """95% half-width: Student t with the pooled SD of the paired differences of every arm."""
    n: int = 1
    """Seeds paired."""
    dof: int = 0
    """Degrees of freedom of the pooled SD."""

    @property
    def verdict(self) -> str:
        if not math.isfinite(self.half_width):
            return "no test"
        if abs(self.diff) <= self.half_width:
            return "not resolved"
        return "better" if self.diff < 0 else "worse"


def fixed_lr(df, centres: dict[str, float]) -> dict[str, FixedLr]:
    """Each arm's runs at its configured lr minus the baseline's, paired by seed (the lr
    sweep's two seeds there), with an unadjusted 95% t interval from the pooled SD of the
    paired differences across arms (seed noise measured at those lrs)."""
    from scipy.stats import t as student

    done = sweep_trials(df)
    done = done[done["status"].astype(str) == Status.COMPLETED]

    def at_centre(arm) -> dict[int, float]:
        g = done[done["ablation"].astype(str) == arm]
        g = g[np.isclose(g["lr"].astype(float), centres.get(arm, math.nan), rtol=1e-6)]
        return {int(s): float(v) for s, v in zip(g["seed"], g[METRIC])}

    base = at_centre("baseline")
    diffs = {}
    for arm in centres:
        if arm != "baseline":
            mine = at_centre(arm)
            diffs[arm] = np.array([mine[s] - base[s] for s in sorted(mine) if s in base])
    dof = sum(max(0, len(d) - 1) for d in diffs.values())
    ss = sum(float(((d - d.mean()) ** 2).sum()) for d in diffs.values() if len(d) > 1)
    sd = math.sqrt(ss / dof) if dof else math.nan
    q = float(student.ppf(0.975, dof)) if dof else math.nan
    return {a: FixedLr(a, float(d.mean()) if len(d) else math.nan,
                       q * sd / math.sqrt(len(d)) if len(d) else math.nan, len(d), dof)
            for a, d in diffs.items()}
