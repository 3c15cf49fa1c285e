"""Statistics of sweep results: summaries with trial counts by status and confidence intervals,
paired comparisons against the baseline with Holm's correction, equal-token comparisons only
where they are honest, LR sensitivity and early-stopping agreement. Needs no Ray.

Design choices:
- Arms that share a seed share initialisation and batch order, so arms are compared with a
  paired t-test over shared seeds; Welch's test only where arms share fewer than two seeds.
  p-values are Holm-corrected across the arms compared, and "exceeds seed noise" is decided on
  the corrected p-value (alpha 0.05). The effect is the mean difference (nats) with its t
  interval, and the standardized d_z (paired) or Hedges-free Cohen's d (unpaired).
- Nothing disappears: every table counts trials by status, and an arm that lost seeds to
  divergence or errors is flagged (its mean is over its survivors).
- Equal-token comparisons read each trial at an evaluation within one step of the token count
  (all trials of a sweep evaluate at the same milestones), never interpolated across gaps.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..spec.names import METRIC, TIME_ATTR, Status

SUMMARY_METRICS = ("val_loss", "val_loss_se", "unigram_val_loss", "val_ppl", "val_acc",
                   "val_top5", "val_bpb", "tokens_seen", "epoch", "tokens_per_s", "mfu")
ALPHA = 0.05


def t_interval(values, confidence: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, half-width, std, n) of a t-based confidence interval; NaN half-width for n < 2."""
    from scipy import stats

    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    mean = float(v.mean())
    if n < 2:
        return mean, math.nan, math.nan, 1
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * std / math.sqrt(n))
    return mean, half, std, n


def status_counts(g) -> dict[str, int]:
    """n (all trials) and n_<status> for every status (nothing is dropped silently)."""
    s = g["status"].astype(str)
    return {"n": len(g), **{f"n_{k.value}": int((s == k.value).sum()) for k in Status}}


def summarize(df, by: str = "ablation", metrics: tuple[str, ...] = SUMMARY_METRICS,
              statuses: tuple[str, ...] = (Status.COMPLETED,)):
    """Mean, std and 95% CI of each metric per group over trials with `statuses`, with trial
    counts by status and `lost_seeds` (trials that diverged or errored)."""
    import pandas as pd

    rows = []
    for key, g in df.groupby(by, sort=False, observed=True):
        ok = g[g["status"].astype(str).isin(statuses)]
        counts = status_counts(g)
        row: dict[str, Any] = {by: key, **counts,
                               "lost_seeds": counts["n_diverged"] + counts["n_error"]}
        for m in metrics:
            if m not in ok:
                continue
            mean, half, std, _ = t_interval(pd.to_numeric(ok[m], errors="coerce").tolist())
            row.update({f"{m}_mean": mean, f"{m}_std": std, f"{m}_ci_low": mean - half,
                        f"{m}_ci_high": mean + half})
        rows.append(row)
    out = pd.DataFrame(rows)
    first = f"{metrics[0]}_mean"
    return out.sort_values(first, na_position="last", ignore_index=True) \
        if first in out else out


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (NaN stays NaN and is not counted)."""
    idx = [i for i, p in enumerate(pvalues) if p is not None and not math.isnan(p)]
    order = sorted(idx, key=lambda i: pvalues[i])
    out = [math.nan] * len(pvalues)
    running, m = 0.0, len(order)
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        out[i] = running
    return out


def _paired(a, b, confidence: float) -> dict[str, Any]:
    from scipy import stats

    d = a - b
    n, mean, sd = len(d), float(d.mean()), float(d.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n))
    p = float(stats.ttest_rel(a, b).pvalue) if sd > 0 else (0.0 if mean else 1.0)
    return {"test": "paired", "diff": mean, "ci_low": mean - half, "ci_high": mean + half,
            "p": p, "effect_size": mean / sd if sd > 0 else math.copysign(math.inf, mean)}


def _welch(a, b, confidence: float) -> dict[str, Any]:
    from scipy import stats

    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se, diff = math.sqrt(va + vb), float(a.mean() - b.mean())
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1)) if se else 1.0
    half = float(stats.t.ppf(0.5 + confidence / 2, dof) * se)
    pooled = math.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2)
    p = float(stats.ttest_ind(a, b, equal_var=False).pvalue) if se > 0 else math.nan
    return {"test": "welch", "diff": diff, "ci_low": diff - half, "ci_high": diff + half,
            "p": p, "effect_size": diff / pooled if pooled > 0 else math.nan}


COMPARE_COLUMNS = ["ablation", "test", "n_pairs", "diff", "ci_low", "ci_high", "effect_size",
                   "p", "p_holm", "exceeds_noise", "n", "n_completed", "n_diverged", "n_error",
                   "n_baseline", "lost_seeds"]


def compare_to_baseline(df, metric: str = METRIC, baseline: str = "baseline",
                        by: str = "ablation", confidence: float = 0.95):
    """Every group against `baseline` over completed trials: paired over shared seeds where
    there are at least two, else Welch; Holm-corrected p-values across the groups compared;
    `exceeds_noise` when the corrected p < 0.05. Trial counts by status per group."""
    import pandas as pd

    done = df[df["status"].astype(str) == Status.COMPLETED]
    base = done[done[by] == baseline].set_index("seed")[metric].astype(float).dropna()
    rows = []
    for key, g in df.groupby(by, sort=False, observed=True):
        if key == baseline:
            continue
        ok = g[g["status"].astype(str) == Status.COMPLETED]
        v = ok.set_index("seed")[metric].astype(float).dropna()
        shared = sorted(set(v.index) & set(base.index))
        counts = status_counts(g)
        row: dict[str, Any] = {by: key, "test": "-", "n_pairs": len(shared), "diff": math.nan,
                               "ci_low": math.nan, "ci_high": math.nan, "p": math.nan,
                               "effect_size": math.nan, **counts, "n_baseline": len(base),
                               "lost_seeds": counts["n_diverged"] + counts["n_error"]}
        if len(shared) >= 2:
            row.update(_paired(v[shared].to_numpy(), base[shared].to_numpy(), confidence))
        elif len(v) >= 2 and len(base) >= 2:
            row.update(_welch(v.to_numpy(), base.to_numpy(), confidence))
        elif len(v) and len(base):
            row["diff"] = float(v.mean() - base.mean())
        rows.append(row)
    out = pd.DataFrame(rows, columns=[c for c in COMPARE_COLUMNS if c != "p_holm"
                                      and c != "exceeds_noise"])
    out["p_holm"] = holm(out["p"].tolist())
    out["exceeds_noise"] = [pd.NA if math.isnan(p) else bool(p < ALPHA) for p in out["p_holm"]]
    return out[COMPARE_COLUMNS]


def at_tokens(history, tokens: float, metric: str = METRIC, tolerance: float | None = None):
    """Each trial's `metric` at the evaluation whose tokens seen is in [tokens, tokens + tol)
    (tol: the trial's tokens per step, from its own spacing), NaN where it has none: no
    interpolation, no extrapolation."""
    import pandas as pd

    rows = []
    for trial_id, g in history.groupby("trial_id", sort=True):
        g = g.dropna(subset=[TIME_ATTR, metric]).sort_values(TIME_ATTR)
        g = g[~g["diverged"].fillna(False).astype(bool)] if "diverged" in g else g
        tol = tolerance
        if tol is None and len(g) and "step" in g and g["step"].iloc[-1]:
            tol = float(g[TIME_ATTR].iloc[-1]) / float(g["step"].iloc[-1])
        hit = g[(g[TIME_ATTR] >= tokens) & (g[TIME_ATTR] < tokens + (tol or 1))]
        rows.append({"trial_id": trial_id, "ablation": g["ablation"].iloc[0] if len(g) else None,
                     "seed": g["seed"].iloc[0] if len(g) else None, "tokens": tokens,
                     metric: float(hit[metric].iloc[0]) if len(hit) else math.nan})
    return pd.DataFrame(rows, columns=["trial_id", "ablation", "seed", "tokens", metric])


def equal_budgets(df) -> tuple[bool, str]:
    """(whether completed trials ended at the same token count within one step, why not)."""
    done = df[df["status"].astype(str) == Status.COMPLETED]
    if done.empty:
        return False, "no completed trials"
    tokens = done["tokens_seen"].astype(float)
    per_step = (tokens / done["step"].astype(float)).max()
    if tokens.max() - tokens.min() < per_step:
        return True, ""
    return False, (f"completed runs ended at different budgets ({int(tokens.min()):,} to "
                   f"{int(tokens.max()):,} tokens): a shorter run is fully decayed where a "
                   "longer one is read mid-schedule, so losses at equal tokens would favour "
                   "short runs. Rerun with --iso-tokens for equal-budget comparisons.")


def lr_sensitivity(df, metric: str = METRIC, initial_loss: float | None = None,
                   by: str | None = None):
    """LR sensitivity (Wortsman et al. 2023): mean over the LR grid of min(final loss, initial
    loss) minus the best, over full-budget runs only (completed; diverged count as the initial
    loss; early-stopped and errored trials excluded). The initial loss defaults to the measured
    one (median `initial_loss` of the runs). Lower is more robust."""
    import pandas as pd

    if by is not None:
        return pd.Series({k: lr_sensitivity(g, metric, initial_loss)
                          for k, g in df.groupby(by, observed=True)}, name="lr_sensitivity")
    full = df[df["status"].astype(str).isin([Status.COMPLETED, Status.DIVERGED])]
    if initial_loss is None:
        if "initial_loss" not in full or full["initial_loss"].dropna().empty:
            raise ValueError("lr_sensitivity needs the measured initial_loss of the runs")
        initial_loss = float(full["initial_loss"].astype(float).median())
    finals = pd.to_numeric(full[metric], errors="coerce").where(
        full["status"].astype(str) != Status.DIVERGED)
    per_lr = finals.fillna(initial_loss).clip(upper=initial_loss).groupby(full["lr"]).mean()
    if len(per_lr) < 2:
        raise ValueError(f"lr_sensitivity needs at least 2 learning rates, got {len(per_lr)}")
    return float((per_lr - per_lr.min()).mean())


def rung_agreement(history, rungs: list[float] | None = None, metric: str = METRIC):
    """Spearman rank correlation, among trials that ran to the end, between the loss at each
    early-stopping rung (in tokens) and the final loss. Near 1: stopping early was trustworthy."""
    import pandas as pd

    h = history.dropna(subset=[TIME_ATTR, metric])
    last = h.groupby("trial_id")[TIME_ATTR].max()
    finished = last[last >= last.max() * 0.99].index
    h = h[h["trial_id"].isin(finished)]
    final = h.sort_values(TIME_ATTR).groupby("trial_id")[metric].last()
    if rungs is None:
        firsts = h.groupby("trial_id")[TIME_ATTR].apply(sorted)
        rungs = [float(t) for t in (firsts.iloc[0][:-1] if len(firsts) else [])]
    rows = []
    for r in rungs:
        at = at_tokens(h, r, metric).set_index("trial_id")[metric].reindex(final.index)
        ok = at.notna()
        rho = at[ok].rank().corr(final[ok].rank()) if ok.sum() >= 3 else math.nan
        rows.append({"rung_tokens": r, "n_trials": int(ok.sum()), "spearman": rho})
    return pd.DataFrame(rows, columns=["rung_tokens", "n_trials", "spearman"])


def rank_agreement(df, outcomes: dict, label: str, *, n_boot: int = 1000, seed: int = 0
                   ) -> dict[str, Any]:
    """Whether arms rank the same on extra domain `label` as on the main validation set:
    Spearman's rho between the arms' mean losses on the two, with a bootstrap 95% interval
    that resamples each arm's seeds and the eval windows (windows of one text are not
    independent draws of the language, and three to six arms give a coarse rho). The windows
    are shared: every run scores the same windows of a set (the same text, at the same places
    for runs of one seq_len), so each resample draws one set of window positions per set and
    applies it to every run, paired, as the arms' differences are measured on shared text."""
    from scipy.stats import spearmanr

    done = df[df["status"].astype(str) == Status.COMPLETED]
    arms: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for row in done.itertuples():
        o = outcomes.get(row.trial_id) or {}
        main, dom = o.get("window_losses"), (o.get("domain_window_losses") or {}).get(label)
        if main and dom:
            arms.setdefault(str(row.ablation), []).append((np.asarray(main), np.asarray(dom)))
    out: dict[str, Any] = {"label": label, "arms": len(arms), "n_boot": n_boot,
                           "seeds": sum(len(v) for v in arms.values()), "paired": True}
    if len(arms) < 3:
        return {**out, "rho": math.nan, "low": math.nan, "high": math.nan,
                "note": "needs 3 or more arms with per-window losses"}

    def rho(sample) -> float:
        means = [(np.mean([m.mean() for m, _ in runs]), np.mean([d.mean() for _, d in runs]))
                 for runs in sample]
        return float(spearmanr(*zip(*means)).statistic)

    rng = np.random.default_rng(seed)
    longest = [max(len(w[i]) for runs in arms.values() for w in runs) for i in (0, 1)]
    boots = []
    for _ in range(n_boot):
        at = [rng.random(n) for n in longest]  # one draw of positions per window set

        def pick(w: np.ndarray, u: np.ndarray) -> np.ndarray:
            return w[(u[:len(w)] * len(w)).astype(int)]

        sample = [[(pick(m, at[0]), pick(d, at[1]))
                   for m, d in (runs[i] for i in rng.integers(0, len(runs), len(runs)))]
                  for runs in arms.values()]
        boots.append(rho(sample))
    boots = [b for b in boots if math.isfinite(b)]
    return {**out, "rho": rho(list(arms.values())),
            "low": float(np.percentile(boots, 2.5)) if boots else math.nan,
            "high": float(np.percentile(boots, 97.5)) if boots else math.nan}


def pareto_front(x, y) -> list[int]:
    """Indices of the points no other point beats on both x (cost) and y (loss), by x."""
    order = np.argsort(np.asarray(x, dtype=float), kind="stable")
    front, best = [], math.inf
    for i in order:
        if y[i] < best:
            front.append(int(i))
            best = y[i]
    return front
