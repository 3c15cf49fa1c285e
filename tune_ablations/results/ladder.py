"""Does the answer survive scale? A ladder's rungs read back (`sweeps/ladder.py` ran them), and
the agreement of their answers: per arm, its difference from the baseline at every rung with
the rung's 95% interval and verdict (the grid's own answer, `answer.py`), whether the smallest
rung's verdict holds, flips or becomes unresolved higher up; the trend of the difference with
log compute and, where the fit is supported, its prediction at a larger size; the rank
agreement of the arms between rungs with a bootstrap over seeds; a plot.

Design choices:
- Compute of a rung = training FLOPs of its baseline run (`spec.flops`, the project's one
  convention), as the grid's plan counts them.
- Trend: the per-seed paired differences at each rung give a mean and its variance (n - 1
  degrees of freedom); a least-squares line in log10 compute weighted by each rung's seeds
  (fixed weights: weighting by variances estimated from 3-5 seeds measured 82-87% coverage
  of a nominal 95%); slope and prediction are fixed linear combinations of the rung means, so
  their variance is exact and their t quantile takes the Welch-Satterthwaite degrees of
  freedom: unequal noise and few seeds are accounted for (coverage measured by simulation in
  tests/test_ladder_stats.py). The prediction is refused, with the reason, with fewer than 3
  rungs of 2 or more seeds (a line through two points checks nothing), when a quadratic term
  on the same weights is significant at 5% (the rungs depart from a line), or when the
  target lies further beyond the largest rung than the ladder spans (in log compute).
- Rank agreement: Kendall's tau-b between two rungs' orderings of the arms (the baseline
  included, at 0), with a 95% percentile interval from resampling each rung's seeds
  (paired: a resampled seed keeps all its arms); at least 3 arms.
- The estimates use every seed that ran at a rung; after a sequential stop they lean slightly
  away from zero (answer.py's note); the verdicts are the grid's own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .answer import BASELINE, Answer, final_losses
from .experiment import Experiment, join
from .frames import load
from .verdicts import experiment_answer

DECIDED = ("better", "worse")
LADDER_FILE = "ladder.json"
"""The ladder's record in its folder: the rungs' multiples and settings."""


@dataclass
class RungResult:
    """One rung: its size, compute and the grid's answer."""
    index: int
    mult: float
    sets: dict[str, Any]
    compute: float
    """Training FLOPs of the rung's baseline run."""
    params: float
    """Parameters of the rung's baseline (tied embedding once)."""
    answer: Answer | None
    diffs: dict[str, dict[int, float]] = field(default_factory=dict)
    """{arm: {seed: arm loss - baseline loss}} over the seeds both completed."""
    chosen_lr: dict[str, float] = field(default_factory=dict)
    """`--tune-lr`: each arm's chosen learning rate at this rung (empty without it)."""


@dataclass
class Trend:
    """The difference of one arm against log10 compute."""
    arm: str
    slope: float = math.nan
    """Nats per 10x compute."""
    slope_ci: tuple[float, float] = (math.nan, math.nan)
    target: float = math.nan
    """The compute (FLOPs) predicted at."""
    predicted: float = math.nan
    predicted_ci: tuple[float, float] = (math.nan, math.nan)
    df: float = math.nan
    refused: str = ""
    """Why there is no prediction (empty: there is one)."""


def paired_diffs(trials) -> dict[str, dict[int, float]]:
    """{arm: {seed: arm - baseline}} from a grid's trials (completed seeds both ran)."""
    losses = final_losses(trials)
    base = losses.get(BASELINE, {})
    return {a: {s: v - base[s] for s, v in by.items() if s in base}
            for a, by in losses.items() if a != BASELINE}


def load_ladder(root: Experiment | str) -> list[RungResult]:
    """Every rung that has results, smallest first."""
    from ..spec.config import from_flat_dict
    from ..spec.flops import count_params, flops_per_token

    root = root if isinstance(root, Experiment) else Experiment(root)
    record = root.read_json(LADDER_FILE) or {}
    out = []
    for r in record.get("rungs", []):
        exp = Experiment(join(root.location, f"rung{r['index']}"))
        try:
            res = load(exp)
        except (FileNotFoundError, ValueError):
            continue
        df = res.trials
        if df.empty:
            continue
        ans, decisions = experiment_answer(exp, res)
        chosen = dict((decisions.get("tune_lr") or {}).get("chosen") or {})
        base = [res.outcomes.get(t, {}).get("config") for t in
                df[df["ablation"] == BASELINE]["trial_id"]]
        base = [b for b in base if b]
        compute = params = math.nan
        if base:
            c = from_flat_dict(base[0])
            compute = flops_per_token(c.model, c.data.vocab_size, c.data.seq_len) * c.total_tokens
            params = count_params(c.model, c.data.vocab_size)["params"]
        out.append(RungResult(r["index"], r["mult"], r["sets"], compute, params, ans,
                              paired_diffs(df), chosen))
    return out


# --- verdicts across rungs -----------------------------------------------------------------

def verdicts(rungs: list[RungResult]) -> dict[str, list[str]]:
    """{arm: [verdict at each rung]} ('-' where the rung has no line for the arm)."""
    arms = list(dict.fromkeys(a.arm for r in rungs if r.answer for a in r.answer.arms))
    out = {}
    for arm in arms:
        out[arm] = [next((a.verdict for a in r.answer.arms if a.arm == arm), "-")
                    if r.answer else "-" for r in rungs]
    return out


def transition(small: str, large: str) -> str:
    """What became of the smaller rung's verdict at a larger one."""
    if small in DECIDED:
        if large == small:
            return "holds"
        return "flips" if large in DECIDED else "unresolved"
    return f"resolves {large}" if large in DECIDED else "still unresolved"


# --- the trend of a difference with compute ------------------------------------------------

def _combination(coef: np.ndarray, variances: np.ndarray, dfs: np.ndarray
                 ) -> tuple[float, float]:
    """(variance, Welch-Satterthwaite degrees of freedom) of sum(coef * means)."""
    parts = coef ** 2 * variances
    var = float(np.sum(parts))
    return var, var ** 2 / float(np.sum(parts ** 2 / dfs))


def _rows(x: np.ndarray, w: np.ndarray, degree: int) -> np.ndarray:
    """Weighted least squares as fixed linear combinations: (degree + 1, rungs)."""
    design = np.vander(x, degree + 1, increasing=True)
    return np.linalg.solve(design.T @ (w[:, None] * design), design.T * w)


def fit_trend(x: np.ndarray, means: np.ndarray, variances: np.ndarray, dfs: np.ndarray,
              target: float, arm: str = "", level: float = 0.95) -> Trend:
    """A line through the rungs' mean differences in x (log10 compute), weighted by each
    rung's seeds (fixed weights: weights estimated from a few seeds' variances undercover);
    the slope and the prediction at `target` (log10) with Welch-Satterthwaite t intervals,
    or the reason the prediction is refused (a curvature test on the same weights)."""
    from scipy import stats

    t = Trend(arm, target=10 ** target)
    ok = np.isfinite(means) & np.isfinite(variances) & (variances > 0) & (dfs >= 1)
    x, means, variances, dfs = x[ok], means[ok], variances[ok], dfs[ok]
    if len(x) < 3:
        t.refused = (f"{len(x)} rung(s) with 2 or more seeds: a line needs 3 to be checked "
                     "against")
        return t
    w, x0 = dfs + 1, target
    line = _rows(x - x0, w, 1)  # intercept at the target, slope
    q = 0.5 + level / 2
    for coef, name in ((line[1], "slope"), (line[0], "predicted")):
        value = float(coef @ means)
        var, dof = _combination(coef, variances, dfs)
        half = stats.t.ppf(q, dof) * math.sqrt(var)
        setattr(t, f"{name}_ci", (value - half, value + half))
        if name == "slope":
            t.slope = value
        else:
            t.predicted, t.df = value, dof
    curve = _rows(x - x.mean(), w, 2)[2]
    var, dof = _combination(curve, variances, dfs)
    p_line = float(2 * stats.t.sf(abs(curve @ means) / math.sqrt(var), dof))
    span = float(x.max() - x.min())
    if p_line < 0.05:
        t.refused = (f"the rungs' differences depart from a line in log compute (curvature "
                     f"{float(curve @ means):+.4f}, p={p_line:.3f})")
    elif target - x.max() > span:
        t.refused = (f"the target is {target - x.max():.2f} decades beyond the largest rung, "
                     f"more than the ladder's own span of {span:.2f}")
    if t.refused:
        t.predicted, t.predicted_ci = math.nan, (math.nan, math.nan)
    return t


def trend(rungs: list[RungResult], arm: str, target: float) -> Trend:
    """The arm's trend over the rungs, predicted at `target` FLOPs."""
    x, m, v, d = [], [], [], []
    for r in rungs:
        seeds = np.array(list(r.diffs.get(arm, {}).values()))
        if len(seeds) >= 2 and math.isfinite(r.compute):
            x.append(math.log10(r.compute))
            m.append(seeds.mean())
            v.append(seeds.var(ddof=1) / len(seeds))
            d.append(len(seeds) - 1)
    return fit_trend(np.array(x), np.array(m), np.array(v), np.array(d, dtype=float),
                     math.log10(target), arm)


# --- rank agreement ---------------------------------------------------------------------------

def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-b of two score vectors (NaN when either is constant)."""
    from scipy import stats

    return float(stats.kendalltau(a, b).statistic)


def rank_agreement(small: RungResult, large: RungResult, *, draws: int = 1000,
                   seed: int = 0) -> dict[str, Any]:
    """Kendall's tau between two rungs' orderings of the arms (baseline at 0) and a 95%
    percentile interval from resampling each rung's seeds; NaN with fewer than 3 arms."""
    arms = [a for a in small.diffs if a in large.diffs and len(small.diffs[a]) >= 2
            and len(large.diffs[a]) >= 2]
    out = {"small": small.index, "large": large.index, "arms": len(arms) + 1,
           "tau": math.nan, "ci": (math.nan, math.nan), "draws": draws}
    if len(arms) < 2:
        return out

    def table(r: RungResult) -> np.ndarray:  # (seeds, arms), NaN where a seed is missing
        seeds = sorted({s for a in arms for s in r.diffs[a]})
        return np.array([[r.diffs[a].get(s, np.nan) for a in arms] for s in seeds])

    ta, tb = table(small), table(large)

    def score(t: np.ndarray) -> np.ndarray:
        return np.concatenate([[0.0], np.nanmean(t, axis=0)])

    out["tau"] = kendall_tau(score(ta), score(tb))
    rng = np.random.default_rng(seed)
    taus = []
    for _ in range(draws):
        sa = ta[rng.integers(0, len(ta), len(ta))]
        sb = tb[rng.integers(0, len(tb), len(tb))]
        with np.errstate(all="ignore"):
            taus.append(kendall_tau(score(sa), score(sb)))
    taus = np.array([t for t in taus if math.isfinite(t)])
    if len(taus):
        out["ci"] = (float(np.quantile(taus, 0.025)), float(np.quantile(taus, 0.975)))
    return out


# --- what the grid and the report print -------------------------------------------------------

def default_target(rungs: list[RungResult]) -> float:
    """The next rung's compute by the ladder's rule (compute ~ params^2): the largest rung's
    times (its multiple / the one before)^2."""
    last, prev = rungs[-1], rungs[-2]
    return last.compute * (last.mult / prev.mult) ** 2


def _ci(ci) -> str:
    return f"[{ci[0]:+.4f}, {ci[1]:+.4f}]" if all(map(math.isfinite, ci)) else "[-]"


def ladder_lines(rungs: list[RungResult], target: float | None = None) -> list[str]:
    """The agreement across rungs as text lines (grid's end, the report's section)."""
    if not rungs:
        return ["ladder: no rung has results yet"]
    lines = ["ladder: " + "; ".join(
        f"rung {r.index}: {r.params / 1e6:.3g}M params, {r.compute:.3g} FLOPs"
        for r in rungs)]
    by = verdicts(rungs)
    for arm, vs in by.items():
        cells = []
        for r in rungs:
            a = next((x for x in r.answer.arms if x.arm == arm), None) if r.answer else None
            cells.append("-" if a is None else f"{a.diff:+.4f} {_ci(a.ci)} {a.verdict} (n={a.n})")
        lines.append(f"  {arm}: " + " | ".join(cells))
        moves = [transition(vs[0], v) for v in vs[1:]]
        lines.append(f"    rung 0's verdict ({vs[0]}) at rungs 1..{len(vs) - 1}: "
                     + ", ".join(moves))
    if len(rungs) >= 2:
        target = target or default_target(rungs)
        lines.append(f"trend of each difference with log10 compute (weighted fit over the "
                     f"rungs' seeds), predicted at {target:.3g} FLOPs (the next rung):")
        for arm in by:
            t = trend(rungs, arm, target)
            slope = (f"slope {t.slope:+.4f} nats/decade {_ci(t.slope_ci)}"
                     if math.isfinite(t.slope) else "no slope")
            pred = (f"predicted {t.predicted:+.4f} {_ci(t.predicted_ci)} (95%, {t.df:.1f} df)"
                    if not t.refused else f"no prediction: {t.refused}")
            lines.append(f"  {arm}: {slope}; {pred}")
        lines.append("rank agreement of the arms (Kendall tau, baseline included; 95% "
                     "bootstrap over seeds):")
        for r in rungs[:-1]:
            ra = rank_agreement(r, rungs[-1])
            tau = (f"tau {ra['tau']:+.2f} {_ci(ra['ci'])}" if math.isfinite(ra["tau"])
                   else "fewer than 3 arms with 2+ seeds")
            lines.append(f"  rung {r.index} vs rung {rungs[-1].index} ({ra['arms']} arms, "
                         f"{ra['draws']} draws): {tau}")
    return lines


def ladder_records(rungs: list[RungResult]) -> list[dict[str, Any]]:
    """One record per rung and arm (`grid --ladder --json`, the Python API's DataFrame)."""
    out = []
    for r in rungs:
        for a in (r.answer.arms if r.answer else []):
            out.append({"rung": r.index, "mult": r.mult, "d_model": r.sets.get("d_model"),
                        "n_layers": r.sets.get("n_layers"), "params": r.params,
                        "compute": r.compute, "arm": a.arm, "diff": _num(a.diff),
                        "ci_low": _num(a.ci[0]), "ci_high": _num(a.ci[1]),
                        "verdict": a.verdict, "n": a.n,
                        "chosen_lr": r.chosen_lr.get(a.arm)})
    return out


def _num(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def lr_width_lines(rungs: list[RungResult]) -> list[str]:
    """`--tune-lr` on a ladder: each arm's chosen lr against width, beside what muP predicts
    for a standard model (lr x base_width / width: hidden-layer rates scale as 1/width) and
    what stays put (the standard practice, and muP's promise for a muP model), with the
    fitted exponent of lr in width (-1: muP's rule, 0: stays)."""
    tuned = [r for r in rungs if r.chosen_lr]
    if len(tuned) < 2:
        return []
    first = tuned[0]
    d0 = first.sets["d_model"]
    lines = ["| arm | rung | d_model | chosen lr | if lr x 1/width (muP's rule) | if lr stays "
             "|", "|---|---|---|---|---|---|"]
    slopes = []
    for arm, lr0 in first.chosen_lr.items():
        pts = []
        for r in tuned:
            lr, d = r.chosen_lr.get(arm), r.sets["d_model"]
            if lr is None:
                continue
            pts.append((math.log(d), math.log(lr)))
            lines.append(f"| {arm} | {r.index} | {d} | {lr:.3g} | {lr0 * d0 / d:.3g} | "
                         f"{lr0:.3g} |")
        if len(pts) >= 2 and len({p[0] for p in pts}) >= 2:
            x, y = np.array(pts).T
            slopes.append(f"{arm} {round(np.polyfit(x, y, 1)[0], 2) + 0.0:+.2f}")
    return lines + ["", "Fitted exponent of the chosen lr in d_model (least squares in "
                    "log-log over the rungs; -1 is muP's 1/width, 0 is no change): "
                    + (", ".join(slopes) or "-"), ""]


def write_ladder_report(root: Experiment, out, *, plots: bool = True):
    """report.md of a ladder (its rungs, the agreement, the lr against width, the plot) in
    the local folder `out`; each rung's own report comes from `analysis <ladder>/rungK`."""
    from pathlib import Path

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rungs = load_ladder(root)
    lines = [f"# Ladder report: {root.name}", "",
             "The same question at each size (sweeps/ladder.py: width and depth x mult^(1/3), "
             "tokens with the parameters built). Each rung's line: the arm's difference from "
             "that rung's baseline in val_loss (nats), its 95% repeated interval, the verdict "
             "and the seeds; then what became of the smallest rung's verdict.", "", "```",
             *ladder_lines(rungs), "```", ""]
    lr = lr_width_lines(rungs)
    if lr:
        lines += ["## Chosen learning rate against width", ""] + lr
    if plots:
        made = ladder_plot(rungs, out)
        if made:
            lines += ["## Plot", "", f"![{made}]({made})", ""]
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


def ladder_text(rungs: list[RungResult]) -> list[str]:
    return ladder_lines(rungs) + [line for line in lr_width_lines(rungs) if line]


def ladder_plot(rungs: list[RungResult], out) -> str | None:
    """Each arm's difference from the baseline against compute, with its rungs' 95% intervals
    and the fitted trend where supported; the file name, or None without two rungs."""
    if len(rungs) < 2:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import save

    fig, ax = plt.subplots(figsize=(6.5, 4))
    target = default_target(rungs)
    for arm in verdicts(rungs):
        xs, ys, lo, hi = [], [], [], []
        for r in rungs:
            a = next((x for x in r.answer.arms if x.arm == arm), None) if r.answer else None
            if a is not None and math.isfinite(a.diff):
                xs.append(r.compute)
                ys.append(a.diff)
                lo.append(a.diff - a.ci[0] if math.isfinite(a.ci[0]) else 0)
                hi.append(a.ci[1] - a.diff if math.isfinite(a.ci[1]) else 0)
        line = ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=3, label=arm)
        t = trend(rungs, arm, target)
        if not t.refused:
            ax.errorbar([target], [t.predicted], yerr=[[t.predicted - t.predicted_ci[0]],
                        [t.predicted_ci[1] - t.predicted]], marker="x", linestyle="none",
                        color=line[0].get_color(), capsize=3)
    ax.axhline(0, color="gray", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training FLOPs of the rung's baseline")
    ax.set_ylabel("val_loss: arm - baseline (nats)")
    ax.set_title("Differences across the ladder (95% intervals; x: predicted)")
    ax.legend(fontsize=7)
    return save(fig, out / "ladder.png")
