"""After a search: the Optuna study rebuilt from the results with honest trial states, parameter
importances from full-budget trials only, and `best.toml`.

Design choices:
- The study is rebuilt from the results folder (not Ray's searcher state): ASHA-stopped trials
  are PRUNED with their intermediate values keyed by tokens seen, diverged and errored trials
  FAIL, completed ones COMPLETE with their final loss; each carries user attributes (ablation,
  status, tokens, trial folder). `optuna-dashboard sqlite:///.../study.db` opens it.
- Importances use COMPLETE trials only (all trained the full budget), need at least
  `MIN_IMPORTANCE_TRIALS`, and name their evaluator (fANOVA, seeded), since Optuna's default
  changed across major versions.
- `best.toml` keeps the spec unresolved: `iso_tokens`/`token_budget` and derived widths as
  selectors, and only the searched keys (plus a non-default corpus) under [config].
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .config import BEST_FILE, IMPORTANCES_FILE, METRIC, MODE, STUDY_FILE, TIME_ATTR
from .results import load_history
from .search_space import SearchSpace

MIN_IMPORTANCE_TRIALS = 8
_SPEC_KEYS = ("iso_tokens", "token_budget", "head_dim", "ffn_mult", "max_steps", "corpus",
              "tokenizer")


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
    """study.db (SQLite) for optuna-dashboard; returns the study."""
    import optuna

    db = exp / STUDY_FILE
    if db.exists():
        db.unlink()
    study = optuna.create_study(storage=f"sqlite:///{db}", study_name=exp.name,
                                direction="minimize" if MODE == "min" else "maximize")
    study.set_metric_names([METRIC])
    study.add_trials(frozen_trials(df, load_history(exp), space))
    return study


def importances(study, space: SearchSpace) -> dict[str, Any]:
    """Parameter importances over full-budget COMPLETE trials, with the evaluator named, or the
    reason there are none."""
    import optuna
    from optuna.importance import FanovaImportanceEvaluator

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    out: dict[str, Any] = {"evaluator": "fanova(seed=0)", "n_trials": len(done),
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
            study, evaluator=FanovaImportanceEvaluator(seed=0),
            params=list(space.params))
        out["importances"] = {k: float(v) for k, v in imp.items()}
    except (RuntimeError, ValueError) as exc:
        out["skipped"] = str(exc)
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
    lines += [f"{k} = {json.dumps(shared[k])}" for k in _SPEC_KEYS[:4] if k in shared]
    lines += ["", "[config]"]
    for k in space.params:
        v = best[k].item() if hasattr(best[k], "item") else best[k]
        lines.append(f"{k} = {json.dumps(v)}")
    lines += [f"{k} = {json.dumps(shared[k])}" for k in _SPEC_KEYS[4:] if k in shared]
    path = exp / BEST_FILE
    path.write_text("\n".join(lines) + "\n")
    return path


def finish_search(exp: Path, df, space: SearchSpace, rec: dict[str, Any]) -> None:
    """Study, importances and best.toml, with one log line each."""
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
    if imp["importances"]:
        print("importances (" + imp["evaluator"] + "): " + " ".join(
            f"{k}={v:.3f}" for k, v in imp["importances"].items()), flush=True)
    else:
        print(f"importances: skipped ({imp.get('skipped', imp.get('note'))})", flush=True)
    print(f"study: {exp / 'study.db'}  (optuna-dashboard sqlite:///{exp / 'study.db'})",
          flush=True)
