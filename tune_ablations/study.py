"""After a search: the Optuna study rebuilt from the results with honest trial states, parameter
importances from full-budget trials only, and `best.toml`.

Design choices:
- The study is rebuilt from the results folder (not Ray's searcher state): ASHA-stopped trials
  are PRUNED with their intermediate values keyed by tokens seen, diverged and errored trials
  FAIL, completed ones COMPLETE with their final loss; each carries user attributes (ablation,
  status, tokens, trial folder). `optuna-dashboard sqlite:///.../study.db` opens it.
- Importances use COMPLETE trials only (all trained the full budget), need at least
  `MIN_IMPORTANCE_TRIALS`, and name their evaluator (PED-ANOVA, which needs no scikit-learn),
  since Optuna's default changed across major versions.
- `best.toml` keeps the spec unresolved: `iso_tokens`/`token_budget` and derived widths as
  selectors; under [config] the searched keys and what the user fixed (the space's [fixed],
  `--set`, `--data`), never the resolved budget or the evaluation cadence the search derived.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .config import (
    BEST_FILE,
    HOLDOUT_FILE,
    IMPORTANCES_FILE,
    METRIC,
    MODE,
    STUDY_FILE,
    TIME_ATTR,
)
from .results import load_history
from .search_space import SearchSpace

MIN_IMPORTANCE_TRIALS = 8
_SELECTORS = ("iso_tokens", "token_budget", "head_dim", "ffn_mult")


def _distribution(p):
    import optuna.distributions as d

    if p.distribution == "choice":
        return d.CategoricalDistribution(list(p.values))
    if p.distribution == "int":
        return d.IntDistribution(int(p.low), int(p.high), log=p.log)
    return d.FloatDistribution(float(p.low), float(p.high), log=p.distribution == "loguniform")


def frozen_trials(df, history, space: SearchSpace) -> list:
    """One Optuna FrozenTrial per results row, with the state its status means."""
    import optuna
    from optuna.trial import TrialState

    states = {"completed": TrialState.COMPLETE, "early_stopped": TrialState.PRUNED,
              "stopped": TrialState.PRUNED, "diverged": TrialState.FAIL,
              "error": TrialState.FAIL}
    dists = {k: _distribution(p) for k, p in space.params.items()}
    out = []
    for _, row in df.iterrows():
        status = str(row["status"])
        if status not in states or any(row.get(k) is None for k in dists):
            continue
        h = history[history["trial_id"] == row["trial_id"]].dropna(subset=[METRIC])
        h = h[~h["diverged"].fillna(False).astype(bool)]
        state = states[status]
        value = float(row[METRIC]) if state == TrialState.COMPLETE else None
        if value is not None and not math.isfinite(value):
            state, value = TrialState.FAIL, None
        params = {k: (row[k].item() if hasattr(row[k], "item") else row[k]) for k in dists}
        out.append(optuna.trial.create_trial(
            state=state, value=value, params=params, distributions=dists,
            intermediate_values={int(t): float(v) for t, v in zip(h[TIME_ATTR], h[METRIC])},
            user_attrs={"ablation": str(row["ablation"]), "status": status,
                        "tokens_seen": int(row["tokens_seen"] or 0),
                        "trial_folder": str(row["path"]), "trial_id": str(row["trial_id"])}))
    return out


def export_study(exp: Path, df, space: SearchSpace):
    """study.db (SQLite) for optuna-dashboard, replaced atomically (a dashboard may be reading
    it during a search); returns the study."""
    import os

    import optuna

    tmp = exp / (STUDY_FILE + ".tmp")
    if tmp.exists():
        tmp.unlink()
    study = optuna.create_study(storage=f"sqlite:///{tmp}", study_name=exp.name,
                                direction="minimize" if MODE == "min" else "maximize")
    study.set_metric_names([METRIC])
    study.add_trials(frozen_trials(df, load_history(exp), space))
    os.replace(tmp, exp / STUDY_FILE)  # a reader keeps the file it opened, then sees this one
    return optuna.load_study(study_name=exp.name, storage=f"sqlite:///{exp / STUDY_FILE}")


def refresh(exp: Path, space: SearchSpace | None) -> None:
    """The results tables (and a search's study) as they stand: the live view."""
    from .results import load_results, write_tables

    write_tables(exp)
    if space is not None:
        df = load_results(exp)
        if len(df):
            export_study(exp, df, space)


def importances(study, space: SearchSpace) -> dict[str, Any]:
    """Parameter importances over full-budget COMPLETE trials, with the evaluator named, or the
    reason there are none."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    out: dict[str, Any] = {"evaluator": "ped_anova", "n_trials": len(done),
                           "min_trials": MIN_IMPORTANCE_TRIALS, "importances": {}}
    if len(done) < MIN_IMPORTANCE_TRIALS:
        out["skipped"] = (f"{len(done)} full-budget completed trials; importances need at "
                          f"least {MIN_IMPORTANCE_TRIALS}")
        return out
    if len(space.params) < 2:
        out["importances"] = {k: 1.0 for k in space.params}
        out["note"] = "one searched parameter: its importance is 1 by definition"
        return out
    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=PedAnovaImportanceEvaluator(), params=list(space.params))
        out["importances"] = {k: float(v) for k, v in imp.items()}
    except (RuntimeError, ValueError, ImportError) as exc:  # never lose the search's results
        out["skipped"] = f"{type(exc).__name__}: {exc}"
    return out


def write_best(exp: Path, df, space: SearchSpace, rec: dict[str, Any]) -> Path | None:
    """best.toml: the best completed trial as an unresolved run spec."""
    ok = df[df["status"].astype(str) == "completed"].dropna(subset=[METRIC])
    if ok.empty:
        return None
    best = ok.sort_values(METRIC, ascending=MODE == "min").iloc[0]
    shared = rec["shared"]
    lines = [f"# Best of search {exp.name}: {METRIC}={best[METRIC]:.5f} (trial "
             f"{best['trial_id']}, {int(best['tokens_seen']):,} tokens)",
             f'ablation = "{space.ablation}"', f'preset = "{shared["preset"]}"']
    lines += [f"{k} = {json.dumps(shared[k])}" for k in _SELECTORS if k in shared]
    lines += ["", "[config]"]
    for k in space.params:
        v = best[k].item() if hasattr(best[k], "item") else best[k]
        lines.append(f"{k} = {json.dumps(v)}")
    skip = {*_SELECTORS, *space.params, *rec.get("derived_keys", ()), "ablation", "preset"}
    lines += [f"{k} = {json.dumps(v)}" for k, v in shared.items() if k not in skip]
    path = exp / BEST_FILE
    path.write_text("\n".join(lines) + "\n")
    return path


def holdout_check(exp: Path, cache_dir: Path | None = None) -> dict[str, Any]:
    """The best completed trial re-evaluated on the held-out validation windows (between the
    windows that every evaluation, and so the selection, scored): how much of the best loss
    is selection on the same text."""
    import torch

    from .config import RUN_FILE
    from .data import prepare_data, val_windows
    from .evaluation import evaluate
    from .export import best_trial, latest_checkpoint
    from .model import TransformerLM
    from .resolve import resolve
    from .step import load_checkpoint

    trial = best_trial(exp)
    run = json.loads((trial / RUN_FILE).read_text())
    cfg = resolve(run["config"])
    data = prepare_data(cfg.data, cache_dir, log=lambda s: None)
    model = TransformerLM(cfg.model, data.vocab_size)
    model.load_state_dict(load_checkpoint(latest_checkpoint(trial))["model"])
    token_bytes = torch.from_numpy(data.token_bytes)
    out: dict[str, Any] = {"trial_id": run.get("trial_id"), "trial_folder": str(trial)}
    for part in ("select", "holdout"):
        w = val_windows(data.val, cfg.data.seq_len, cfg.eval.eval_tokens, part=part)
        m = evaluate(model, w, token_bytes, cfg.data.batch_size, torch.device("cpu"), None)
        out[f"{part}_val_loss"], out[f"{part}_val_loss_se"] = m["val_loss"], m["val_loss_se"]
        out[f"{part}_windows"] = len(w)
    out["gap"] = out["holdout_val_loss"] - out["select_val_loss"]
    return out


def finish_search(exp: Path, df, space: SearchSpace, rec: dict[str, Any],
                  cache_dir: Path | None = None) -> None:
    """Study, importances, best.toml and the held-out check, with one log line each."""
    if df.empty:
        print("event=search_empty trials=0", flush=True)
        return
    study = export_study(exp, df, space)
    imp = importances(study, space)
    (exp / IMPORTANCES_FILE).write_text(json.dumps(imp, indent=2))
    best = write_best(exp, df, space, rec)
    counts = df["status"].astype(str).value_counts().to_dict()
    print("event=statuses " + " ".join(f"{k}={v}" for k, v in counts.items()), flush=True)
    if best is not None:
        print(f"best: {best}\n{best.read_text()}", flush=True)
        try:
            hold = holdout_check(exp, cache_dir)
        except (ValueError, OSError) as exc:  # e.g. no checkpoint kept
            hold = {"skipped": str(exc)}
        (exp / HOLDOUT_FILE).write_text(json.dumps(hold, indent=2))
        if "gap" in hold:
            print(f"event=holdout trial={hold['trial_id']} select_val_loss="
                  f"{hold['select_val_loss']:.4f} holdout_val_loss="
                  f"{hold['holdout_val_loss']:.4f}+-{hold['holdout_val_loss_se']:.4f}",
                  flush=True)
    if imp["importances"]:
        print("importances (" + imp["evaluator"] + "): " + " ".join(
            f"{k}={v:.3f}" for k, v in imp["importances"].items()), flush=True)
    else:
        print(f"importances: skipped ({imp.get('skipped', imp.get('note'))})", flush=True)
    print(f"study: {exp / 'study.db'}  (optuna-dashboard sqlite:///{exp / 'study.db'})",
          flush=True)
