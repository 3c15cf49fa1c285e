"""The report folder: `report.md` with tables, plain statements and text samples, plus PNG plots.

Design choices:
- Matplotlib with the headless Agg backend, imported only here.
- Statements are generated from the numbers and say where the data does not support a claim
  (unequal token counts, differences within seed noise, n=1).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from .config import HOLDOUT_FILE, IMPORTANCES_FILE, METRIC
from .markdown import _fmt, _pm, md_table
from .results import load_history, load_outcomes, load_probes, load_results
from .stats import compare_to_baseline, equal_budgets, lr_sensitivity, rung_agreement, summarize


def lr_only_sweep(df) -> bool:
    """True when the learning rate is the only config field that varies (besides the seed and
    the label): then LR sensitivity means what Wortsman et al. meant."""
    from .config import field_names

    varying = {c for c in field_names() if c in df and df[c].astype(str).nunique() > 1}
    return "lr" in varying and varying <= {"lr", "seed", "name"}


def _compare_statements(df) -> list[str]:
    out: list[str] = []
    comp = compare_to_baseline(df)
    few = []
    for _, c in comp.iterrows():
        name = c["ablation"]
        if c["lost_seeds"]:
            out.append(f"{name}: {c['lost_seeds']} of {c['n']} trial(s) diverged or errored; "
                       "its mean is over the survivors only.")
        if c["test"] == "-":
            few.append(name)
        elif c["exceeds_noise"]:
            word = "lower" if c["diff"] < 0 else "higher"
            out.append(f"{name}: {METRIC} {word} than baseline by {abs(c['diff']):.4f} "
                       f"({c['test']}, n={c['n_pairs'] or c['n_completed']}, uncorrected 95% CI "
                       f"{c['ci_low']:+.4f} to {c['ci_high']:+.4f}, Holm p={c['p_holm']:.3g}): "
                       "beyond seed noise.")
        else:
            out.append(f"{name}: difference from baseline {c['diff']:+.4f} is within seed "
                       f"noise ({c['test']}, uncorrected 95% CI {c['ci_low']:+.4f} to "
                       f"{c['ci_high']:+.4f}, "
                       f"Holm p={c['p_holm']:.3g}).")
    if few:
        out.append(f"fewer than 2 seeds for {', '.join(few)} (or the baseline): no test, so no "
                   "difference can be told from seed noise; run --seeds 3 before claiming one.")
    return out


def statements(df, history) -> list[str]:
    """Plain sentences the data supports, and flags where it does not."""
    out: list[str] = []
    if "baseline" in set(df["ablation"].dropna()):
        out += _compare_statements(df)
    equal, why = equal_budgets(df)
    if not equal and why:
        out.append(why)
    done = df[df["status"].astype(str) == "completed"]
    if "unigram_val_loss" in done and done["unigram_val_loss"].notna().any():
        gap = (done["unigram_val_loss"].astype(float) - done[METRIC].astype(float))
        out.append(f"Every completed trial is {gap.min():.2f} to {gap.max():.2f} nats below its "
                   "unigram reference (token frequencies of the training split on the same "
                   "eval tokens)." if (gap > 0).all() else
                   f"{int((gap <= 0).sum())} completed trial(s) did not beat the unigram "
                   "reference: they learned no more than token frequencies.")
    if "val_loss_se" in done and done["val_loss_se"].notna().any():
        out.append(f"Eval noise: the standard error of {METRIC} across eval windows is "
                   f"{done['val_loss_se'].astype(float).median():.4f} nats (median); smaller "
                   "differences are not resolved by this eval set.")
    if "seq_len" in df and df["seq_len"].nunique() > 1:
        out.append("Arms with a shorter seq_len are scored with less context per token, which "
                   "raises their loss independently of what they learned.")
    epochs = df.groupby("ablation", observed=True)["epoch"].max().astype(float)
    if (epochs > 1).any():
        over = ", ".join(f"{a} {e:.2f}" for a, e in epochs[epochs > 1].items())
        out.append(f"More than one epoch over the corpus ({over}): later tokens repeat "
                   "earlier text.")
    if "cpus_per_trial" in df.attrs or len(df) > 1:
        out.append("Throughput: trials ran concurrently and shared the machine's cores (or a "
                   "GPU), so tokens/s and MFU compare trials under load, not exclusive speed; "
                   "benchmarks/ measures exclusive throughput.")
    for status in ("diverged", "error", "early_stopped", "running"):
        n = int((df["status"].astype(str) == status).sum())
        if n:
            out.append(f"{n} trial(s) {status.replace('_', ' ')}: counted in the tables, "
                       "excluded from the means.")
    return out


def _save(fig, path: Path) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


def _curves(history, out: Path) -> str:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for (trial, g), color in zip(history.groupby("trial_id"), plt.cm.tab10.colors * 20):
        g = g[~g["diverged"].fillna(False).astype(bool)]
        label = f"{g['ablation'].iloc[0]}/s{g['seed'].iloc[0]}" if len(g) else trial
        for ax, (x, y) in zip(axes.flat, [("step", "val_loss"), ("tokens_seen", "val_loss"),
                                          ("step", "train_loss"), ("tokens_seen", "train_loss")]):
            ax.plot(g[x], g[y], marker=".", color=color, label=label)
            ax.set_xlabel(x)
            ax.set_ylabel(y)
    if "unigram_val_loss" in history and history["unigram_val_loss"].notna().any():
        uni = float(history["unigram_val_loss"].median())
        for ax in axes[0]:  # the floor every val_loss must beat to mean anything
            ax.axhline(uni, color="black", linestyle="--", linewidth=1,
                       label=f"unigram reference {uni:.3f}")
    axes[0, 0].legend(fontsize=7)
    return _save(fig, out / "curves.png")


def _bars(summary, out: Path) -> list[str]:
    import matplotlib.pyplot as plt

    names = summary["ablation"].astype(str).tolist()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, m in zip(axes, ("val_loss", "val_acc", "val_top5")):
        mean = summary[f"{m}_mean"].to_numpy(float)
        err = (mean - summary[f"{m}_ci_low"].to_numpy(float))
        ax.bar(names, mean, yerr=[0 if math.isnan(e) else e for e in err], capsize=4)
        ax.set_title(f"final {m} (95% CI)")
        if m == "val_loss" and "unigram_val_loss_mean" in summary:
            ax.axhline(float(summary["unigram_val_loss_mean"].median()), color="black",
                       linestyle="--", linewidth=1, label="unigram reference")
            ax.legend(fontsize=7)
        ax.tick_params(axis="x", rotation=45)
    made = [_save(fig, out / "final_metrics.png")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, m in zip(axes, ("tokens_per_s", "mfu")):
        ax.bar(names, summary[f"{m}_mean"].to_numpy(float))
        ax.set_title(f"{m} (trials shared the machine)")
        ax.tick_params(axis="x", rotation=45)
    return made + [_save(fig, out / "throughput.png")]


def _param_scatter(df, params: list[str], out: Path) -> str:
    """Each searched (or varied) parameter against the final loss, by status."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(params), figsize=(5 * len(params), 4), squeeze=False)
    ok = df[df["status"].astype(str).isin(["completed", "early_stopped"])]
    for ax, p in zip(axes[0], params):
        for status, g in ok.groupby(ok["status"].astype(str)):
            ax.scatter(g[p], g[METRIC], label=status)
        if p == "lr":
            ax.set_xscale("log")
        ax.set_xlabel(p)
        ax.set_ylabel(f"final {METRIC}")
        ax.legend(fontsize=7)
    return _save(fig, out / "params.png")


def _compute_plot(df, out: Path) -> str | None:
    """Final loss against training FLOPs and against tokens, Pareto front marked: a
    compute-fair view (a bigger model that needs more compute is not simply 'better')."""
    import matplotlib.pyplot as plt

    from .stats import pareto_front

    done = df[df["status"].astype(str) == "completed"].dropna(subset=[METRIC])
    flops = done["flops_per_token"].astype(float) * done["tokens_seen"].astype(float)
    keep = (flops > 0).to_numpy() & np.isfinite(flops.to_numpy())
    done, flops = done[keep], flops[keep]
    if done.empty:  # no FLOP counts recorded (e.g. a hand-made experiment)
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, x, label in ((axes[0], flops, "training FLOPs"),
                         (axes[1], done["tokens_seen"].astype(float), "tokens")):
        y = done[METRIC].astype(float).to_numpy()
        for name, g in done.assign(_x=x.to_numpy()).groupby("ablation", observed=True):
            ax.scatter(g["_x"], g[METRIC], label=str(name))
        front = pareto_front(x.to_numpy(), y)
        ax.plot(x.to_numpy()[front], y[front], "k--", linewidth=1, label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(f"final {METRIC}")
    axes[0].legend(fontsize=7)
    return _save(fig, out / "compute.png")


def _plots(df, history, summary, out: Path, exp: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = [_curves(history, out)]
    if not summary.empty:
        made += _bars(summary, out)
    made += [p for p in [_compute_plot(df, out)] if p]
    params = _searched(exp) or (["lr"] if df["lr"].nunique() >= 3 else [])
    if params:
        made.append(_param_scatter(df, params, out))
    importances = exp / IMPORTANCES_FILE
    imp = json.loads(importances.read_text()).get("importances", {}) \
        if importances.exists() else {}
    if imp:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.barh(list(imp), list(imp.values()))
        ax.set_title("Optuna parameter importance (full-budget trials)")
        made.append(_save(fig, out / "importances.png"))
    return made


def _searched(exp: Path) -> list[str]:
    from .config import SPACE_FILE

    if not (exp / SPACE_FILE).exists():
        return []
    from .search_space import load_space

    return list(load_space(exp / SPACE_FILE).params)


def _tables(df, summary, exp: Path) -> list[str]:
    lines = ["## Final metrics per ablation (mean ± 95% CI across seeds, completed trials)", "",
             "`n` counts every trial; means are over `n_completed`. `unigram` is the loss of "
             "token frequencies on the same eval tokens; `val_loss_se` the eval noise.", ""]
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
    equal, why = equal_budgets(df)
    lines += ["## Equal-token comparison", ""]
    probes = load_probes(exp)
    if len(probes):
        table = probes.groupby(["ablation", "budget_tokens"])["val_loss"].agg(
            ["mean", "std", "count"]).reset_index().rename(columns={"count": "n"})
        lines += ["From cooldown probes: each row is the loss a wsd run of that budget reaches "
                  "with its learning rate decayed (branched from the stable phase), so arms "
                  "are compared at equal tokens without reading any run mid-schedule.", "",
                  md_table(table), ""]
    elif equal:
        lines += ["Every completed run ended at the same token budget (within one step), so "
                  "the final losses above are the equal-token comparison, each at its fully "
                  "decayed learning rate.", ""]
    else:
        lines += [f"Omitted: {why} (Or use `--set schedule=wsd probe_tokens=...` for "
                  "decayed equal-token probes.)", ""]
    lines += ["## Throughput", "", "Trials ran concurrently on shared cores or GPU shares: "
              "tokens/s is under load; `benchmarks/` measures exclusive throughput.", "",
              md_table(summary, ["ablation", "tokens_per_s_mean", "mfu_mean"], ".3g"), ""]
    counts = df["status"].astype(str).value_counts().rename_axis("status").reset_index()
    return lines + ["## Status", "", md_table(counts), ""]


def write_report(exp: str | Path, out: str | Path, *, plots: bool = True) -> Path:
    """report.md (+ PNG plots) for the experiment folder `exp`; returns the report's path."""
    exp, out = Path(exp), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df, history = load_results(exp), load_history(exp)
    lines = [f"# Ablation report: {exp.name}", ""]
    if df.empty:
        (out / "report.md").write_text("\n".join(lines + ["No trials found."]) + "\n")
        return out / "report.md"
    summary = summarize(df)
    lines += _tables(df, summary, exp)
    comp = compare_to_baseline(df)
    if len(comp):
        lines += [f"## Against baseline ({METRIC}: paired t over shared seeds, else Welch; "
                  "Holm-corrected across arms; 95% CI of the difference)", "",
                  md_table(comp), ""]
    if lr_only_sweep(df):
        try:
            lines += [f"LR sensitivity (Wortsman et al. 2023, full-budget runs, measured "
                      f"initial loss): {lr_sensitivity(df):.4f}", ""]
        except ValueError as exc:
            lines += [f"LR sensitivity: not computed ({exc}).", ""]
    if (df["status"].astype(str) == "early_stopped").any():
        ra = rung_agreement(history)
        lines += ["## Early-stopping rung agreement (Spearman, finished trials)", "",
                  md_table(ra), ""]
    lines += domains_section(df)
    lines += search_section(exp, df)
    fit = out / "fit.json"
    if fit.exists():
        f = json.loads(fit.read_text())
        lines += ["## Scaling fit", "", f"L(C) = {f['E']:.3f} + A·C^-α over {f['n']} completed "
                  f"runs: α = {f['alpha']:.3f} (95% bootstrap CI {f['alpha_ci95'][0]:.3f} to "
                  f"{f['alpha_ci95'][1]:.3f}); predicted loss at {f['extrapolate']:g}x the "
                  f"largest compute: {f['predicted_loss']:.3f} (95% CI "
                  f"{f['predicted_loss_ci95'][0]:.3f} to {f['predicted_loss_ci95'][1]:.3f})."
                  + (" E sits at its bound 0: the runs span too little compute to separate the "
                     "irreducible loss from the power law, so α is a lower bound on the "
                     "curvature and the extrapolation is loose." if f.get("E_at_bound") else ""),
                  ""]
    lines += ["## What the data supports", ""] + [f"- {s}" for s in statements(df, history)]
    lines.append("")
    if plots:
        made = _plots(df, history, summary, out, exp)
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in made] + [""]
    lines += _samples(exp)
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


def domains_section(df) -> list[str]:
    """Extra evaluation domains: each arm's mean loss per domain, and whether the ranking of
    arms agrees with the main validation set (Spearman rank correlation of arm means)."""
    cols = [c for c in df.columns if c.startswith("val_loss@")]
    if not cols:
        return []
    done = df[df["status"].astype(str) == "completed"]
    means = done.groupby("ablation", observed=True)[[METRIC, *cols]].mean()
    lines = ["## Evaluation domains (held-out text of other sources)", "",
             md_table(means.reset_index()), ""]
    for c in cols:
        rho = means[METRIC].rank().corr(means[c].rank()) if len(means) >= 3 else math.nan
        verdict = "agrees" if rho >= 0.8 else "does not clearly agree" if rho == rho else \
            "needs 3 or more arms"
        lines.append(f"- ranking of arms on {c.split('@', 1)[1]} vs the main validation set: "
                     f"Spearman {_fmt(rho, '.2f')} over {len(means)} arms ({verdict}).")
    return lines + [""]


def search_section(exp: Path, df, k: int = 5) -> list[str]:
    """A search's top-k completed trials with their searched parameters (a search's trials
    differ in their parameters, so a mean per ablation would average different configs)."""
    params = _searched(exp)
    if not params:
        return []
    done = df[df["status"].astype(str) == "completed"].sort_values(METRIC).head(k)
    lines = [f"## Search: top {len(done)} completed trials (full budget)", "",
             md_table(done, ["trial_id", *params, METRIC, "val_loss_se", "tokens_seen"]), ""]
    hold = exp / HOLDOUT_FILE
    if hold.exists():
        h = json.loads(hold.read_text())
        lines += [f"Held-out check of the best trial ({h.get('trial_id')}): {METRIC} "
                  f"{h['select_val_loss']:.4f} on the selection windows, "
                  f"{h['holdout_val_loss']:.4f} ± {h['holdout_val_loss_se']:.4f} (SE) on "
                  f"{h['holdout_windows']} held-out windows that selection never saw.", ""] \
            if "gap" in h else [f"Held-out check: skipped ({h.get('skipped')}).", ""]
    imp = exp / IMPORTANCES_FILE
    if imp.exists():
        data = json.loads(imp.read_text())
        lines += [f"Importances ({data.get('evaluator')}, {data.get('n_trials')} full-budget "
                  f"trials): " + (", ".join(f"{a}={b:.3f}" for a, b in
                                            data.get("importances", {}).items())
                                  or data.get("skipped", "-")), ""]
    return lines


def _samples(exp: Path) -> list[str]:
    outcomes = load_outcomes(exp)
    if not any(o.get("samples") for o in outcomes.values()):
        return []
    lines = ["## Text samples", ""]
    for o in sorted(outcomes.values(), key=lambda o: (o.get("name", ""), o.get("seed", 0))):
        for s in o.get("samples", []):
            text = s["text"].replace("\n", " ")
            lines.append(f"- **{o.get('name')}** (seed {o.get('seed')}): `{text}`")
    return lines + [""]
