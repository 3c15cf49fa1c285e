"""The answer to "which changes matter?": every arm against the baseline, with the estimate from
every seed that ran and its 95% interval, the verdict and how it was reached, the seeds lost,
and what else differs between the runs. The grid prints it at its end; the report opens with it.

Design choices:
- Verdicts come from the sequential procedure (`sequential.py`) replayed on the results with
  the looks the sweep took (recorded in decisions.json), over the sweep's whole family of arms
  (also an arm that lost every seed); a grid with a fixed seed count is the same procedure with
  one look. The replay is compared with the decisions the sweep recorded, and a difference is
  said, never hidden.
- The printed estimate uses every seed that ran ("n=4, decided at 3"), with its 95% repeated
  confidence interval, valid whenever the sweep stopped. The decision's own interval (at the
  nominal level of the deciding test, strict early) is shown apart and named.
- What else differs comes from the resolved configs and results of the runs (`confounds.py`),
  classed as the arm's change, what follows from it, or something else, with a direction only
  where it is known. Arms trained with different contexts are also compared on the same windows
  (the shorter context's, `val_loss@ctx<N>`), beside the main comparison.
- Diverged or failed seeds are part of the outcome: counted in the arm's line.
- Eval noise is reported apart from seed noise: arms scored on the same windows are compared
  window by window, with the standard error from batch means of neighbouring windows
  (`training.noise`). Arms scored on different windows get the unpaired error and say so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from ..spec.names import METRIC, Status, context_metric
from ..training.noise import batch_means_se
from .confounds import Confound, confound_texts, confounds, question_keys
from .lr_curves import seeding_trials
from .sequential import ALPHA, adjusted_p, decide, describe, paired_interval

BASELINE = "baseline"
LOST = (Status.DIVERGED, Status.ERROR)


@dataclass
class SameWindows:
    """The arm against the baseline on the same windows (the shorter context's)."""
    context: int
    n: int
    diff: float
    ci: tuple[float, float]
    """95% repeated confidence interval (the arm's own paired variance)."""


@dataclass
class ArmAnswer:
    """One arm's line."""
    arm: str
    verdict: str
    """better / worse / not resolved / no test (fewer than two seeds) / diverged."""
    n: int = 0
    """Seeds paired with the baseline in the estimate: every seed that ran."""
    decided_at: int | None = None
    """Seeds at the look that decided it (None: undecided)."""
    diff: float = math.nan
    """Mean paired difference over the n seeds, nats (negative: lower loss than the baseline)."""
    pct: float = math.nan
    """`diff` as a percentage of the baseline's mean loss."""
    ci: tuple[float, float] = (math.nan, math.nan)
    """95% repeated confidence interval of `diff` (valid after sequential stopping)."""
    decision_ci: tuple[float, float] = (math.nan, math.nan)
    """The deciding test's interval at its nominal level (excludes 0 iff it decided)."""
    decision_level: float = math.nan
    """That nominal two-sided level."""
    p_adj: float = math.nan
    """Smallest familywise alpha at which the procedure rejects 'no difference'."""
    confounds: list[Confound] = field(default_factory=list)
    same_windows: SameWindows | None = None
    eval_se: float = math.nan
    """Standard error of the difference from the eval windows alone (not seeds), nats."""
    eval_paired: bool = True
    own_sd: float = math.nan
    """This arm's own SD of a paired difference across seeds."""
    pooled_sd: float = math.nan
    """The pooled SD its variance was moderated toward (NaN: its own alone)."""
    seeds_run: int = 0
    """Seeds of this arm that ran (any status)."""
    lost: int = 0
    """Of those, diverged or failed."""
    note: str = ""


@dataclass
class Answer:
    arms: list[ArmAnswer]
    procedure: str
    baseline_loss: float
    pooled_sd: float
    """SD of a paired difference across seeds, pooled over arms at the last look."""
    stopped_because: str = ""
    pooled_df: int = 0
    """Degrees of freedom of `pooled_sd`."""
    baseline_n: int = 0
    baseline_lost: int = 0
    mismatch: str = ""
    """How the replayed decisions differ from the ones the sweep recorded (empty: equal)."""


def final_losses(df, metric: str = METRIC) -> dict[str, dict[int, float]]:
    """{arm: {seed: final metric}} over completed trials (a later trial of a seed wins)."""
    out: dict[str, dict[int, float]] = {}
    if metric not in df:
        return out
    done = df[df["status"].astype(str) == Status.COMPLETED].dropna(subset=[metric])
    for arm, seed, v in zip(done["ablation"], done["seed"], done[metric]):
        out.setdefault(str(arm), {})[int(seed)] = float(v)
    return out


def looks_of(record: dict | None, losses: dict[str, dict[int, float]]) -> tuple[list[int], int]:
    """(looks, max_seeds): the sweep's recorded looks, or one look at the seeds there are."""
    if record and record.get("looks"):
        return list(record["looks"]), int(record["max_seeds"])
    n = max((len(v) for v in losses.values()), default=0)
    return [n], n


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


def family(df, record: dict | None) -> list[str]:
    """The sweep's arms besides the baseline: the recorded family, else the arms in the
    results (in order)."""
    arms = list((record or {}).get("arms") or dict.fromkeys(df["ablation"].astype(str)))
    return [a for a in arms if a != BASELINE]


def answer(res, record: dict | None = None, alpha: float = ALPHA, *,
           spec: dict | None = None) -> Answer | None:
    """Every arm against the baseline; None when the sweep has no baseline to compare with.
    The lr sweep of `grid --tune-lr` is left out: its runs chose the lrs, the seeds answer.
    `spec`: the sweep's stored spec, whose question says what each arm changes."""
    res = replace(res, trials=seeding_trials(res.trials)) if len(res.trials) else res
    df = res.trials
    if df.empty or BASELINE not in set(df["ablation"].dropna().astype(str)):
        return None
    losses = final_losses(df)
    arms = family(df, record)
    looks, max_seeds = looks_of(record, losses)
    base = _mean(losses.get(BASELINE))
    b_run, b_lost = _seeds(df, BASELINE)
    if not looks or looks[-1] < 2 or len(losses.get(BASELINE, {})) < 2:
        out = [ArmAnswer(a, "no test", note="fewer than 2 seeds: seed noise is unknown")
               for a in arms]
        return Answer(out, describe([max(looks or [1])], alpha), base, math.nan,
                      baseline_n=len(losses.get(BASELINE, {})), baseline_lost=b_lost)
    outcome = decide(losses, arms, looks, max_seeds=max_seeds, alpha=alpha)
    tuned = frozenset({"lr"}) if (record or {}).get("tune_lr") else frozenset()
    own = question_keys(spec)
    rows = [_arm_line(res, a, outcome, losses, arms, looks, max_seeds, base, tuned, own)
            for a in arms]
    finals = [d.final for d in outcome.decisions.values() if d.final and d.final.n >= 2]
    dof = sum(t.n - 1 for t in finals)
    pooled = math.sqrt(sum(t.own_sd ** 2 * (t.n - 1) for t in finals) / dof) if dof else math.nan
    return Answer(rows, describe(looks, alpha), base, pooled,
                  (record or {}).get("stopped_because", ""), dof, len(losses[BASELINE]), b_lost,
                  _mismatch(outcome, record, looks))


def _mean(d: dict | None) -> float:
    return float(np.mean(list(d.values()))) if d else math.nan


def _seeds(df, arm: str) -> tuple[int, int]:
    """(seeds that ran, seeds lost to divergence or errors) of one arm."""
    g = df[df["ablation"].astype(str) == arm]
    last = g.drop_duplicates("seed", keep="last")["status"].astype(str)
    return len(last), int(last.isin([s.value for s in LOST]).sum())


def _mismatch(outcome, record: dict | None, looks: list[int]) -> str:
    """The arms whose replayed verdict differs from the sweep's recorded one."""
    if not record or not record.get("verdicts") or list(record.get("looks") or []) != looks:
        return ""
    diff = [f"{a} (sweep: {v}, replay: {outcome.decisions[a].verdict})"
            for a, v in record["verdicts"].items()
            if a in outcome.decisions and outcome.decisions[a].verdict != v]
    return "; ".join(diff)


def _arm_line(res, arm, outcome, losses, arms, looks, max_seeds, base, tuned,
              own) -> ArmAnswer:
    df = res.trials
    run, lost = _seeds(df, arm)
    d = outcome.decisions[arm]
    final = d.final
    if final is None or final.n < 1:
        verdict = "diverged" if run and lost == run else "no test"
        why = (f"every seed ({lost} of {run}) diverged or failed" if verdict == "diverged"
               else "no completed seed paired with the baseline")
        return ArmAnswer(arm, verdict, seeds_run=run, lost=lost, note=why)
    t = d.test
    se, paired = eval_noise(res.outcomes, df, arm)
    decided = d.look is not None
    return ArmAnswer(
        arm, d.verdict, final.n, looks[d.look] if decided else None, final.diff,
        100 * final.diff / base if base else math.nan, d.rci,
        t.interval(d.nominal) if decided else (math.nan, math.nan),
        d.nominal if decided else math.nan,
        adjusted_p(losses, arms, looks, arm, max_seeds=max_seeds),
        confounds(df, arm, tuned=tuned, own_keys=own),
        same_windows(df, arm, d.last, looks, max_seeds),
        se, paired, final.own_sd, final.prior_sd, run, lost)


def same_windows(df, arm: str, look: int, looks: list[int], max_seeds: int
                 ) -> SameWindows | None:
    """The arm against the baseline on the shorter of their contexts' windows, when their
    contexts differ and both were scored there (`eval_contexts`)."""
    rows = df[df["ablation"].astype(str).isin([arm, BASELINE])]
    lengths = rows["seq_len"].dropna().astype(int).unique() if "seq_len" in rows else []
    if len(lengths) < 2:
        return None
    context = int(min(lengths))
    losses = final_losses(df, context_metric(context))
    a, b = losses.get(arm, {}), losses.get(BASELINE, {})
    d = [a[s] - b[s] for s in sorted(a) if s in b]
    if not d:
        return None
    return SameWindows(context, len(d), float(np.mean(d)),
                       paired_interval(d, look, looks, max_seeds))


def _interval(ci: tuple[float, float]) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def answer_lines(ans: Answer) -> list[str]:
    """Per arm (best first) a line with the verdict, the estimate from every seed and its 95%
    interval, then indented lines for the same-window comparison and what else differs; then
    how the verdicts were reached."""
    def key(r):
        return (r.verdict not in ("better", "worse"), r.diff if math.isfinite(r.diff) else 9e9)

    lines = []
    for r in sorted(ans.arms, key=key):
        lines += _lines_of(r)
    lost = (f", {ans.baseline_lost} of {ans.baseline_lost + ans.baseline_n} seeds lost"
            if ans.baseline_lost else "")
    lines.append(f"baseline {METRIC} {ans.baseline_loss:.3f} (n={ans.baseline_n} seeds{lost}); "
                 f"verdicts by {ans.procedure}.")
    undecided = [r for r in ans.arms if r.verdict == "not resolved"]
    if undecided:
        why = f" ({ans.stopped_because})" if ans.stopped_because else ""
        lines.append(f"undecided: {', '.join(r.arm for r in undecided)}{why}.")
    if ans.mismatch:
        lines.append(f"warning: replaying the procedure on these results differs from the "
                     f"decisions the sweep recorded: {ans.mismatch}.")
    return lines


def _lines_of(r: ArmAnswer) -> list[str]:
    pad = " " * 13
    lost = f"; {r.lost} of {r.seeds_run} seeds diverged or failed" if r.lost else ""
    if not math.isfinite(r.diff):
        return [f"{r.arm:<12} {r.verdict}: {r.note}"]
    head = (f"{r.arm:<12} {r.verdict}: {r.diff:+.3f} nats ({r.pct:+.1f}%) vs baseline, 95% "
            f"interval {_interval(r.ci)}, n={r.n} seeds")
    if r.decided_at is not None:
        head += (f", decided at {r.decided_at} (decision interval {_interval(r.decision_ci)} "
                 f"at nominal level {r.decision_level:.2g})")
    head += f", corrected p={r.p_adj:.2g}"
    if r.verdict == "not resolved":
        pool = f" (pooled {r.pooled_sd:.3f})" if math.isfinite(r.pooled_sd) else ""
        head += f"; its own seed SD of a paired difference {r.own_sd:.3f} nats{pool}"
    out = [head + lost]
    if r.same_windows:
        w = r.same_windows
        out.append(f"{pad}on the same {w.context}-token windows: {w.diff:+.3f} nats, 95% "
                   f"interval {_interval(w.ci)}, n={w.n} seeds")
    if r.confounds:
        out.append(f"{pad}{confound_texts(r.confounds)}")
    return out
