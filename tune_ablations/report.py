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
from typing import Any

from .analysis import at_tokens, compare_to_baseline, lr_sensitivity, rung_agreement, summarize
from .config import METRIC, build_ablation, to_flat_dict
from .results import load_history, load_outcomes, load_results


def _fmt(v: Any, spec: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:{spec}}"
    return str(v)


def md_table(frame, columns: list[str] | None = None, spec: str = ".4g") -> str:
    cols = columns or list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_fmt(row.get(c), spec) for c in cols) + " |")
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
    from .config import field_names

    varying = {c for c in field_names() if c in df and df[c].astype(str).nunique() > 1}
    return "lr" in varying and varying <= {"lr", "seed", "name"}


def statements(df, history) -> list[str]:
    """Plain sentences the data supports, and flags where it does not."""
    out: list[str] = []
    few: list[str] = []
    done = df[df["status"].astype(str) == "completed"]
    if "baseline" in set(df["ablation"].dropna()):
        base_tokens = done.loc[done["ablation"] == "baseline", "tokens_seen"].astype(float).mean()
        comp = compare_to_baseline(df).set_index("ablation")
        for name, g in done.groupby("ablation", observed=True):
            if name == "baseline" or not base_tokens:
                continue
            ratio = g["tokens_seen"].astype(float).mean() / base_tokens
            if abs(ratio - 1) > 0.02:
                out.append(f"{name} saw {ratio:.1f}x the tokens of baseline: its final loss "
                           "mixes the ablation with data exposure (see loss at equal tokens).")
            if name in comp.index:
                c = comp.loc[name]
                if c["n"] < 2 or c["n_baseline"] < 2:
                    few.append(name)
                elif c["exceeds_noise"]:
                    word = "lower" if c["diff"] < 0 else "higher"
                    out.append(f"{name}: {METRIC} {word} than baseline by {abs(c['diff']):.4f} "
                               f"(95% CI {c['ci_low']:+.4f} to {c['ci_high']:+.4f}), beyond "
                               "seed noise.")
                else:
                    out.append(f"{name}: difference from baseline {c['diff']:+.4f} is within "
                               f"seed noise (95% CI {c['ci_low']:+.4f} to {c['ci_high']:+.4f}).")
    if few:
        out.append(f"n=1 (or baseline n=1) for {', '.join(few)}: no confidence interval, so no "
                   "difference can be told from seed noise; run --seeds 3 before claiming one.")
    epochs = df["epoch"].astype(float)
    if (epochs > 1).any():
        out.append(f"{int((epochs > 1).sum())} trial(s) trained for more than one epoch "
                   f"(max {epochs.max():.2f}): later tokens repeat earlier text.")
    for status in ("diverged", "error", "early_stopped", "running"):
        n = int((df["status"].astype(str) == status).sum())
        if n:
            out.append(f"{n} trial(s) {status.replace('_', ' ')}: excluded from the means.")
    return out


def _plots(df, history, summary, out: Path, exp: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for (trial, g), color in zip(history.groupby("trial_id"), plt.cm.tab10.colors * 20):
        g = g[~g["diverged"].fillna(False).astype(bool)]
        label = f"{g['ablation'].iloc[0]}/s{g['seed'].iloc[0]}" if len(g) else trial
        for ax, (x, y) in zip(axes.flat, [("step", "val_loss"), ("tokens_seen", "val_loss"),
                                          ("step", "train_loss"), ("tokens_seen", "train_loss")]):
            ax.plot(g[x], g[y], marker=".", color=color, label=label)
            ax.set_xlabel(x)
            ax.set_ylabel(y)
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "curves.png", dpi=100)
    plt.close(fig)
    made.append("curves.png")
    if not summary.empty:
        names = summary["ablation"].astype(str).tolist()
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        for ax, m in zip(axes, ("val_loss", "val_acc", "val_top5")):
            mean = summary[f"{m}_mean"].to_numpy(float)
            err = (mean - summary[f"{m}_ci_low"].to_numpy(float))
            ax.bar(names, mean, yerr=[0 if math.isnan(e) else e for e in err], capsize=4)
            ax.set_title(f"final {m} (95% CI)")
            ax.tick_params(axis="x", rotation=45)
        fig.tight_layout()
        fig.savefig(out / "final_metrics.png", dpi=100)
        plt.close(fig)
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, m in zip(axes, ("tokens_per_s", "mfu")):
            ax.bar(names, summary[f"{m}_mean"].to_numpy(float))
            ax.set_title(m)
            ax.tick_params(axis="x", rotation=45)
        fig.tight_layout()
        fig.savefig(out / "throughput.png", dpi=100)
        plt.close(fig)
        made += ["final_metrics.png", "throughput.png"]
    if df["lr"].nunique() >= 3:
        fig, ax = plt.subplots(figsize=(6, 4))
        ok = df[df["status"].astype(str).isin(["completed", "early_stopped"])]
        for status, g in ok.groupby(ok["status"].astype(str)):
            ax.scatter(g["lr"], g[METRIC], label=status)
        ax.set_xscale("log")
        ax.set_xlabel("lr")
        ax.set_ylabel(f"final {METRIC}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "lr_sweep.png", dpi=100)
        plt.close(fig)
        made.append("lr_sweep.png")
    importances = exp / "importances.json"
    if importances.exists():
        imp = json.loads(importances.read_text())
        if imp:
            fig, ax = plt.subplots(figsize=(6, 3))
            ax.barh(list(imp), list(imp.values()))
            ax.set_title("Optuna parameter importance")
            fig.tight_layout()
            fig.savefig(out / "importances.png", dpi=100)
            plt.close(fig)
            made.append("importances.png")
    return made


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
    lines += ["## Final metrics per ablation (mean ± 95% CI across seeds, completed trials)", ""]
    view = summary.copy()
    for m, spec in (("val_loss", ".4f"), ("val_ppl", ".2f"), ("val_acc", ".4f"),
                    ("val_top5", ".4f"), ("val_bpb", ".4f")):
        view[m] = [_pm(r, m, spec) for _, r in summary.iterrows()]
    lines += [md_table(view, ["ablation", "n", "val_loss", "val_ppl", "val_acc", "val_top5",
                              "val_bpb"]), ""]
    common = df.loc[df["status"].astype(str) == "completed", "tokens_seen"].astype(float).min()
    if common and not math.isnan(common):
        eq = at_tokens(history, common)
        eq_sum = eq.groupby("ablation")[METRIC].agg(["mean", "count"]).reset_index()
        tok = df.groupby("ablation", observed=True)["tokens_seen"].max().reset_index()
        eq_sum = eq_sum.merge(tok, on="ablation")
        lines += [f"## Tokens seen and {METRIC} at equal tokens ({int(common):,})", "",
                  md_table(eq_sum.rename(columns={"mean": f"{METRIC}_at_tokens",
                                                  "count": "n"})), ""]
    lines += ["## Throughput", "", md_table(summary, ["ablation", "tokens_per_s_mean",
                                                       "mfu_mean"], ".3g"), ""]
    counts = df["status"].astype(str).value_counts().rename_axis("status").reset_index()
    lines += ["## Status", "", md_table(counts), ""]
    comp = compare_to_baseline(df)
    if len(comp):
        lines += [f"## Against baseline ({METRIC}, Welch 95% CI)", "", md_table(comp), ""]
    if lr_only_sweep(df):
        try:
            lines += [f"LR sensitivity (Wortsman et al. 2023): {lr_sensitivity(df):.4f}", ""]
        except ValueError:
            pass
    if (df["status"].astype(str) == "early_stopped").any():
        ra = rung_agreement(history)
        lines += ["## Early-stopping rung agreement (Spearman, finished trials)", "",
                  md_table(ra), ""]
    lines += ["## What the data supports", ""] + [f"- {s}" for s in statements(df, history)]
    lines.append("")
    if plots:
        made = _plots(df, history, summary, out, exp)
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in made] + [""]
    outcomes = load_outcomes(exp)
    if any(o.get("samples") for o in outcomes.values()):
        lines += ["## Text samples", ""]
        for o in sorted(outcomes.values(), key=lambda o: (o.get("name", ""), o.get("seed", 0))):
            for s in o.get("samples", []):
                text = s["text"].replace("\n", " ")
                lines.append(f"- **{o.get('name')}** (seed {o.get('seed')}): `{text}`")
        lines.append("")
    (out / "report.md").write_text("\n".join(lines))
    return out / "report.md"


def make_synthetic_experiment(root: Path) -> Path:
    """A hand-made experiment folder in the real layout (for --smoke-test and tests): baseline
    and large_batch with 2 seeds, high_lr diverged, one errored and one still running trial."""
    exp = root / "synthetic"
    specs = [("baseline", 0, "completed", 1.0), ("baseline", 1, "completed", 1.0),
             ("large_batch", 0, "completed", 2.0), ("large_batch", 1, "completed", 2.0),
             ("high_lr", 0, "diverged", 1.0), ("low_lr", 0, "error", 1.0),
             ("short_seq", 0, "running", 1.0)]
    for i, (name, seed, status, scale) in enumerate(specs):
        cfg = build_ablation(name, "cpu", seed=seed)
        trial = exp / f"run_trial_syn_{i:05d}"
        trial.mkdir(parents=True, exist_ok=True)
        tid = f"syn_{i:05d}"
        (trial / "run.json").write_text(json.dumps(
            {"trial_id": tid, "ablation": name, "seed": seed, "config": to_flat_dict(cfg),
             "data": {"train_tokens": 500000, "key": "synthetic"}}))
        lines = []
        n_evals = {"running": 2, "error": 1}.get(status, 4)
        for k in range(1, n_evals + 1):
            tokens = int(50 * k * cfg.tokens_per_step)
            loss = 7.5 / (1 + 0.4 * k * scale) + 3 + 0.01 * seed
            diverged = status == "diverged" and k == n_evals
            lines.append(json.dumps({
                "trial_id": tid, "step": 50 * k, "tokens_seen": tokens, "epoch": tokens / 5e5,
                "lr": cfg.optim.lr, "train_loss": loss + 0.1, "grad_norm": 0.5,
                "val_loss": 100.0 if diverged else loss, "val_ppl": math.exp(min(loss, 50)),
                "val_bpb": loss / 2, "val_acc": 0.1 * k, "val_top5": 0.2 * k,
                "val_confidence": 0.1, "val_entropy": 4.0, "tokens_per_s": 3000.0 / scale,
                "mfu": 0.3, "train_time_s": 10.0 * k, "eval_time_s": 0.5 * k,
                "diverged": diverged, "status": status}))
        (trial / "result.json").write_text("\n".join(lines) + "\n")
        if status in ("completed", "diverged"):
            (trial / "outcome.json").write_text(json.dumps(
                {"trial_id": tid, "name": name, "seed": seed, "status": status,
                 "samples": [{"prompt": "The", "text": f"The {name} sample"}],
                 "params": 1000, "non_embedding_params": 800}))
        if status == "error":
            (trial / "error.txt").write_text("RuntimeError: CUDA out of memory (simulated)\n")
    return exp
