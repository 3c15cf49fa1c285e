"""The report's figures (PNG, headless Agg backend; matplotlib is imported only here)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..spec.names import METRIC, Status


def save(fig, path: Path) -> str:
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
    return save(fig, out / "curves.png")


def _forest(ans, out: Path) -> str:
    """Each arm's difference from the baseline with its 95% interval (none where there is one
    seed), around a line at zero: better arms to the left."""
    import matplotlib.pyplot as plt

    rows = [r for r in ans.arms if math.isfinite(r.diff)]
    fig, ax = plt.subplots(figsize=(7, 0.6 * len(rows) + 1.5))
    for i, r in enumerate(rows):
        color = {"better": "tab:green", "worse": "tab:red"}.get(r.verdict, "tab:gray")
        if r.n >= 2 and all(math.isfinite(c) for c in r.ci):
            ax.plot(r.ci, [i, i], color=color, linewidth=2)
        ax.plot([r.diff], [i], "o", color=color)
    ax.axvline(0.0, color="black", linewidth=1)
    ax.set_yticks(range(len(rows)), [f"{r.arm} ({r.verdict}, n={r.n})" for r in rows])
    ax.set_xlabel(f"{METRIC} minus baseline (nats; 95% repeated interval, every seed)")
    ax.invert_yaxis()
    return save(fig, out / "forest.png")


def _throughput(summary, out: Path) -> str:
    import matplotlib.pyplot as plt

    names = summary["ablation"].astype(str).tolist()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, m in zip(axes, ("tokens_per_s", "mfu")):
        ax.bar(names, summary[f"{m}_mean"].to_numpy(float))
        ax.set_title(f"{m} (trials shared the machine)")
        ax.tick_params(axis="x", rotation=45)
    return save(fig, out / "throughput.png")


def _param_scatter(df, params: list[str], out: Path) -> str:
    """Each searched (or varied) parameter against the final loss, by status."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(params), figsize=(5 * len(params), 4), squeeze=False)
    ok = df[df["status"].astype(str).isin([Status.COMPLETED, Status.EARLY_STOPPED])]
    for ax, p in zip(axes[0], params):
        for status, g in ok.groupby(ok["status"].astype(str)):
            ax.scatter(g[p], g[METRIC], label=status)
        if p == "lr":
            ax.set_xscale("log")
        ax.set_xlabel(p)
        ax.set_ylabel(f"final {METRIC}")
        ax.legend(fontsize=7)
    return save(fig, out / "params.png")


def _compute_plot(df, out: Path) -> str | None:
    """Final loss against training FLOPs and against tokens, Pareto front marked: a
    compute-fair view (a bigger model that needs more compute is not simply 'better')."""
    import matplotlib.pyplot as plt

    from .stats import pareto_front

    done = df[df["status"].astype(str) == Status.COMPLETED].dropna(subset=[METRIC])
    probe = done["probe_tokens_trained"].astype(float).fillna(0.0) \
        if "probe_tokens_trained" in done else 0.0
    # Training FLOPs, cooldown probes included (they are compute the sweep spent).
    flops = done["flops_per_token"].astype(float) * (done["tokens_seen"].astype(float) + probe)
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
    return save(fig, out / "compute.png")


def make_plots(df, history, summary, out: Path, searched: list[str], importances: dict,
               ans=None) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = [_curves(history, out)]
    if ans is not None and any(math.isfinite(r.diff) for r in ans.arms):
        made.append(_forest(ans, out))
    if not summary.empty and not searched:
        made.append(_throughput(summary, out))
    made += [p for p in [_compute_plot(df, out)] if p]
    params = searched or (["lr"] if df["lr"].nunique() >= 3 else [])
    if params:
        made.append(_param_scatter(df, params, out))
    imp = importances.get("importances", {})
    if imp:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.barh(list(imp), list(imp.values()))
        ax.set_title("Optuna parameter importance (full-budget trials)")
        made.append(save(fig, out / "importances.png"))
    return made


OPTUNA_VIEWS = ("optimization_history", "intermediate_values", "parallel_coordinate", "slice",
                "param_importances")


def optuna_views(exp, out: Path) -> tuple[list[str], list[str]]:
    """Optuna's own matplotlib views of a search's study (read from the experiment's
    `study.db`, local or remote): (files written, one line per view that could not be drawn)."""
    import tempfile
    import warnings

    import optuna
    from optuna.visualization import matplotlib as views

    from ..spec.names import STUDY_FILE

    if not exp.exists(STUDY_FILE):
        return [], [f"Optuna views: no {STUDY_FILE} in the experiment (a study in an external "
                    "database: open it with optuna-dashboard)"]
    made, skipped = [], []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        db = Path(tmp) / STUDY_FILE
        db.write_bytes(exp.read_bytes(STUDY_FILE))
        storage = f"sqlite:///{db}"
        study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0],
                                  storage=storage)
        for view in OPTUNA_VIEWS:
            fig, why = _optuna_view(getattr(views, f"plot_{view}"), study)
            if why:  # e.g. importances "will be equal" with too few trials: not a finding
                skipped.append(f"Optuna {view}: not drawn ({why})")
            else:
                made.append(save(fig, out / f"optuna_{view}.png"))
    return made, skipped


def _optuna_view(plot, study):
    """(figure, None), or (None, why) when Optuna raised or warned that the view means nothing."""
    import warnings

    import matplotlib.pyplot as plt

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            fig = np.asarray(plot(study)).flat[0].figure
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            return None, str(exc)
    if caught:
        plt.close(fig)
        return None, str(caught[0].message)
    return fig, None


def lr_curves_plot(df, found: dict, out: Path) -> str:
    """`grid --tune-lr`: final loss against lr for every arm on one log-lr axis (the lr sweep's
    full-budget points, the fitted parabola, and the seeds at the chosen lr: mean ± SD)."""
    import matplotlib.pyplot as plt

    from .lr_curves import seeding_trials

    seeds = seeding_trials(df)
    seeds = seeds[seeds["status"].astype(str) == Status.COMPLETED]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (arm, f) in enumerate(found.items()):
        color = f"C{i % 10}"
        ax.plot(f.lrs, f.losses, "o", color=color, label=arm)
        if f.coef:
            x = np.linspace(math.log(min(f.lrs)), math.log(max(f.lrs)), 100)
            ax.plot(np.exp(x), np.polyval(f.coef, x), "-", color=color, alpha=0.6)
        g = seeds[seeds["ablation"].astype(str) == arm][METRIC].astype(float)
        if len(g) > 1:
            ax.errorbar([f.chosen], [g.mean()], yerr=[g.std(ddof=1)], fmt="s", color=color,
                        capsize=4, markerfacecolor="none")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel(f"final {METRIC}")
    ax.set_title("Each arm's lr sweep (dots, fit) and its seeds at the chosen lr (mean ± SD)")
    ax.legend(fontsize=7)
    return save(fig, out / "lr_curves.png")
