"""Enough seeds, decided by the data: a group-sequential comparison of every arm with the
baseline that controls the familywise error across arms *and* looks.

The procedure ("group-sequential Holm, O'Brien-Fleming spending"):
- Looks at n = 2, 3, ..., `max_seeds` seeds. Every arm still undecided and the baseline get the
  next seed, shared, so comparisons stay paired by seed.
- Test of arm a at a look: the randomized-block model loss = arm + seed + noise (seeds shared
  by arms are blocks), fitted by least squares on every observed cell; the contrast arm -
  baseline over its standard error is exactly Student t under its null, with the residual
  degrees of freedom of all arms together. Pooling the seed noise over arms is what makes two
  seeds informative; it assumes the arms' seed noise is similar, which the report checks.
- Each arm's hypothesis gets a Lan-DeMets alpha-spending function of O'Brien-Fleming type over
  the information fractions n / max_seeds (Lan and DeMets 1983). Its z-boundaries come from the
  exact recursive integration of the canonical joint distribution; a t-statistic is compared
  through the boundary's nominal level (its two-sided p-value against the boundary's).
- Across arms, Holm's method with level recycling for group-sequential tests (Maurer and Bretz
  2013): each undecided hypothesis is tested at alpha / (hypotheses not yet rejected); when one
  is rejected its level passes to the others, which are tested again at the higher level, at
  this look and at their earlier ones.
- The familywise error is checked by simulation (tests/test_sequential.py): under no true
  differences it stays at or below alpha.

Everything here is a pure function of the losses and the looks: the sweep decides with it while
it runs, and the report recomputes the same decisions from the results.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

ALPHA = 0.05
PROCEDURE = ("group-sequential Holm (Maurer & Bretz 2013) over looks at {looks} seeds, "
             "Lan-DeMets O'Brien-Fleming alpha spending, randomized-block t (seeds as blocks, "
             "noise pooled over arms), familywise alpha {alpha:g}")
_GRID = 1601  # points of the integration grid (error < 1e-6 on the spent alpha)
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed it


def spent(t: float, alpha: float) -> float:
    """Alpha spent by information fraction t (two-sided O'Brien-Fleming-type function)."""
    from scipy.stats import norm

    if t <= 0:
        return 0.0
    return float(2 * (1 - norm.cdf(norm.ppf(1 - alpha / 2) / math.sqrt(min(t, 1.0)))))


@lru_cache(maxsize=64)
def _grid(t: float) -> np.ndarray:
    return np.linspace(-8 * math.sqrt(t), 8 * math.sqrt(t), _GRID)


@lru_cache(maxsize=64)
def _kernel(t_prev: float, t: float) -> np.ndarray:
    """Transition density of the increment from t_prev to t, times the previous grid's
    trapezoid weights: f_t = kernel @ f_prev (Jennison and Turnbull 2000, ch. 19)."""
    from scipy.stats import norm

    prev, grid = _grid(t_prev), _grid(t)
    w = np.full(len(prev), prev[1] - prev[0])
    w[[0, -1]] /= 2
    return norm.pdf(grid[:, None] - prev[None, :], scale=math.sqrt(t - t_prev)) * w[None, :]


@lru_cache(maxsize=4096)
def boundaries(alpha: float, fractions: tuple[float, ...]) -> tuple[float, ...]:
    """Two-sided z-boundaries c_1..c_K: P(no crossing before k, |Z_k| >= c_k) equals the alpha
    spent between looks k-1 and k, under H0 (Brownian motion observed at `fractions`)."""
    from scipy.stats import norm

    out: list[float] = []
    dens, t_prev = None, 0.0
    for t in fractions:
        grid = _grid(t)
        f = norm.pdf(grid, scale=math.sqrt(t)) if dens is None else _kernel(t_prev, t) @ dens
        target = spent(t, alpha) - spent(t_prev, alpha)
        alive = _trapezoid(f, grid)
        lo, hi = 0.0, 10.0
        for _ in range(50):  # P(alive and |S_t| >= c sqrt(t)) = target, by bisection on c
            c = (lo + hi) / 2
            cross = alive - _trapezoid(np.where(np.abs(grid) < c * math.sqrt(t), f, 0.0), grid)
            lo, hi = (c, hi) if cross > target else (lo, c)
        c = (lo + hi) / 2
        out.append(c)
        dens, t_prev = np.where(np.abs(grid) < c * math.sqrt(t), f, 0.0), t
    return tuple(out)


def nominal_level(alpha: float, look: int, fractions: tuple[float, ...]) -> float:
    """The two-sided nominal p-value that crosses boundary `look` (0-based) at level alpha."""
    from scipy.stats import norm

    if alpha <= 0:
        return 0.0
    c = boundaries(round(alpha, 12), tuple(round(f, 9) for f in fractions))[look]
    return float(2 * (1 - norm.cdf(c)))


@dataclass
class ArmTest:
    """One arm's test at one look."""
    arm: str
    n: int
    diff: float
    se: float
    df: int
    p: float
    """Two-sided nominal p-value of the paired t on pooled variance."""

    def interval(self, level: float) -> tuple[float, float]:
        """The interval at a nominal two-sided level (excludes 0 iff p <= level)."""
        from scipy.stats import t as student

        if not math.isfinite(self.se) or self.df < 1 or level <= 0:
            return (-math.inf, math.inf)
        half = float(student.ppf(1 - level / 2, self.df)) * self.se
        return (self.diff - half, self.diff + half)


def look_tests(losses: dict[str, dict[int, float]], seeds: dict[str, int],
               baseline: str = "baseline") -> dict[str, ArmTest]:
    """Every arm against the baseline in the randomized-block model loss = arm + seed + noise,
    fitted by least squares on the cells observed (arm a's seeds < seeds[a]; the baseline's
    seeds < max(seeds)). Its residual variance is chi-square with N - arms - seeds + 1 degrees
    of freedom and independent of the contrasts, so each t is exactly Student t under its null,
    balanced or not."""
    from scipy.stats import t as student

    groups = [baseline, *seeds]
    n_base = max(seeds.values(), default=0)
    cells = [(g, s, losses[g][s]) for g in groups for s in range(
        n_base if g == baseline else seeds[g]) if s in losses.get(g, {})]
    used = sorted({s for _, s, _ in cells})
    if not cells or len(used) < 2:
        return {a: ArmTest(a, 0, math.nan, math.nan, 0, math.nan) for a in seeds}
    col = {g: i for i, g in enumerate(groups)}  # arm effects (baseline first) + seed effects
    X = np.zeros((len(cells), len(groups) + len(used) - 1))
    for r, (g, s, _) in enumerate(cells):
        X[r, col[g]] = 1.0
        if used.index(s):  # the first seed is the reference level
            X[r, len(groups) + used.index(s) - 1] = 1.0
    y = np.array([v for _, _, v in cells])
    beta, *_ = np.linalg.lstsq(X, y, rcond=None)
    df = len(y) - np.linalg.matrix_rank(X)
    sigma2 = float(((y - X @ beta) ** 2).sum() / df) if df > 0 else math.nan
    cov = np.linalg.pinv(X.T @ X)
    out = {}
    for arm in seeds:
        n = sum(1 for g, _, _ in cells if g == arm)
        c = np.zeros(X.shape[1])
        c[col[arm]], c[col[baseline]] = 1.0, -1.0
        diff = float(c @ beta) if n else math.nan
        se = math.sqrt(max(0.0, float(c @ cov @ c)) * sigma2) if n and df > 0 else math.nan
        if not n or df <= 0:
            p = math.nan
        elif se == 0:
            p = 0.0 if diff else 1.0
        else:
            p = float(2 * student.sf(abs(diff) / se, df))
        out[arm] = ArmTest(arm, n, diff, se, int(df), p)
    return out


@dataclass
class Decision:
    """Where the procedure stands for one arm."""
    arm: str
    verdict: str = "not resolved"
    """`better` (lower loss than the baseline), `worse`, or `not resolved`."""
    look: int | None = None
    """The look (0-based) at which it was decided."""
    level: float = 0.0
    """The familywise level available to it when last tested (alpha / hypotheses left)."""
    nominal: float = 0.0
    """The nominal two-sided level its test was compared with at that look."""
    test: ArmTest | None = None
    """Its test at the deciding look (or at its last look)."""


@dataclass
class Outcome:
    """The decisions after some looks."""
    decisions: dict[str, Decision]
    tests: list[dict[str, ArmTest]] = field(default_factory=list)
    """Every look's tests."""

    @property
    def undecided(self) -> list[str]:
        return [a for a, d in self.decisions.items() if d.verdict == "not resolved"]


def decide(losses: dict[str, dict[int, float]], arms: list[str], looks: list[int], *,
           baseline: str = "baseline", max_seeds: int, alpha: float = ALPHA) -> Outcome:
    """Replay the procedure over `looks` (seeds at each look, increasing). An arm takes part in
    a look while undecided; decided arms keep their data in the pooled variance."""
    fractions = tuple(min(1.0, n / max_seeds) for n in _planned(looks, max_seeds))
    out = Outcome({a: Decision(a) for a in arms})
    seeds_of: dict[str, int] = {}  # a decided arm keeps the seeds it had when decided
    for k, n in enumerate(looks):
        out.tests.append(look_tests(losses, {a: seeds_of.get(a, n) for a in arms}, baseline))
        _holm_at_look(out, k, fractions, alpha)
        for a in arms:
            if a not in seeds_of and out.decisions[a].verdict != "not resolved":
                seeds_of[a] = n
    return out


def _planned(looks: list[int], max_seeds: int) -> list[int]:
    """The looks taken, then the ones still planned (every seed count up to max_seeds)."""
    return [*looks, *range((looks[-1] if looks else 1) + 1, max_seeds + 1)]


def _holm_at_look(out: Outcome, k: int, fractions: tuple[float, ...], alpha: float) -> None:
    """Reject what the current levels allow at look k (and, at a recycled level, at earlier
    looks), until nothing more is rejected."""
    m = len(out.decisions)
    while True:
        open_ = out.undecided
        level = alpha / max(1, len(open_)) if open_ else alpha
        hit = False
        for arm in open_:
            d = out.decisions[arm]
            d.level = level
            for j in range(k + 1):
                t = out.tests[j].get(arm)
                nominal = nominal_level(level, j, fractions)
                if j == k:
                    d.test, d.nominal = t, nominal
                if t is not None and not math.isnan(t.p) and t.p <= nominal:
                    d.verdict = "better" if t.diff < 0 else "worse"
                    d.look, d.test, d.nominal = j, t, nominal
                    hit = True
                    break
        if not hit or len(out.undecided) == 0 or m == 0:
            return


def adjusted_p(losses: dict[str, dict[int, float]], arms: list[str], looks: list[int], arm: str,
               *, baseline: str = "baseline", max_seeds: int) -> float:
    """The smallest familywise alpha at which the procedure, replayed on the data observed,
    rejects `arm`'s hypothesis (1 when none below 1 does): the corrected p-value."""
    def rejects(a: float) -> bool:
        return decide(losses, arms, looks, baseline=baseline, max_seeds=max_seeds,
                      alpha=a).decisions[arm].verdict != "not resolved"

    if not rejects(0.999):
        return 1.0
    lo, hi = 1e-9, 0.999
    for _ in range(40):
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if rejects(mid) else (mid, hi)
    return hi


def describe(looks: list[int], alpha: float = ALPHA) -> str:
    """The procedure's name and parameters, for the report."""
    return PROCEDURE.format(looks=", ".join(map(str, looks)), alpha=alpha)
