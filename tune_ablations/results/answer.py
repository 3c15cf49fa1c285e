"""The answer to "which changes matter?": every arm against the baseline, one line each, with
the difference (nats and %), its interval, the corrected p-value, a verdict and every confound
in the same line. The grid prints it at its end; the report opens with it.

Design choices:
- Verdicts come from the sequential procedure (`sequential.py`) replayed on the results, with
  the looks the sweep took (recorded in decisions.json); a grid with a fixed seed count is the
  same procedure with one look. The report therefore never disagrees with the sweep.
- A comparison that crosses budgets or context lengths says so in its own line (tokens,
  training FLOPs, context, epochs), never only in a separate warning.
- Eval noise is reported apart from seed noise: arms scored on the same windows are compared
  window by window (the per-window difference, averaged over seeds), with its standard error
  from batch means of neighbouring windows (windows of one document are correlated). Arms
  scored on different windows (another seq_len) get the unpaired error and say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..spec.names import METRIC, Status
from .lr_curves import seeding_trials
from .sequential import ALPHA, adjusted_p, decide, describe

BASELINE = "baseline"


@dataclass
class ArmAnswer:
    """One arm's line."""
    arm: str
    verdict: str
    """better / worse / not resolved / no test (fewer than two seeds) / diverged."""
    n: int = 0
    """Seeds paired with the baseline."""
    diff: float = math.nan
    """Mean loss minus the baseline's, nats (negative: better)."""
    pct: float = math.nan
    """`diff` as a percentage of the baseline's mean loss."""
    ci: tuple[float, float] = (math.nan, math.nan)
    """Interval at the level of the procedure's decision (excludes 0 iff decided)."""
    p_adj: float = math.nan
    """Smallest familywise alpha at which the procedure rejects 'no difference'."""
    confounds: list[str] = field(default_factory=list)
    eval_se: float = math.nan
    """Standard error of the difference from the eval windows alone (not seeds), nats."""
    eval_paired: bool = True
    own_sd: float = math.nan
    """This arm's own seed SD of the paired difference (pooled variance check)."""
    note: str = ""


@dataclass
class Answer:
    arms: list[ArmAnswer]
    procedure: str
    baseline_loss: float
    pooled_sd: float
    """SD of a paired difference across seeds, pooled over arms (the seed noise tested)."""
    stopped_because: str = ""
    pooled_df: int = 0
    """Degrees of freedom of `pooled_sd`."""


def final_losses(df) -> dict[str, dict[int, float]]:
    """{arm: {seed: final loss}} over completed trials (a later trial of a seed wins)."""
    out: dict[str, dict[int, float]] = {}
    done = df[df["status"].astype(str) == Status.COMPLETED].dropna(subset=[METRIC])
    for row in done.itertuples():
        out.setdefault(str(row.ablation), {})[int(row.seed)] = float(getattr(row, METRIC))
    return out


def looks_of(record: dict | None, losses: dict[str, dict[int, float]]) -> tuple[list[int], int]:
    """(looks, max_seeds): the sweep's recorded looks, or one look at the seeds there are."""
    if record and record.get("looks"):
        return list(record["looks"]), int(record["max_seeds"])
    n = max((len(v) for v in losses.values()), default=0)
    return [n], n


def batch_means_se(x: np.ndarray) -> float:
    """Standard error of the mean of a correlated sequence by non-overlapping batch means
    (batch length about sqrt(N))."""
    x = np.asarray(x, dtype=float)
    b = max(1, int(math.sqrt(len(x))))
    k = len(x) // b
    if k < 2:
        return math.nan
    means = x[:k * b].reshape(k, b).mean(axis=1)
    return float(means.std(ddof=1) / math.sqrt(k))


def eval_noise(outcomes: dict, df, arm: str) -> tuple[float, bool]:
    """(standard error of the arm-baseline difference from the eval windows, paired?)."""
    def windows(name):
        rows = df[(df["ablation"] == name) & (df["status"].astype(str) == Status.COMPLETED)]
        return {int(r.seed): np.asarray(outcomes.get(r.trial_id, {}).get("window_losses") or [])
                for r in rows.itertuples()}

    a, b = windows(arm), windows(BASELINE)
    seeds = [s for s in a if s in b and len(a[s]) and len(a[s]) == len(b[s])]
    same = df[df["ablation"].isin([arm, BASELINE])]["seq_len"].nunique() == 1
    if same and seeds:
        return batch_means_se(np.mean([a[s] - b[s] for s in seeds], axis=0)), True
    ses = [batch_means_se(np.mean(list(w.values()), axis=0)) for w in (a, b)
           if w and len({len(v) for v in w.values()}) == 1 and all(len(v) for v in w.values())]
    return (math.sqrt(sum(s * s for s in ses)) if len(ses) == 2 else math.nan), False


def confounds(df, arm: str) -> list[str]:
    """What differs between the arm's runs and the baseline's besides the arm itself."""
    done = df[df["status"].astype(str) == Status.COMPLETED]
    a, b = done[done["ablation"] == arm], done[done["ablation"] == BASELINE]
    if a.empty or b.empty:
        return []
    out = []
    ta, tb = float(a["tokens_seen"].mean()), float(b["tokens_seen"].mean())
    step = float((b["tokens_seen"] / b["step"]).max())
    if abs(ta - tb) >= step:
        out.append(f"{ta / tb:.2f}x the baseline's tokens")
    fa, fb = (float((g["flops_per_token"] * g["tokens_seen"]).mean()) for g in (a, b))
    if all(math.isfinite(v) and v > 0 for v in (fa, fb)) and abs(fa / fb - 1) > 0.05:
        out.append(f"{fa / fb:.2f}x the baseline's training FLOPs")
    if int(a["seq_len"].iloc[0]) != int(b["seq_len"].iloc[0]):
        out.append(f"context {int(a['seq_len'].iloc[0])} vs {int(b['seq_len'].iloc[0])} tokens "
                   "(scored on other windows)")
    epochs = float(a["epoch"].max())
    if epochs > 1:
        out.append(f"{epochs:.2f} epochs over the corpus")
    return out


def answer(res, record: dict | None = None, alpha: float = ALPHA) -> Answer | None:
    """Every arm against the baseline; None when the sweep has no baseline to compare with.
    The lr sweep of `grid --tune-lr` is left out: its runs chose the lrs, the seeds answer."""
    res = replace(res, trials=seeding_trials(res.trials)) if len(res.trials) else res
    df = res.trials
    if df.empty or BASELINE not in set(df["ablation"].dropna().astype(str)):
        return None
    losses = final_losses(df)
    arms = [a for a in dict.fromkeys(df["ablation"].astype(str)) if a != BASELINE]
    looks, max_seeds = looks_of(record, losses)
    if not looks or looks[-1] < 2 or len(losses.get(BASELINE, {})) < 2:
        out = [ArmAnswer(a, "no test", note="fewer than 2 seeds: seed noise is unknown")
               for a in arms]
        return Answer(out, describe([max(looks or [1])], alpha),
                      _mean(losses.get(BASELINE)), math.nan)
    tested = [a for a in arms if len(losses.get(a, {})) >= 1]
    outcome = decide(losses, tested, looks, max_seeds=max_seeds, alpha=alpha)
    base = _mean(losses[BASELINE])
    rows = [_arm_line(res, a, outcome, losses, tested, looks, max_seeds, base) for a in arms]
    final = outcome.tests[-1] if outcome.tests else {}
    test = next((t for t in final.values() if t.n and math.isfinite(t.se)), None)
    pooled = test.se * math.sqrt(test.n) if test else math.nan
    return Answer(rows, describe(looks, alpha), base, pooled,
                  (record or {}).get("stopped_because", ""), test.df if test else 0)


def _mean(d: dict | None) -> float:
    return float(np.mean(list(d.values()))) if d else math.nan


def _arm_line(res, arm, outcome, losses, tested, looks, max_seeds, base) -> ArmAnswer:
    df = res.trials
    g = df[df["ablation"] == arm]
    lost = int(g["status"].astype(str).isin([Status.DIVERGED, Status.ERROR]).sum())
    if arm not in tested:
        verdict = "diverged" if (g["status"].astype(str) == Status.DIVERGED).any() else "no test"
        return ArmAnswer(arm, verdict, note=f"no completed seed ({len(g)} trials)")
    d = outcome.decisions[arm]
    t = d.test
    se, paired = eval_noise(res.outcomes, df, arm)
    pairs = [losses[arm][s] - losses[BASELINE][s] for s in losses[arm] if s in losses[BASELINE]]
    note = f"{lost} seed(s) diverged or errored" if lost else ""
    return ArmAnswer(
        arm, d.verdict, t.n if t else 0, t.diff if t else math.nan,
        100 * t.diff / base if t and base else math.nan,
        t.interval(d.nominal) if t else (math.nan, math.nan),
        adjusted_p(losses, tested, looks, arm, max_seeds=max_seeds),
        confounds(df, arm), se, paired,
        float(np.std(pairs, ddof=1)) if len(pairs) > 1 else math.nan, note)


def answer_lines(ans: Answer) -> list[str]:
    """One plain line per arm, best first, then how the verdicts were reached."""
    def key(r):
        return (r.verdict not in ("better", "worse"), r.diff if math.isfinite(r.diff) else 9e9)

    lines = []
    for r in sorted(ans.arms, key=key):
        if not math.isfinite(r.diff):
            lines.append(f"{r.arm:<12} {r.verdict}: {r.note}")
            continue
        extra = "; ".join([*r.confounds, *([r.note] if r.note else [])])
        lines.append(
            f"{r.arm:<12} {r.diff:+.3f} nats ({r.pct:+.1f}%) vs baseline, interval "
            f"[{r.ci[0]:+.3f}, {r.ci[1]:+.3f}], corrected p={r.p_adj:.2g}, n={r.n} seeds: "
            f"{r.verdict}" + (f" (confounded: {extra})" if r.confounds else
                              f" ({extra})" if extra else ""))
    lines.append(f"baseline {METRIC} {ans.baseline_loss:.3f}; verdicts by {ans.procedure}.")
    undecided = [r.arm for r in ans.arms if r.verdict == "not resolved"]
    if undecided:
        why = f" ({ans.stopped_because})" if ans.stopped_because else ""
        lines.append(f"undecided: {', '.join(undecided)}{why}.")
    return lines

