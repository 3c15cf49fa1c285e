"""Honest comparisons of sweep results: summaries with confidence intervals, comparisons at equal
tokens, LR sensitivity, early-stopping agreement. Needs no Ray and no GPU.

`python -m tune_ablations.analysis <experiment> [--out DIR]` writes `report.md`, PNG plots and
the tables (see `report.py`).

Design choices:
- Confidence intervals are t-based (seeds are few); with n=1 there is no interval, and the
  report says so rather than printing a zero-width one.
- Ablation vs baseline: Welch's difference of means with its t interval; a difference "exceeds
  seed noise" only when that interval excludes zero.
- Trials are compared at equal data exposure by interpolating each one's validation loss at a
  token count (never extrapolating), the confound the reference itself named.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .config import METRIC
from .results import load_history, load_outcomes, load_results, write_tables

__all__ = ["load_results", "load_history", "load_outcomes", "summarize", "compare_to_baseline",
           "at_tokens", "lr_sensitivity", "rung_agreement", "t_interval", "main"]

SUMMARY_METRICS = ("val_loss", "val_ppl", "val_acc", "val_top5", "val_bpb", "tokens_seen",
                   "tokens_per_s", "mfu")


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


def summarize(df, by: str = "ablation", metrics: tuple[str, ...] = SUMMARY_METRICS,
              statuses: tuple[str, ...] = ("completed",)):
    """Mean, std, n and 95% CI of each metric per group (across seeds), sorted by the first
    metric. Only trials with the given statuses count; `n_trials` counts all."""
    import pandas as pd

    rows = []
    for key, g in df.groupby(by, sort=False, observed=True):
        ok = g[g["status"].astype(str).isin(statuses)]
        row: dict[str, Any] = {by: key, "n_trials": len(g), "n": len(ok)}
        for m in metrics:
            if m not in ok:
                continue
            mean, half, std, _ = t_interval(pd.to_numeric(ok[m], errors="coerce").tolist())
            row.update({f"{m}_mean": mean, f"{m}_std": std, f"{m}_ci_low": mean - half,
                        f"{m}_ci_high": mean + half})
        rows.append(row)
    out = pd.DataFrame(rows)
    if out.empty:
        return out
    first = f"{metrics[0]}_mean"
    return out.sort_values(first, na_position="last", ignore_index=True) if first in out else out


def compare_to_baseline(df, metric: str = METRIC, baseline: str = "baseline",
                        by: str = "ablation", confidence: float = 0.95):
    """Every group against `baseline`: difference of means (group - baseline), Welch t
    interval, and whether the interval excludes zero (the difference exceeds seed noise)."""
    import pandas as pd
    from scipy import stats

    done = df[df["status"].astype(str) == "completed"]
    base = pd.to_numeric(done.loc[done[by] == baseline, metric], errors="coerce").dropna()
    rows = []
    for key, g in done.groupby(by, sort=False, observed=True):
        if key == baseline:
            continue
        v = pd.to_numeric(g[metric], errors="coerce").dropna()
        row = {by: key, "diff": (v.mean() - base.mean()) if len(v) and len(base) else math.nan,
               "n": len(v), "n_baseline": len(base), "ci_low": math.nan, "ci_high": math.nan,
               "exceeds_noise": pd.NA}
        if len(v) >= 2 and len(base) >= 2:
            va, vb = v.var(ddof=1) / len(v), base.var(ddof=1) / len(base)
            se = math.sqrt(va + vb)
            dof = (va + vb) ** 2 / (va**2 / (len(v) - 1) + vb**2 / (len(base) - 1)) if se else 1
            half = stats.t.ppf(0.5 + confidence / 2, dof) * se
            row.update(ci_low=row["diff"] - half, ci_high=row["diff"] + half,
                       exceeds_noise=bool(se > 0 and abs(row["diff"]) > half))
        rows.append(row)
    return pd.DataFrame(rows, columns=[by, "diff", "ci_low", "ci_high", "n", "n_baseline",
                                       "exceeds_noise"])


def at_tokens(history, tokens: float, metric: str = METRIC):
    """Each trial's `metric` linearly interpolated at `tokens` tokens seen; NaN where the trial
    did not reach that far (or started later): no extrapolation."""
    import pandas as pd

    rows = []
    for trial_id, g in history.groupby("trial_id", sort=True):
        g = g.dropna(subset=["tokens_seen", metric]).sort_values("tokens_seen")
        g = g[~g["diverged"].fillna(False).astype(bool)] if "diverged" in g else g
        x, y = g["tokens_seen"].to_numpy(float), g[metric].to_numpy(float)
        value = float(np.interp(tokens, x, y)) if len(x) and x[0] <= tokens <= x[-1] else math.nan
        rows.append({"trial_id": trial_id, "ablation": g["ablation"].iloc[0] if len(g) else None,
                     "seed": g["seed"].iloc[0] if len(g) else None, "tokens": tokens,
                     metric: value})
    return pd.DataFrame(rows, columns=["trial_id", "ablation", "seed", "tokens", metric])


def lr_sensitivity(df, metric: str = METRIC, initial_loss: float | None = None,
                   by: str | None = None):
    """LR sensitivity (Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer
    training instabilities"): mean over the LR grid of min(final loss, initial loss) minus the
    best final loss. Diverged runs count as the initial loss. Initial loss defaults to
    ln(vocab_size), the loss of the near-uniform model at initialisation. Lower is more robust."""
    import pandas as pd

    if by is not None:
        return pd.Series({k: lr_sensitivity(g, metric, initial_loss)
                          for k, g in df.groupby(by, observed=True)}, name="lr_sensitivity")
    if initial_loss is None:
        initial_loss = float(np.log(df["vocab_size"].astype(float).max()))
    finals = pd.to_numeric(df[metric], errors="coerce").where(
        df["status"].astype(str) != "diverged")
    per_lr = finals.fillna(initial_loss).clip(upper=initial_loss).groupby(df["lr"]).mean()
    if len(per_lr) < 2:
        raise ValueError(f"lr_sensitivity needs at least 2 learning rates, got {len(per_lr)}")
    return float((per_lr - per_lr.min()).mean())


def rung_agreement(history, rungs: list[float] | None = None, metric: str = METRIC):
    """Spearman rank correlation, among trials that ran to the end, between the loss at each
    early-stopping rung (in tokens) and the final loss. Near 1: stopping early was trustworthy
    on this corpus and budget. Rungs default to every evaluation point the finished trials
    share."""
    import pandas as pd

    h = history.dropna(subset=["tokens_seen", metric])
    last = h.groupby("trial_id")["tokens_seen"].max()
    finished = last[last == last.max()].index
    h = h[h["trial_id"].isin(finished)]
    final = h.sort_values("tokens_seen").groupby("trial_id")[metric].last()
    if rungs is None:
        counts = h.groupby("tokens_seen")["trial_id"].nunique()
        rungs = [float(t) for t, c in counts.items() if c == len(finished) and t < last.max()]
    rows = []
    for r in rungs:
        at = at_tokens(h, r, metric).set_index("trial_id")[metric].reindex(final.index)
        ok = at.notna()
        rho = at[ok].rank().corr(final[ok].rank()) if ok.sum() >= 3 else math.nan
        rows.append({"rung_tokens": r, "n_trials": int(ok.sum()), "spearman": rho})
    return pd.DataFrame(rows, columns=["rung_tokens", "n_trials", "spearman"])


def main(argv: list[str] | None = None) -> int:
    """`python -m tune_ablations.analysis <experiment> [--out DIR]`: report, plots, tables."""
    import argparse
    import tempfile
    from pathlib import Path

    ap = argparse.ArgumentParser(prog="python -m tune_ablations.analysis", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", nargs="?", help="experiment folder (results/<name>)")
    ap.add_argument("--out", help="report folder (default: <experiment>/report)")
    ap.add_argument("--no-plots", action="store_true", help="tables and report.md only")
    ap.add_argument("--smoke-test", action="store_true",
                    help="report on a small synthetic experiment, no training")
    args = ap.parse_args(argv)
    from .report import make_synthetic_experiment, write_report

    if args.smoke_test:
        args.path = str(make_synthetic_experiment(Path(tempfile.mkdtemp(prefix="ta-smoke-"))))
    if not args.path:
        ap.error("the experiment folder is required (or --smoke-test)")
    path = Path(args.path)
    if not path.is_dir():
        ap.error(f"experiment folder {str(path)!r} does not exist")
    out = Path(args.out) if args.out else path / "report"
    tables = write_tables(path, out)
    report = write_report(path, out, plots=not args.no_plots)
    print(f"event=report path={report} tables={','.join(sorted(tables))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
