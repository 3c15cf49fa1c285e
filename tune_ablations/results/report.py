"""The report folder: `report.md`, opening with the answer, then tables, plain statements and
text samples, with PNG plots beside it.

Design choices:
- Conclusions first: the "Answer" section (`answer.py`) gives every arm's difference from the
  baseline with its interval, corrected p-value, verdict and confounds.
- Every number says what it compares and over how many trials; statements are generated from
  the numbers and say where the data does not support a claim (unequal budgets, seeds lost,
  eval noise).
- A search's trials differ in their parameters, so a search gets its own section (top trials,
  held-out check, importances) and no mean-per-ablation table.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ..spec.config import field_names
from ..spec.names import (
    DECISIONS_FILE,
    HOLDOUT_FILE,
    IMPORTANCES_FILE,
    METRIC,
    SWEEP_FILE,
    Status,
    is_context_metric,
)
from .answer import Answer, answer, answer_lines
from .experiment import Experiment
from .frames import Results, probes_frame
from .lr_curves import FixedLr, LrFit, fits, fixed_lr, seeding_trials, sweep_trials
from .stats import equal_budgets, lr_sensitivity, rung_agreement, summarize


def fmt(v: Any, spec: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:{spec}}" if isinstance(v, float) else str(v)


def md_table(frame, columns: list[str] | None = None, spec: str = ".4g") -> str:
    cols = columns or list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(fmt(row.get(c), spec) for c in cols) + " |")
    return "\n".join(lines)


def _pm(row, m: str, spec: str = ".4f") -> str:
    mean, lo = row.get(f"{m}_mean"), row.get(f"{m}_ci_low")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if lo is None or math.isnan(lo):
        return f"{mean:{spec}} (n=1)"
    return f"{mean:{spec}} ± {mean - lo:{spec}}"


def lr_only_sweep(df) -> bool:
    """True when the learning rate is the only config field that varies (besides the seed and
    the label): then LR sensitivity means what Wortsman et al. meant."""
    varying = {c for c in field_names() if c in df and df[c].astype(str).nunique() > 1}
    return "lr" in varying and varying <= {"lr", "seed", "name"}


def answer_section(ans: Answer | None) -> list[str]:
    if ans is None:
        return []
    lines = ["## Answer", "", f"Each arm's final {METRIC} minus the baseline's (negative is "
             "better), averaged over every seed both ran, with its 95% repeated confidence "
             "interval (valid whenever the sequential procedure stopped). `decided at` is the "
             "seed count of the look whose test decided; that test's own interval, at its "
             "nominal level (strict early), excludes 0 exactly when it decided. `corrected p` "
             "is the smallest familywise level at which the procedure would decide.", ""]
    for line in answer_lines(ans):
        lines.append(f"  {line.strip()}" if line.startswith(" ") else f"- {line}")
    lines.append("")
    rows = [{"arm": r.arm, "verdict": r.verdict, "n": r.n, "decided at": r.decided_at,
             "diff": r.diff, "%": r.pct, "95% low": r.ci[0], "95% high": r.ci[1],
             "decision interval": "-" if r.decided_at is None else
             f"[{r.decision_ci[0]:+.3f}, {r.decision_ci[1]:+.3f}] at {r.decision_level:.2g}",
             "corrected p": r.p_adj, "own seed SD": r.own_sd, "pooled SD": r.pooled_sd,
             "seeds lost": f"{r.lost} of {r.seeds_run}", "eval SE": r.eval_se,
             "eval pairing": "paired" if r.eval_paired else "unpaired",
             "same windows": "-" if r.same_windows is None else
             f"{r.same_windows.diff:+.3f} (ctx {r.same_windows.context})"}
            for r in ans.arms]
    import pandas as pd

    lines += [md_table(pd.DataFrame(rows), spec=".3g"), ""]
    lines += [f"Seed noise: each arm is tested on its own paired differences, its variance "
              f"moderated toward the SD pooled over the arms still undecided (over all arms at "
              f"the last look: {fmt(ans.pooled_sd, '.3g')} nats, {ans.pooled_df} degrees of "
              "freedom), so an arm much noisier than the others is judged on its own noise; "
              "`own seed SD` is the arm's own. `eval SE` is the error of the difference from "
              "the finite eval set alone (batch means over neighbouring windows): differences "
              "smaller than about twice it are not resolved by this eval set, however many "
              "seeds.", "",
              "At a verdict the estimate is biased away from zero (a test that stops on a "
              "large difference selects large estimates; Jennison and Turnbull 2000, ch. 8): "
              "in simulation it averages 1.5x the true difference when that is 1 SD of a "
              "paired difference, 1.1x at 2 SD and 1.02x at 3 SD (benchmarks/RESULTS.md "
              "section 14). The 95% interval holds; the point estimate of a barely decided arm "
              "overstates it.", ""]
    return lines


def statements(df, ans: Answer | None) -> list[str]:
    """Plain sentences the data supports, and flags where it does not."""
    out: list[str] = []
    equal, why = equal_budgets(df)
    if not equal and why and not (df.get("budget") == "iso_flops").any():
        out.append(why)
    done = df[df["status"].astype(str) == Status.COMPLETED]
    if "unigram_val_loss" in done and done["unigram_val_loss"].notna().any():
        gap = (done["unigram_val_loss"].astype(float) - done[METRIC].astype(float))
        out.append(f"Every completed trial is {gap.min():.2f} to {gap.max():.2f} nats below its "
                   "unigram reference (token frequencies of the training split on the same "
                   "eval tokens)." if (gap > 0).all() else
                   f"{int((gap <= 0).sum())} completed trial(s) did not beat the unigram "
                   "reference: they learned no more than token frequencies.")
    if ans is not None:
        se = [r.eval_se for r in ans.arms if math.isfinite(r.eval_se)]
        if se:
            out.append(f"Eval noise of the differences: {min(se):.4f} to {max(se):.4f} nats "
                       "(standard error from the eval windows, batch means); smaller "
                       "differences are not resolved by this eval set.")
    if "seq_len" in df and df["seq_len"].nunique() > 1:
        out.append("Arms with a shorter seq_len are scored with less context per token, which "
                   "raises their loss independently of what they learned.")
    epochs = df.groupby("ablation", observed=True)["epoch"].max().astype(float)
    if (epochs > 1).any():
        over = ", ".join(f"{a} {e:.2f}" for a, e in epochs[epochs > 1].items())
        out.append(f"More than one epoch over the corpus ({over}): later tokens repeat "
                   "earlier text.")
    if len(df) > 1:
        out.append("Throughput: trials ran concurrently and shared the machine's cores (or a "
                   "GPU), so tokens/s and MFU compare trials under load, not exclusive speed; "
                   "benchmarks/ measures exclusive throughput.")
    for status in (Status.DIVERGED, Status.ERROR, Status.EARLY_STOPPED, Status.STOPPED,
                   Status.RUNNING):
        n = int((df["status"].astype(str) == status).sum())
        if n:
            out.append(f"{n} trial(s) {status.value.replace('_', ' ')}: counted in the tables, "
                       "excluded from the means.")
    return out


def _grid_tables(df, summary, res: Results) -> list[str]:
    lines = ["## Final metrics per ablation (mean ± 95% CI across seeds, completed trials)", "",
             "`n` counts every trial; means are over `n_completed`. `unigram` is the loss of "
             "token frequencies on the same eval tokens; `val_loss_se` the eval noise of one "
             "run.", ""]
    view = summary.copy()
    for m, spec in (("val_loss", ".4f"), ("unigram_val_loss", ".4f"), ("val_loss_se", ".4f"),
                    ("val_acc", ".4f"), ("val_bpb", ".4f"), ("epoch", ".2f")):
        view[m] = [_pm(r, m, spec) for _, r in summary.iterrows()]
    view = view.rename(columns={"unigram_val_loss": "unigram", "epoch": "epochs"})
    lines += [md_table(view, ["ablation", "n", "n_completed", "n_diverged", "n_error",
                              "val_loss", "val_loss_se", "unigram", "val_acc", "val_bpb",
                              "epochs"]), ""]
    flagged = summary[summary["lost_seeds"] > 0]["ablation"].astype(str).tolist()
    if flagged:
        lines += [f"**Lost seeds** in {', '.join(flagged)}: their means are over fewer trials.",
                  ""]
    return lines + _equal_token_section(df, res) + [
        "## Throughput", "", "Trials ran concurrently on shared cores or GPU shares: tokens/s is "
        "under load; `benchmarks/` measures exclusive throughput. Probe compute (cooldown "
        "probes) is counted apart from training.", "",
        md_table(summary, ["ablation", "tokens_per_s_mean", "mfu_mean"], ".3g"), ""]


def _equal_token_section(df, res: Results) -> list[str]:
    equal, why = equal_budgets(df)
    lines = ["## Equal-token comparison", ""]
    probes = probes_frame(res.outcomes)  # exact runs of their budget only under wsd
    probes = probes[probes["trial_id"].isin(df["trial_id"]) & (probes["schedule"] == "wsd")]
    if len(probes):
        table = probes.groupby(["ablation", "budget_tokens"])["val_loss"].agg(
            ["mean", "std", "count"]).reset_index().rename(columns={"count": "n"})
        return lines + ["From cooldown probes: each row is the loss a wsd run of that budget "
                        "reaches with its learning rate decayed (branched from the stable "
                        "phase), so arms are compared at equal tokens without reading any run "
                        "mid-schedule.", "", md_table(table), ""]
    if equal:
        return lines + ["Every completed run ended at the same token budget (within one step), "
                        "so the final losses are the equal-token comparison, each at its fully "
                        "decayed learning rate.", ""]
    if (df.get("budget") == "iso_flops").any():
        return lines + ["Not applicable: this sweep gives every arm the baseline's training "
                        "FLOPs (`--iso-flops`), so token counts differ by design; compare on "
                        "compute.png (loss against FLOPs).", ""]
    return lines + [f"Omitted: {why} (Or use `--set schedule=wsd probe_tokens=...` for "
                    "decayed equal-token probes.)", ""]


def write_report(res: Results, exp: Experiment, out: Path, *, plots: bool = True) -> Path:
    """report.md (+ PNG plots) of an experiment into the local folder `out`."""
    out.mkdir(parents=True, exist_ok=True)
    df, history = res.trials, res.history
    lines = [f"# Ablation report: {exp.name}", ""]
    if df.empty:
        (out / "report.md").write_text("\n".join(lines + ["No trials found."]) + "\n")
        return out / "report.md"
    sweep = exp.read_json(SWEEP_FILE, default={}) or {}
    searched = list(sweep.get("searched", []))
    decisions = exp.read_json(DECISIONS_FILE) or {}
    ans = None if searched else answer(res, decisions, spec=sweep.get("spec"))
    lines += answer_section(ans) + lr_tuning_section(df, decisions, ans)
    seeded = seeding_trials(df)  # a --tune-lr grid's lr sweep has its own section
    summary = summarize(seeded)
    if not searched:
        lines += _grid_tables(seeded, summary, res)
    lines += _lr_sections(df, history)
    lines += domains_section(df, res.outcomes) + search_section(exp, df, searched)
    lines += status_section(df)
    lines += scaling_section(out)
    lines += ["## What the data supports", ""] + [f"- {s}" for s in statements(seeded, ans)] + [""]
    if plots:
        from .plots import make_plots

        made = make_plots(df, history, summary, out, searched, exp.read_json(
            IMPORTANCES_FILE, default={}) or {}, ans)
        if decisions.get("tune_lr"):
            from .lr_curves import fits
            from .plots import lr_curves_plot

            made.append(lr_curves_plot(df, fits(df), out))
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in made] + [""]
        if searched:
            from .plots import optuna_views

            views, skipped = optuna_views(exp, out)
            lines += ["Optuna's own views of the study:", ""] + [f"![{p}]({p})" for p in views]
            lines += [""] + [f"- {s}" for s in skipped] + [""]
    lines += samples_section(res.outcomes)
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


def _lr_sections(df, history) -> list[str]:
    lines: list[str] = []
    if lr_only_sweep(df):
        full = df[df["status"].astype(str).isin([Status.COMPLETED, Status.DIVERGED])]
        try:
            lines += [f"LR sensitivity (Wortsman et al. 2023) over {len(full)} full-budget "
                      f"trials (completed or diverged; early-stopped ones excluded), measured "
                      f"initial loss: {lr_sensitivity(df):.4f}", ""]
        except ValueError as exc:
            lines += [f"LR sensitivity: not computed ({exc}).", ""]
    if (df["status"].astype(str) == Status.EARLY_STOPPED).any():
        lines += ["## Early-stopping rung agreement (Spearman, finished trials)", "",
                  md_table(rung_agreement(history)), ""]
    return lines


def domains_section(df, outcomes: dict) -> list[str]:
    """Extra evaluation domains: each arm's mean loss per domain next to the domain's own
    unigram reference, how many documents the no-shared-text rule removed, and whether arms
    rank the same as on the main validation set (Spearman with a bootstrap interval)."""
    from .stats import rank_agreement

    cols = [c for c in df.columns if c.startswith("val_loss@") and not is_context_metric(c)]
    if not cols:
        return []
    done = df[df["status"].astype(str) == Status.COMPLETED]
    uni = [c for c in df.columns if c.startswith("unigram_val_loss@")]
    means = done.groupby("ablation", observed=True)[[METRIC, *cols, *uni]].mean()
    lines = ["## Evaluation domains (documents sharing no document and no 12-word passage "
             "with the training split nor the main validation split)", "",
             md_table(means.reset_index()), ""]
    facts = next((o.get("domains") for o in outcomes.values() if o.get("domains")), {}) or {}
    for c in cols:
        label = c.split("@", 1)[1]
        f = facts.get(label, {})
        if f:
            lines.append(f"- {label} ({f['corpus']}): {f['documents']} of {f['total']} documents "
                         f"scored; {f['dropped']} left out because they are, or share a 12-word "
                         "passage with, training documents"
                         + (f"; {f['in_validation']} because they are, or share one with, main "
                            "validation documents (the check would be the validation set "
                            "against itself)" if f.get("in_validation") else "") + ".")
        r = rank_agreement(df, outcomes, label)
        if math.isfinite(r["rho"]):
            verdict = "agrees" if r["low"] > 0 else "agreement not supported"
            lines.append(f"- ranking of {r['arms']} arms on {label} vs the main validation set: "
                         f"Spearman {r['rho']:.2f} (95% bootstrap interval {r['low']:.2f} to "
                         f"{r['high']:.2f} over {r['seeds']} runs' seeds and the eval windows, "
                         f"resampled once for every run that shares them): {verdict}.")
        else:
            lines.append(f"- ranking on {label}: {r['note']}.")
    return lines + [""]


def search_section(exp: Experiment, df, params: list[str], k: int = 5) -> list[str]:
    """A search's top-k completed trials with their searched parameters."""
    if not params:
        return []
    done = df[df["status"].astype(str) == Status.COMPLETED].sort_values(METRIC).head(k)
    lines = [f"## Search: top {len(done)} completed trials (full budget) of {len(df)}", "",
             md_table(done, ["trial_id", *params, METRIC, "val_loss_se", "tokens_seen"]), ""]
    h = exp.read_json(HOLDOUT_FILE)
    if h:
        lines += [f"Held-out check of the best trial ({h.get('trial_id')}): {METRIC} "
                  f"{h['select_val_loss']:.4f} on the selection windows, "
                  f"{h['holdout_val_loss']:.4f} ± {h['holdout_val_loss_se']:.4f} (SE) on "
                  f"{h['holdout_windows']} windows of other documents that selection never "
                  "saw.", ""] if "gap" in h else [f"Held-out check: skipped ({h.get('skipped')}).",
                                                  ""]
    data = exp.read_json(IMPORTANCES_FILE)
    if data:
        covers = data.get("covers") or f"over {data.get('n_trials')} full-budget trials"
        lines += [f"Importances ({data.get('evaluator')}, {covers}): "
                  + (", ".join(f"{a}={b:.3f}" for a, b in data.get("importances", {}).items())
                     or data.get("skipped", "-")), ""]
    return lines


def status_section(df) -> list[str]:
    counts = df["status"].astype(str).value_counts().rename_axis("status").reset_index()
    return ["## Trials by status", "", f"All {len(df)} trials, whatever became of them.", "",
            md_table(counts), ""]


def scaling_section(out: Path) -> list[str]:
    fit = out / "fit.json"
    if not fit.exists():
        return []
    f = json.loads(fit.read_text())
    return ["## Scaling fit", "", f.get("summary", ""), ""]


def samples_section(outcomes: dict) -> list[str]:
    if not any(o.get("samples") for o in outcomes.values()):
        return []
    lines = ["## Text samples", ""]
    for o in sorted(outcomes.values(), key=lambda o: (o.get("name", ""), o.get("seed", 0))):
        for s in o.get("samples", []):
            text = s["text"].replace("\n", " ")
            lines.append(f"- **{o.get('name')}** (seed {o.get('seed')}): `{text}`")
    return lines + [""]


# --- grid --tune-lr: every arm at its own best learning rate -----------------------------------

def lr_tuning_section(df, record: dict, ans: Answer | None) -> list[str]:
    """Empty unless the sweep tuned each arm's lr (decisions.json's `tune_lr`)."""
    tuning = (record or {}).get("tune_lr")
    if not tuning:
        return []
    found = fits(df)
    sweep = sweep_trials(df)
    counts = sweep["status"].astype(str).value_counts().to_dict()
    second = tuning.get("replicate_seed")
    lines = ["## Every arm at its own best learning rate", "",
             f"The lr sweep: {tuning['k']} learning rates per arm, evenly in log scale from "
             f"lr/{tuning['span']:g} to lr*{tuning['span']:g} around each arm's configured lr, "
             f"seed {tuning['seed']}, equal tokens"
             + (f", and a second seed ({second}) at the configured lr and the lowest and "
                "highest lrs that ran to the end" if second is not None else "")
             + f"; early stopping compares trials of one arm only ({tuning['stopping']}). "
             f"{len(sweep)} trials: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
             + ". The chosen lr of each arm then ran with seeds 0, 1, ... (runs independent of "
             "those that chose it).", "", md_table(_fit_table(df, found, tuning), spec=".4g"),
             ""]
    lines += [f"- {f.arm}: no interval: {f.refused}." for f in found.values() if f.refused]
    lines += [f"- {f.arm}: a bracket, not a parabola's optimum: {f.why_bracket}."
              for f in found.values() if f.kind == "bracket"]
    lines += ["", "`optimum lr` and its interval: a parabola in log(lr) weighted by the "
              "measured seed noise (`noise measured at`: lrs with 2 or more runs; "
              "log-interpolated between), reported only when it fits the points (lack-of-fit "
              "test) and its 95% interval (the hull of bootstrap intervals of the parabola, of "
              "the parabola through the best point and its neighbours, and of a cubic) lies "
              "inside the range. Otherwise `interval` is a bracket: the optimum lies between "
              "the nearest swept lrs that are measurably worse than the best (`cannot be told "
              "apart` lists the lrs in between; Bonferroni-corrected z tests on the measured "
              "noise). `interior` is the share of the parabola's refits whose optimum lies "
              "inside the range. `sensitivity` is Wortsman et al.'s: the mean over the swept "
              "lrs of the loss above the arm's best (diverged runs count as the initial loss; "
              "early-stopped ones are left out).", ""]
    if ans is not None:
        lines += ["The Answer above compares every arm at its own chosen lr.", ""]
        lines += changed_section(fixed_lr(df, tuning["centres"]), ans)
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
            "full-budget lrs": f"{len(f.lrs)}/{tuning['k']}",
            "noise measured at": f.noise or "-",
            "optimum lr": f.opt_lr, "interval": f.kind or "-",
            "lr 95% CI": _ci(f.opt_lr_ci, ".3g"),
            "cannot be told apart": ", ".join(f"{v:.3g}" for v in f.indistinct) or "-",
            "loss at optimum": f.opt_loss, "loss 95% CI": _ci(f.opt_loss_ci, ".4f"),
            "interior": f.interior, "chosen lr": tuning["chosen"].get(arm, f.chosen),
            "seeds at chosen lr": (f"{g.mean():.4f} ± {g.std(ddof=1):.4f} SD (n={len(g)})"
                                   if len(g) > 1 else fmt(g.mean() if len(g) else math.nan)),
            "sensitivity": _sensitivity(df, arm)})
    return pd.DataFrame(rows)


def _ci(ci: tuple[float, float], spec: str) -> str:
    if not any(math.isfinite(v) for v in ci):
        return "-"
    lo, hi = (f"{v:{spec}}" if math.isfinite(v) else "open" for v in ci)
    return f"[{lo}, {hi}]"


def _sensitivity(df, arm: str) -> float:
    g = sweep_trials(df)
    try:
        return lr_sensitivity(g[g["ablation"].astype(str) == arm])
    except ValueError:
        return math.nan


def changed_section(fixed: dict[str, FixedLr], ans: Answer) -> list[str]:
    """Each arm whose verdict at fixed lr differs from its verdict at its own best lr."""
    own = {r.arm: r for r in ans.arms}
    dof = next((f.dof for f in fixed.values()), 0)
    lines = ["### Conclusions that change at each arm's own best lr", "",
             "At fixed lr: each arm's runs at its configured lr minus the baseline's, paired by "
             "seed (the lr sweep's two seeds there), unadjusted 95% t interval from the pooled "
             f"SD of those paired differences ({dof} degrees of freedom: noise measured at the "
             "configured lrs); at its own best lr: the Answer above.", ""]
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
    size = f"{abs(f.diff):.3f} nats (± {f.half_width:.3f}, {f.n} paired seeds)"
    if f.verdict == "better":
        return f"better by {size}"
    if f.verdict == "worse":
        return f"worse by {size}"
    return f"{f.verdict}: {f.diff:+.3f} nats (± {fmt(f.half_width, '.3f')}, {f.n} paired seeds)"
