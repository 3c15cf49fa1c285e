"""The report's section for `grid --tune-lr`: each arm's lr curve and optimum, the answer at
each arm's own best lr, and the conclusions that differ from the fixed-lr comparison."""

from __future__ import annotations

import math

from ..spec.names import METRIC, Status
from .answer import Answer
from .lr_curves import FixedLr, LrFit, fits, fixed_lr, seeding_trials, sweep_trials
from .markdown import fmt, md_table
from .stats import lr_sensitivity


def lr_tuning_section(df, record: dict, ans: Answer | None) -> list[str]:
    """Empty unless the sweep tuned each arm's lr (decisions.json's `tune_lr`)."""
    tuning = (record or {}).get("tune_lr")
    if not tuning:
        return []
    found = fits(df)
    sweep = sweep_trials(df)
    counts = sweep["status"].astype(str).value_counts().to_dict()
    lines = ["## Every arm at its own best learning rate", "",
             f"The lr sweep: {tuning['k']} learning rates per arm, evenly in log scale from "
             f"lr/{tuning['span']:g} to lr*{tuning['span']:g} around each arm's configured lr, "
             f"seed {tuning['seed']}, equal tokens; early stopping compares trials of one arm "
             f"only ({tuning['stopping']}). {len(sweep)} trials: "
             + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + ". The chosen lr of "
             "each arm then ran with seeds 0, 1, ... (runs independent of those that chose it).",
             "", md_table(_fit_table(df, found, tuning), spec=".4g"), ""]
    lines += [f"- {f.arm}: no optimum given: {f.refused}." for f in found.values() if f.refused]
    lines += ["", "Optimum and loss at the optimum: a parabola in log(lr) through the "
              "full-budget points, with a 95% parametric-bootstrap interval (noise: the arm's "
              "seed SD at its chosen lr); `interior` is the share of refits whose optimum lies "
              "inside the range. `sensitivity` is Wortsman et al.'s: the mean over the swept "
              "lrs of the loss above the arm's best (diverged runs count as the initial loss; "
              "early-stopped ones are left out).", ""]
    if ans is not None:
        lines += ["The Answer above compares every arm at its own chosen lr.", ""]
        fixed = fixed_lr(df, tuning["centres"], ans.pooled_sd, ans.pooled_df)
        lines += changed_section(fixed, ans)
    return lines


def _fit_table(df, found: dict[str, LrFit], tuning: dict):
    import pandas as pd

    seeds = seeding_trials(df)
    seeds = seeds[seeds["status"].astype(str) == Status.COMPLETED]
    rows = []
    for arm, f in found.items():
        g = seeds[seeds["ablation"].astype(str) == arm][METRIC].astype(float)
        rows.append({
            "arm": arm, "configured lr": tuning["centres"].get(arm),
            "full-budget points": f"{len(f.lrs)}/{tuning['k']}",
            "optimum lr": f.opt_lr, "lr 95% CI": _ci(f.opt_lr_ci, ".3g"),
            "loss at optimum": f.opt_loss, "loss 95% CI": _ci(f.opt_loss_ci, ".4f"),
            "interior": f.interior, "chosen lr": tuning["chosen"].get(arm, f.chosen),
            "seeds at chosen lr": (f"{g.mean():.4f} ± {g.std(ddof=1):.4f} SD (n={len(g)})"
                                   if len(g) > 1 else fmt(g.mean() if len(g) else math.nan)),
            "sensitivity": _sensitivity(df, arm)})
    return pd.DataFrame(rows)


def _ci(ci: tuple[float, float], spec: str) -> str:
    return "-" if not all(math.isfinite(v) for v in ci) else f"[{ci[0]:{spec}}, {ci[1]:{spec}}]"


def _sensitivity(df, arm: str) -> float:
    g = sweep_trials(df)
    try:
        return lr_sensitivity(g[g["ablation"].astype(str) == arm])
    except ValueError:
        return math.nan


def changed_section(fixed: dict[str, FixedLr], ans: Answer) -> list[str]:
    """Each arm whose verdict at fixed lr differs from its verdict at its own best lr."""
    own = {r.arm: r for r in ans.arms}
    lines = ["### Conclusions that change at each arm's own best lr", "",
             "At fixed lr: each arm's run at its configured lr minus the baseline's (one "
             "paired seed of the lr sweep), unadjusted 95% t interval from the seeding phase's "
             "pooled seed SD of a paired difference; at its own best lr: the Answer above.", ""]
    changed = []
    for arm, f in fixed.items():
        r = own.get(arm)
        if r is None or not math.isfinite(f.diff) or f.verdict == r.verdict:
            continue
        at_own = (f"{r.diff:+.3f} [{r.ci[0]:+.3f}, {r.ci[1]:+.3f}], {r.verdict}"
                  if math.isfinite(r.diff) else r.verdict)
        changed.append(f"- {arm}: at fixed lr it looked {_looked(f)}; at each arm's best lr "
                       f"the difference is {at_own} (n={r.n} seeds).")
    return lines + (changed or ["- None: every verdict is the same at fixed lr and at each "
                                "arm's own best lr."]) + [""]


def _looked(f: FixedLr) -> str:
    size = f"{abs(f.diff):.3f} nats (± {f.half_width:.3f})"
    if f.verdict == "better":
        return f"better by {size}"
    if f.verdict == "worse":
        return f"worse by {size}"
    return f"{f.verdict}: {f.diff:+.3f} nats (± {fmt(f.half_width, '.3f')})"
