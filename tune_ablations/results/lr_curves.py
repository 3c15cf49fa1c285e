"""Every arm at its own best learning rate (`grid --tune-lr K`): the lr sweep's curves, a fit of
each arm's optimum with an interval, lr sensitivity, and the conclusions that change when arms
are compared at their own optimum instead of at their configured lr.

Design choices:
- The lr sweep's trials (seed `LR_SWEEP_SEED`) choose each arm's lr; the seeding phase (seeds
  0, 1, ... at the chosen lr) answers, with the default grid's sequential procedure. The runs
  that answer are not the runs that chose, so the answer carries no winner's curse.
- The optimum is a least-squares parabola in log(lr) through the arm's full-budget points
  (completed; early-stopped and diverged ones have no full-budget loss). Its interval is a
  parametric bootstrap: the fitted curve plus noise of the seed SD measured at the chosen lr
  (else the fit's residual SD), refitted 1,000 times; percentiles 2.5 and 97.5.
- An optimum is refused when it is not inside the swept range: the curve opens downward, the
  vertex lies outside the points, or the best point is an end of the range. The report then
  says so and names the edge, rather than extrapolating.
- The chosen lr is the swept lr nearest the fitted optimum (the best measured one when the fit
  is refused): a lr that has a run, so the seeding phase trains exactly what was measured.
- The fixed-lr comparison uses each arm's run at its configured lr (the centre of its sweep,
  one seed, paired by seed), with the seed noise of the seeding phase as its uncertainty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..spec.names import LR_SWEEP_SEED, METRIC, Status

BOOTSTRAPS = 1000


@dataclass
class LrFit:
    """One arm's lr curve and its optimum."""
    arm: str
    lrs: list[float]
    """The full-budget points' learning rates, ascending."""
    losses: list[float]
    """Their final losses."""
    opt_lr: float = math.nan
    """Fitted optimum (nan when refused)."""
    opt_lr_ci: tuple[float, float] = (math.nan, math.nan)
    opt_loss: float = math.nan
    """Fitted loss at the optimum."""
    opt_loss_ci: tuple[float, float] = (math.nan, math.nan)
    refused: str = ""
    """Why no optimum is given ("" when it is)."""
    interior: float = math.nan
    """Share of bootstrap refits whose optimum is inside the range."""
    chosen: float = math.nan
    """The swept lr the seeding phase trains."""
    coef: tuple[float, ...] = field(default_factory=tuple)
    """Parabola coefficients in x = ln(lr), highest power first (empty when not fitted)."""


def lr_grid(center: float, k: int, span: float) -> list[float]:
    """`k` learning rates evenly spaced in log scale from center/span to center*span."""
    return [float(center * span ** t) for t in np.linspace(-1.0, 1.0, k)]


def centre_out(lrs: list[float]) -> list[float]:
    """The configured (centre) lr first, then outward alternately: the ends, the likeliest to
    be stopped early, start last."""
    mid = len(lrs) // 2
    order = sorted(range(len(lrs)), key=lambda i: (abs(i - mid), i))
    return [lrs[i] for i in order]


def _vertex(coef: np.ndarray, lo: float, hi: float) -> float | None:
    a, b, _ = coef
    if a <= 0:
        return None
    x = -b / (2 * a)
    return float(x) if lo <= x <= hi else None


def fit_lr_curve(arm: str, lrs: list[float], losses: list[float], sigma: float = math.nan,
                 seed: int = 0) -> LrFit:
    """The arm's optimum from its full-budget (lr, loss) points; see the module notes."""
    order = np.argsort(lrs)
    swept, y = np.asarray(lrs, float)[order], np.asarray(losses, float)[order]
    x = np.log(swept)
    fit = LrFit(arm, [float(v) for v in swept], [float(v) for v in y])
    if len(x) < 3:
        fit.refused = f"{len(x)} full-budget point(s); a fit needs 3"
        fit.chosen = float(swept[np.argmin(y)]) if len(x) else math.nan
        return fit
    coef = np.polyfit(x, y, 2)
    fit.coef = tuple(float(c) for c in coef)
    best = int(np.argmin(y))
    fit.chosen = float(swept[best])
    xv = _vertex(coef, x[0], x[-1])
    if best in (0, len(x) - 1) or xv is None:
        edge = "lowest" if best == 0 else "highest" if best == len(x) - 1 else "none"
        fit.refused = (f"the best point is the {edge} lr swept ({fit.chosen:.3g}): the optimum "
                       "may lie outside the range; widen --lr-span" if edge != "none" else
                       "the curve has no minimum inside the range")
        return fit
    fit.opt_lr, fit.opt_loss = float(math.exp(xv)), float(np.polyval(coef, xv))
    fit.chosen = float(swept[np.argmin(np.abs(x - xv))])
    resid = y - np.polyval(coef, x)
    s = sigma if math.isfinite(sigma) and sigma > 0 else (
        float(np.sqrt((resid ** 2).sum() / (len(x) - 3))) if len(x) > 3 else math.nan)
    if math.isfinite(s) and s > 0:
        _bootstrap(fit, coef, x, s, seed)
    return fit


def _bootstrap(fit: LrFit, coef: np.ndarray, x: np.ndarray, sigma: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    mean = np.polyval(coef, x)
    xs, ys = [], []
    for _ in range(BOOTSTRAPS):
        c = np.polyfit(x, mean + rng.normal(0.0, sigma, len(x)), 2)
        v = _vertex(c, x[0], x[-1])
        if v is not None:
            xs.append(v)
            ys.append(np.polyval(c, v))
    fit.interior = len(xs) / BOOTSTRAPS
    if len(xs) >= 0.5 * BOOTSTRAPS:
        fit.opt_lr_ci = tuple(float(math.exp(q)) for q in np.percentile(xs, [2.5, 97.5]))
        fit.opt_loss_ci = tuple(float(q) for q in np.percentile(ys, [2.5, 97.5]))


# --- from the results tables -------------------------------------------------------------------

def sweep_trials(df):
    """The lr sweep's trials (those that chose each arm's lr)."""
    return df[df["seed"] == LR_SWEEP_SEED]


def seeding_trials(df):
    """Every trial but the lr sweep's: what a grid's answer is computed from."""
    return df[df["seed"] != LR_SWEEP_SEED]


def arm_points(df, arm: str) -> tuple[list[float], list[float]]:
    """(lrs, final losses) of an arm's completed lr-sweep trials."""
    g = sweep_trials(df)
    g = g[(g["ablation"].astype(str) == arm) & (g["status"].astype(str) == Status.COMPLETED)]
    g = g.dropna(subset=[METRIC])
    return [float(v) for v in g["lr"]], [float(v) for v in g[METRIC]]


def seed_sd(df, arm: str) -> float:
    """SD over seeds of the arm's completed seeding-phase runs (nan below 2 seeds)."""
    g = seeding_trials(df)
    g = g[(g["ablation"].astype(str) == arm) & (g["status"].astype(str) == Status.COMPLETED)]
    v = g[METRIC].dropna().astype(float)
    return float(v.std(ddof=1)) if len(v) >= 2 else math.nan


def fits(df) -> dict[str, LrFit]:
    """Every arm's fit, with its own seed SD as the bootstrap noise."""
    arms = dict.fromkeys(sweep_trials(df)["ablation"].astype(str))
    return {a: fit_lr_curve(a, *arm_points(df, a), sigma=seed_sd(df, a)) for a in arms}


@dataclass
class FixedLr:
    """One arm against the baseline at both arms' configured lr (the lr sweep's centre run)."""
    arm: str
    diff: float
    half_width: float
    """95% half-width from the seed SD of a paired difference (seeding phase)."""

    @property
    def verdict(self) -> str:
        if not math.isfinite(self.half_width):
            return "no test"
        if abs(self.diff) <= self.half_width:
            return "not resolved"
        return "better" if self.diff < 0 else "worse"


def fixed_lr(df, centres: dict[str, float], pooled_sd: float, dof: int) -> dict[str, FixedLr]:
    """Each arm's centre-lr run minus the baseline's, with an unadjusted 95% interval of one
    paired difference: Student t with the pooled SD's `dof` times the seeding phase's pooled
    seed SD of paired differences."""
    from scipy.stats import t as student

    done = sweep_trials(df)
    done = done[done["status"].astype(str) == Status.COMPLETED]

    def at_centre(arm):
        g = done[done["ablation"].astype(str) == arm]
        g = g[np.isclose(g["lr"].astype(float), centres.get(arm, math.nan), rtol=1e-6)]
        return float(g[METRIC].iloc[0]) if len(g) else math.nan

    base = at_centre("baseline")
    half = float(student.ppf(0.975, dof)) * pooled_sd if dof >= 1 else math.nan
    return {a: FixedLr(a, at_centre(a) - base, half) for a in centres if a != "baseline"}
