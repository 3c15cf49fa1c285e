"""Enough seeds, decided by the data: a group-sequential comparison of every arm with the
baseline that controls the familywise error across arms *and* looks, whatever each arm's own
seed noise.

The procedure ("group-sequential Holm, O'Brien-Fleming spending, moderated paired t"):
- Looks at n = FIRST_LOOK, FIRST_LOOK + 1, ..., `max_seeds` seeds. Every arm still undecided
  and the baseline get the next seed, so comparisons stay paired by seed.
- Test of arm a at a look: its own paired differences d_s = loss(a, s) - loss(baseline, s)
  over the seeds both ran. Pairs are independent across seeds whatever the seeds share
  (initialisation and data order, or nothing at all, as for another shape), so this t needs no
  assumption about other arms' noise: under normality it is exactly Student t for any pattern
  of per-arm variances. With n - 1 degrees of freedom it has little power, so its variance is
  moderated (Smyth 2004): s~^2 = (PRIOR_DF s0^2 + (n - 1) s^2) / (PRIOR_DF + n - 1), with
  PRIOR_DF + n - 1 degrees of freedom, where s0^2 is the pooled variance of the paired
  differences of the arms still undecided (the arm included). The pooled variance is credited
  with one degree of freedom, not the many it has under equal noise, and Smyth's estimate of
  the prior's degrees of freedom is not used: with five arms of two to four degrees of freedom
  it cannot tell one very noisy arm from chance, and every estimated or larger prior failed the
  simulations with the noise this project measures (one arm at 10-20x the others' SD), while
  the one-degree prior also floors a quiet-looking arm's variance, which keeps skewed noise in
  check (benchmarks/RESULTS.md section 14 has every candidate's error rates and power).
- Boundaries: each arm's hypothesis gets a Lan-DeMets alpha-spending function of
  O'Brien-Fleming type over the information fractions n / max_seeds (Lan and DeMets 1983).
  Converting z-boundaries into nominal levels for a t-statistic (the significance-level
  approach) overshoots alpha at two to four degrees of freedom (0.059 for one arm), so the
  boundaries are computed for the t-process itself: the thresholds on |t| that spend exactly
  the alpha of each look, by Monte Carlo over 200,000 null paths (fixed seed: the sweep and
  the report compute the same numbers). `boundaries` keeps the exact z-boundaries (the limit of
  many degrees of freedom, and what the tests check the t-boundaries against).
- Across arms, Holm's method with level recycling for group-sequential tests (Maurer and Bretz
  2013): each undecided hypothesis is tested at alpha / (hypotheses not yet rejected); when one
  is rejected its level passes to the others, which are tested again at the higher level, at
  this look and at their earlier ones, with the variance pooled over the arms still open (the
  closed test of their intersection), so a noisy arm left alone with the whole alpha is tested
  on its own variance. The family is every arm of the sweep, an arm whose every seed diverged
  included (it can never be rejected, and still counts).
- Intervals: the 95% repeated confidence interval (Jennison and Turnbull 2000, ch. 9) holds at
  every look at once, so it is valid whenever the sweep stopped; it is computed from every seed
  the arm ran (`repeated_interval`). The decision's own interval (at the nominal level of the
  deciding test) is another thing and is named apart.

Everything here is a pure function of the losses and the looks, vectorised over simulated
sweeps (`decide_batch`): the sweep decides with `decide` while it runs, the report recomputes
the same decisions from the results, and the tests run the same code on thousands of simulated
sweeps per scenario (`results.simulation`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

ALPHA = 0.05
FIRST_LOOK = 3
"""Seeds every arm gets before the first look (at two, one degree of freedom per arm leaves
the test no power, and the alpha spent there is lost)."""
PRIOR_DF = 1.0
"""Degrees of freedom the pooled variance carries as each arm's prior (see the docstring)."""
PROCEDURE = ("group-sequential Holm (Maurer & Bretz 2013) over looks at {looks} seeds, "
             "O'Brien-Fleming alpha spending on t-boundaries, each arm's own paired t with its "
             "variance moderated toward the open arms' pooled variance (Smyth 2004; prior df "
             "{prior:g}), familywise alpha {alpha:g}")
_GRID = 1601  # points of the integration grid (error < 1e-6 on the spent alpha)
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy 2 renamed it


# --- alpha spending and boundaries -----------------------------------------------------------

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
    """The two-sided nominal p-value that crosses z-boundary `look` (0-based) at level alpha."""
    from scipy.stats import norm

    if alpha <= 0:
        return 0.0
    c = boundaries(round(alpha, 12), tuple(round(f, 9) for f in fractions))[look]
    return float(2 * (1 - norm.cdf(c)))


def planned_seeds(looks: Sequence[int], max_seeds: int) -> tuple[int, ...]:
    """The looks taken, then the ones still planned (every seed count up to max_seeds)."""
    return (*looks, *range((looks[-1] if looks else 1) + 1, max_seeds + 1))


def planned_fractions(looks: Sequence[int], max_seeds: int) -> tuple[float, ...]:
    """Information fractions of the planned looks: what the spending function is evaluated at."""
    return tuple(min(1.0, n / max_seeds) for n in planned_seeds(looks, max_seeds))


T_PATHS = 200_000
"""Monte-Carlo paths of the t-process that calibrate the t-boundaries."""


@lru_cache(maxsize=16)  # 8 MB each; a sweep needs two (with and without the prior)
def _t_paths(seeds: tuple[int, ...], prior_df: float) -> np.ndarray:
    """|t| at each planned look on T_PATHS simulated null paths (fixed seed, so the sweep and
    the report compute the same boundaries): iid normal paired differences, the variance from
    the path's own sum of squares plus a prior estimate with `prior_df` degrees of freedom."""
    rng = np.random.default_rng(20261201)
    z = rng.standard_normal((T_PATHS, max(seeds)))
    v0 = rng.chisquare(prior_df, T_PATHS) if prior_df > 0 else np.zeros(T_PATHS)
    s1, s2 = z.cumsum(axis=1), (z * z).cumsum(axis=1)
    out = np.empty((T_PATHS, len(seeds)))
    for k, n in enumerate(seeds):
        mean = s1[:, n - 1] / n
        var = (v0 + s2[:, n - 1] - n * mean * mean) / max(prior_df + n - 1, 1e-9)
        with np.errstate(divide="ignore", invalid="ignore"):  # n = 1 without a prior: no t
            out[:, k] = np.abs(mean) * math.sqrt(n) / np.sqrt(var)
    return out


@lru_cache(maxsize=8192)
def t_nominal_levels(alpha: float, seeds: tuple[int, ...], max_seeds: int,
                     prior_df: float) -> tuple[float, ...]:
    """The nominal two-sided p-values (Student t with prior_df + n - 1 degrees of freedom) of
    the t-boundaries c_1..c_K that spend the O'Brien-Fleming alpha exactly for the t-statistic
    itself: P(no crossing before k, |t_k| >= c_k) = alpha spent between looks k-1 and k, under
    normal noise, by Monte Carlo over `_t_paths` (Jennison and Turnbull 2000, section 11.4 on
    why converting z-boundaries through nominal levels overshoots at few degrees of freedom)."""
    from scipy.stats import t as student

    paths = _t_paths(seeds, prior_df)
    alive = np.ones(len(paths), bool)
    out, before = [], 0.0
    for k, n in enumerate(seeds):
        now = spent(min(1.0, n / max_seeds), alpha)
        count = int(round((now - before) * len(paths)))
        before = now
        live = paths[alive, k]
        count = min(count, len(live))
        if count < 1 or prior_df + n - 1 <= 0:
            out.append(0.0)
            continue
        c = float(np.partition(live, len(live) - count)[len(live) - count])
        alive &= paths[:, k] < c
        out.append(float(2 * student.sf(c, prior_df + n - 1)))
    return tuple(out)


# --- the test at one look ---------------------------------------------------------------------

@dataclass
class LookStats:
    """Every arm's test at one look, as arrays of shape (sweeps, arms)."""
    n: np.ndarray
    """Seeds paired with the baseline."""
    diff: np.ndarray
    """Mean paired difference, arm minus baseline (negative: the arm's loss is lower)."""
    se: np.ndarray
    """Standard error of `diff` (moderated)."""
    df: np.ndarray
    """Degrees of freedom of `se` (its own n - 1 plus the prior's)."""
    p: np.ndarray
    """Two-sided p-value of diff / se against Student t with `df`."""
    own_sd: np.ndarray
    """The arm's own SD of a paired difference, n - 1 degrees of freedom."""
    prior_sd: np.ndarray
    """SD of the pooled prior (per sweep, repeated per arm)."""
    prior_df: np.ndarray
    """Degrees of freedom the prior carries (0: the arm's own variance alone)."""


Test = Callable[[np.ndarray, np.ndarray, np.ndarray], LookStats]
"""(losses (sweeps, 1 + arms, seeds) with NaN for a missing run, seeds used per arm (sweeps,
arms), the arms whose variances may be pooled (sweeps, arms)) -> LookStats. The baseline is
group 0 and uses every seed any arm uses."""


def paired_differences(y: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(d, ok): d[s, a, k] = y[s, a + 1, k] - y[s, 0, k], ok where seed k < counts[s, a] and
    both runs exist."""
    seeds = np.arange(y.shape[2])
    d = y[:, 1:, :] - y[:, :1, :]
    ok = (seeds[None, None, :] < counts[:, :, None]) & np.isfinite(d)
    return np.where(ok, d, 0.0), ok


def moderated_t(prior_df: float | None = None) -> Test:
    """The per-look test: each arm's paired t, its variance moderated toward the pooled
    variance of every arm's paired differences, which counts as `prior_df` extra degrees of
    freedom (0: the plain paired t; no prior either when fewer than two arms have a variance)."""
    d0 = PRIOR_DF if prior_df is None else prior_df

    def test(y: np.ndarray, counts: np.ndarray, members: np.ndarray) -> LookStats:
        from scipy.stats import t as student

        d, ok = paired_differences(y, counts)
        n = ok.sum(axis=2)
        mean = d.sum(axis=2) / np.maximum(n, 1)
        own_df = np.maximum(n - 1, 0)
        ss = (np.where(ok, d - mean[:, :, None], 0.0) ** 2).sum(axis=2)
        pool = members & (own_df > 0)
        pooled = (ss * pool).sum(axis=1) / np.maximum((own_df * pool).sum(axis=1), 1)
        has = (pool.sum(axis=1) >= 2) & (pooled > 0)
        prior = np.where(has, d0, 0.0)[:, None] * np.ones_like(mean)
        dof = prior + own_df
        var = (prior * pooled[:, None] + ss) / np.where(dof > 0, dof, 1)
        se = np.sqrt(var / np.maximum(n, 1))
        with np.errstate(divide="ignore", invalid="ignore"):
            p = np.where(se > 0, 2 * student.sf(np.abs(mean) / se, np.where(dof > 0, dof, 1)),
                         np.where(mean == 0, 1.0, 0.0))
        valid = (n >= 1) & (dof > 0)
        own = np.where(own_df > 0, np.sqrt(ss / np.maximum(own_df, 1)), np.nan)
        return LookStats(n, np.where(n >= 1, mean, np.nan), np.where(valid, se, np.nan),
                         np.where(valid, dof, 0.0), np.where(valid, p, np.nan), own,
                         np.where(has, np.sqrt(pooled), np.nan)[:, None] * np.ones_like(mean),
                         prior)
    return test


# --- the procedure over looks, vectorised over sweeps -------------------------------------------

@dataclass
class BatchOutcome:
    """The procedure's decisions in many sweeps at once; arrays of shape (sweeps, arms)."""
    verdict: np.ndarray
    """-1 better (lower loss than the baseline), +1 worse, 0 not resolved."""
    look: np.ndarray
    """The look (0-based) whose test decided it (-1: undecided)."""
    last: np.ndarray
    """The last look the arm took part in (it then stopped getting seeds)."""
    level: np.ndarray
    """The familywise level available to it when last tested (alpha / hypotheses left)."""
    nominal: np.ndarray
    """The nominal two-sided level of its deciding test (or of its test at its last look)."""
    stats: list[LookStats] = field(default_factory=list)
    """Every look's tests."""
    counts: list[np.ndarray] = field(default_factory=list)
    """Seeds each arm used at each look."""
    seeds: tuple[int, ...] = ()
    """Seeds at each planned look (taken, then still planned)."""
    max_seeds: int = 0
    levels: Levels | None = None
    """How nominal levels were computed (for the repeated interval)."""

    def at_last(self, name: str) -> np.ndarray:
        """A LookStats field at each arm's last look."""
        stack = np.stack([getattr(s, name) for s in self.stats], axis=-1)
        return np.take_along_axis(stack, self.last[..., None], axis=-1)[..., 0]

    def at_decision(self, name: str) -> np.ndarray:
        """A LookStats field at the deciding look (at the last look when undecided)."""
        stack = np.stack([getattr(s, name) for s in self.stats], axis=-1)
        k = np.where(self.look >= 0, self.look, self.last)
        return np.take_along_axis(stack, k[..., None], axis=-1)[..., 0]

    def rci(self, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
        """The repeated confidence interval at `level` from every seed each arm ran (its last
        look): valid whenever the sweep stopped, as it holds at all looks at once."""
        return repeated_interval(self, level)


Levels = Callable[[float, tuple[int, ...], int, float], tuple[float, ...]]
"""(alpha, planned seeds per look, max_seeds, prior df) -> nominal two-sided level per look."""


def z_levels(alpha: float, seeds: tuple[int, ...], max_seeds: int, prior_df: float
             ) -> tuple[float, ...]:
    """The z-boundaries' nominal levels (the significance-level approach; no t calibration)."""
    fractions = tuple(min(1.0, n / max_seeds) for n in seeds)
    return tuple(nominal_level(alpha, j, fractions) for j in range(len(seeds)))


def decide_batch(y: np.ndarray, looks: Sequence[int], *, max_seeds: int, alpha: float = ALPHA,
                 test: Test | None = None, levels: Levels | None = None) -> BatchOutcome:
    """Replay the procedure on `y` (sweeps, 1 + arms, seeds): loss of the baseline (group 0)
    and of each arm per seed, NaN where a run is missing (diverged, failed, not run). At look k
    an undecided arm uses its first looks[k] seeds; a decided arm keeps the seeds it had."""
    test, levels = test or moderated_t(), levels or t_nominal_levels
    sweeps, m = y.shape[0], y.shape[1] - 1
    seeds = planned_seeds(looks, max_seeds)
    table = LevelTable(levels, alpha, m, seeds, max_seeds)
    out = BatchOutcome(np.zeros((sweeps, m), int), np.full((sweeps, m), -1),
                       np.zeros((sweeps, m), int), np.zeros((sweeps, m)),
                       np.zeros((sweeps, m)), seeds=seeds, max_seeds=max_seeds, levels=levels)
    counts = np.zeros((sweeps, m), int)
    for k, n in enumerate(looks):
        open_ = out.verdict == 0
        counts = np.where(open_, n, counts)
        out.counts.append(counts)
        out.last = np.where(open_, k, out.last)
        out.stats.append(test(y, counts, open_))
        _holm_at_look(out, k, table, alpha, lambda j, members: test(y, out.counts[j], members))
    return out


@dataclass
class LevelTable:
    """The nominal level of every look when r hypotheses are open (alpha / r each), per prior
    df, computed when first needed."""
    levels: Levels
    alpha: float
    m: int
    seeds: tuple[int, ...]
    max_seeds: int
    cache: dict = field(default_factory=dict)

    def at(self, prior_df: np.ndarray, r: np.ndarray, upto: int) -> np.ndarray:
        """(sweeps, arms, looks <= upto): the level of each arm's test at each look when r
        (per sweep) hypotheses are open, for the test's prior df."""
        out = np.zeros(prior_df.shape)
        for d0 in np.unique(prior_df):
            if d0 not in self.cache:
                self.cache[d0] = np.array([
                    self.levels(round(self.alpha / i, 12), self.seeds, self.max_seeds, d0)
                    if i else (0.0,) * len(self.seeds) for i in range(self.m + 1)])
            out = np.where(prior_df == d0, self.cache[d0][r][:, None, :upto + 1], out)
        return out


def _holm_at_look(out: BatchOutcome, k: int, table: LevelTable, alpha: float,
                  retest: Callable[[int, np.ndarray], LookStats]) -> None:
    """Reject what the current levels allow at look k (and, at a recycled level, at earlier
    looks), until nothing more is rejected. After a rejection the open arms are tested again
    with variances pooled over the open arms only: Holm's step is the closed test of the
    intersection of the open hypotheses (Marcus, Peritz and Gabriel 1976), whose local test
    pools over its own members, so a noisy arm left alone is tested on its own variance."""
    members = out.verdict == 0
    while True:
        open_ = out.verdict == 0
        if (open_ != members).any():
            members = open_
            for j in range(k + 1):
                out.stats[j] = _merge(out.stats[j], retest(j, members), members)
        p = np.stack([np.nan_to_num(s.p, nan=2.0) for s in out.stats[:k + 1]], axis=-1)
        diff = np.stack([s.diff for s in out.stats[:k + 1]], axis=-1)
        prior = np.stack([s.prior_df for s in out.stats[:k + 1]], axis=-1)
        r = open_.sum(axis=1)
        level = table.at(prior, r, k)
        cross = p <= level
        hit = open_ & cross.any(axis=-1)
        out.level = np.where(open_, (alpha / np.maximum(r, 1))[:, None], out.level)
        out.nominal = np.where(open_, level[:, :, k], out.nominal)
        if not hit.any():
            return
        first = cross.argmax(axis=-1)
        sign = np.sign(np.take_along_axis(diff, first[..., None], axis=-1)[..., 0])
        out.verdict = np.where(hit, np.where(sign < 0, -1, 1), out.verdict)
        out.look = np.where(hit, first, out.look)
        chosen = np.take_along_axis(level, first[..., None], axis=-1)[..., 0]
        out.nominal = np.where(hit, chosen, out.nominal)


def _merge(old: LookStats, new: LookStats, where: np.ndarray) -> LookStats:
    """`new` for the arms in `where`, `old` for the others."""
    return LookStats(**{f: np.where(where, getattr(new, f), getattr(old, f))
                        for f in LookStats.__dataclass_fields__})


def repeated_interval(out: BatchOutcome, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The repeated confidence interval (Jennison and Turnbull 2000, section 9.1) at `level`
    from every seed each arm ran (its last look k): diff +/- t_df^-1(1 - nominal_k / 2) se,
    nominal_k the level of the O'Brien-Fleming t-boundary at look k for alpha = 1 - level. It
    covers at every look at once, so at whichever look the sweep stopped. It is the wider of
    the arm's own (its paired t alone: exact under normality whatever the other arms' noise)
    and the moderated one (whose floor from the pooled variance keeps skewed seeds in check):
    an interval is a per-arm statement with no Holm slack, and a noisy arm's moderated variance
    borrows from quieter arms (coverage 0.944 with the moderated one alone where one arm is at
    5x the others; benchmarks/RESULTS.md section 14)."""
    diff = out.at_last("diff")
    n = out.at_last("n")
    own = _half_width(out, level, out.at_last("own_sd") / np.sqrt(np.maximum(n, 1)),
                      np.maximum(n - 1.0, 0.0), np.zeros(n.shape))
    moderated = _half_width(out, level, out.at_last("se"), out.at_last("df"),
                            out.at_last("prior_df"))
    half = np.fmax(np.where(np.isfinite(own), own, np.inf), moderated)
    return diff - half, diff + half


def _half_width(out: BatchOutcome, level: float, se: np.ndarray, dof: np.ndarray,
                prior: np.ndarray) -> np.ndarray:
    from scipy.stats import t as student

    nominal = np.zeros(prior.shape)
    for d0 in np.unique(prior):
        at = np.array(out.levels(round(1 - level, 12), out.seeds, out.max_seeds, d0))[out.last]
        nominal = np.where(prior == d0, at, nominal)
    ok = np.isfinite(se) & (dof > 0) & (nominal > 0)
    with np.errstate(invalid="ignore"):
        return np.where(ok, student.ppf(1 - nominal / 2, np.where(ok, dof, 1)) * se, np.inf)


# --- one sweep: the procedure on {arm: {seed: loss}} -------------------------------------------

@dataclass
class ArmTest:
    """One arm's test at one look."""
    arm: str
    n: int
    diff: float
    se: float
    df: float
    p: float
    """Two-sided nominal p-value of the moderated paired t."""
    own_sd: float = math.nan
    """The arm's own SD of a paired difference (n - 1 degrees of freedom)."""
    prior_sd: float = math.nan
    prior_df: float = 0.0

    def interval(self, level: float) -> tuple[float, float]:
        """The interval at a nominal two-sided level (excludes 0 iff p <= level)."""
        from scipy.stats import t as student

        if not math.isfinite(self.se) or self.df <= 0 or level <= 0:
            return (-math.inf, math.inf)
        half = float(student.ppf(1 - level / 2, self.df)) * self.se
        return (self.diff - half, self.diff + half)


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
    final: ArmTest | None = None
    """Its test at the last look it took part in: every seed it ran."""
    rci: tuple[float, float] = (math.nan, math.nan)
    """The 95% repeated confidence interval from every seed it ran."""
    last: int = 0
    """The last look (0-based) it took part in."""


@dataclass
class Outcome:
    """The decisions after some looks."""
    decisions: dict[str, Decision]
    tests: list[dict[str, ArmTest]] = field(default_factory=list)
    """Every look's tests."""

    @property
    def undecided(self) -> list[str]:
        return [a for a, d in self.decisions.items() if d.verdict == "not resolved"]


VERDICTS = {-1: "better", 0: "not resolved", 1: "worse"}


def as_array(losses: dict[str, dict[int, float]], arms: list[str], baseline: str,
             seeds: int) -> np.ndarray:
    """{arm: {seed: loss}} -> (1, 1 + arms, seeds) with NaN where a run is missing."""
    y = np.full((1, 1 + len(arms), max(seeds, 1)), np.nan)
    for g, name in enumerate([baseline, *arms]):
        for s, v in losses.get(name, {}).items():
            if 0 <= s < y.shape[2] and v is not None and math.isfinite(v):
                y[0, g, s] = v
    return y


def decide(losses: dict[str, dict[int, float]], arms: list[str], looks: list[int], *,
           baseline: str = "baseline", max_seeds: int, alpha: float = ALPHA) -> Outcome:
    """Replay the procedure over `looks` (seeds at each look, increasing) for one sweep. `arms`
    is the whole family (an arm without a completed seed counts and is never rejected)."""
    seeds = max([*looks, max_seeds, 1])
    b = decide_batch(as_array(losses, arms, baseline, seeds), looks, max_seeds=max_seeds,
                     alpha=alpha)
    tests = [{a: _arm_test(s, 0, i, a) for i, a in enumerate(arms)} for s in b.stats]
    lo, hi = b.rci()
    out = Outcome({}, tests)
    for i, a in enumerate(arms):
        k = int(b.look[0, i]) if b.look[0, i] >= 0 else int(b.last[0, i])
        out.decisions[a] = Decision(
            a, VERDICTS[int(b.verdict[0, i])], int(b.look[0, i]) if b.look[0, i] >= 0 else None,
            float(b.level[0, i]), float(b.nominal[0, i]), tests[k][a] if tests else None,
            tests[int(b.last[0, i])][a] if tests else None, (float(lo[0, i]), float(hi[0, i])),
            int(b.last[0, i]))
    return out


def paired_interval(d: Sequence[float], look: int, looks: Sequence[int], max_seeds: int,
                    level: float = 0.95) -> tuple[float, float]:
    """The repeated confidence interval of a mean paired difference at look `look` (0-based) of
    `looks` from its own variance alone (a comparison outside the tested family, e.g. on other
    windows): valid after the sweep's sequential stopping like `repeated_interval`."""
    from scipy.stats import t as student

    x = np.asarray([v for v in d if math.isfinite(v)], float)
    if len(x) < 2:
        return (math.nan, math.nan)
    nominal = t_nominal_levels(round(1 - level, 12), planned_seeds(looks, max_seeds),
                               max_seeds, 0.0)[look]
    half = float(student.ppf(1 - nominal / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return (float(x.mean()) - half, float(x.mean()) + half)


def _arm_test(s: LookStats, row: int, i: int, arm: str) -> ArmTest:
    return ArmTest(arm, int(s.n[row, i]), float(s.diff[row, i]), float(s.se[row, i]),
                   float(s.df[row, i]), float(s.p[row, i]), float(s.own_sd[row, i]),
                   float(s.prior_sd[row, i]), float(s.prior_df[row, i]))


def adjusted_p(losses: dict[str, dict[int, float]], arms: list[str], looks: list[int], arm: str,
               *, baseline: str = "baseline", max_seeds: int) -> float:
    """The smallest familywise alpha at which the procedure, replayed on the data observed,
    rejects `arm`'s hypothesis (1 when none below 1 does): the corrected p-value."""
    def rejects(a: float) -> bool:
        return decide(losses, arms, looks, baseline=baseline, max_seeds=max_seeds,
                      alpha=a).decisions[arm].verdict != "not resolved"

    if not rejects(0.999):
        return 1.0
    lo, hi = 1e-6, 0.999  # 16 halvings in log scale: within 0.1% (p is printed to 2 digits)
    if rejects(lo):
        return lo
    for _ in range(16):
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if rejects(mid) else (mid, hi)
    return hi


def describe(looks: list[int], alpha: float = ALPHA) -> str:
    """The procedure's name and parameters, for the report."""
    return PROCEDURE.format(looks=", ".join(map(str, looks)), alpha=alpha, prior=PRIOR_DF)
