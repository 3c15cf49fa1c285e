"""A search's study and what follows it: where the Optuna study lives, parameter importances,
`best.toml` and the held-out re-evaluation of the best trial.

Design choices:
- The study is written by the searcher while the search runs (`searchers.OptunaSearcher`):
  SQLite inside a local experiment (`study.db`), a local SQLite file uploaded at the end for a
  remote one, or a shared database named by `--study-storage` (PostgreSQL on a cluster), which
  optuna-dashboard follows live.
- Importances use COMPLETE trials only (all trained the full budget) and say so, with the
  trials they leave out by how they ended (early-stopped ones are ASHA's losers, diverged ones
  a region of failure: importances describe the survivors); they name their evaluator
  (PED-ANOVA, which needs no scikit-learn), need at least `MIN_TOP` trials in PED-ANOVA's top
  quantile (else they say "insufficient"), and report their spread over bootstrap resamples of
  the trials.
- `best.toml` is the best completed trial's RunSpec with its searched values folded in
  (`RunSpec.to_toml`), so `train --config` and `grid --config` read back exactly that run.
- The held-out check scores the best trial's final weights on windows of validation documents
  that no evaluation (and so no selection) ever scored; it refuses when those documents are too
  few for a meaningful number.
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..results.experiment import Experiment
from ..results.frames import best_completed
from ..spec.io import redact, register_secret, say
from ..spec.names import BEST_FILE, METRIC, RUN_FILE, STUDY_FILE
from ..spec.runspec import RunSpec

MIN_TOP = 5  # trials in PED-ANOVA's top quantile
TARGET_QUANTILE = 0.1  # PED-ANOVA's default
N_BOOT = 30
MIN_HOLDOUT_WINDOWS = 8


_PASSWORD = re.compile(r"^(?P<head>[\w+.-]+://[^/@:]*):(?P<password>.*)@(?P<rest>[^@]*)$")


def study_url(url: str | None) -> str | None:
    """`--study-storage` without its password. A PostgreSQL password moves into this process's
    `PGPASSWORD`, which libpq reads (as it reads `~/.pgpass`), so the URL that the searcher
    keeps, Ray pickles into the experiment (tuner.pkl, searcher state) and sweep.json stores
    holds none. Another database's inline password is refused, naming where it belongs."""
    from urllib.parse import unquote

    m = _PASSWORD.match(url or "")
    if not m:
        return url
    if not m["head"].startswith(("postgresql", "postgres")):
        raise ValueError(f"--study-storage {redact(url)!r} holds a password, which would be "
                         "stored with the experiment: give it to the database client in its "
                         "own configuration (MySQL: ~/.my.cnf with ?read_default_file=...)")
    password = unquote(m["password"])
    os.environ["PGPASSWORD"] = password
    register_secret(password)
    register_secret(m["password"])
    return f"{m['head']}@{m['rest']}"


def importances(study, params: list[str], *, n_boot: int = N_BOOT, seed: int = 0
                ) -> dict[str, Any]:
    """PED-ANOVA importances over full-budget COMPLETE trials with their bootstrap spread, or
    the reason there are none."""
    import optuna
    from optuna.importance import PedAnovaImportanceEvaluator

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    top = int(len(done) * TARGET_QUANTILE)
    out: dict[str, Any] = {"evaluator": "ped_anova", "target_quantile": TARGET_QUANTILE,
                           "n_trials": len(done), "top_trials": top, "min_top": MIN_TOP,
                           "importances": {}, **coverage(study)}
    if top < MIN_TOP:
        out["skipped"] = (f"insufficient: {len(done)} full-budget completed trials put {top} in "
                          f"PED-ANOVA's top {TARGET_QUANTILE:.0%}; importances need at least "
                          f"{MIN_TOP} there ({math.ceil(MIN_TOP / TARGET_QUANTILE)} trials)")
        return out
    if len(params) < 2:
        out["importances"] = {k: 1.0 for k in params}
        out["note"] = "one searched parameter: its importance is 1 by definition"
        return out
    evaluator = PedAnovaImportanceEvaluator()
    out["importances"] = _ped_anova(done, params, evaluator)
    rng = np.random.default_rng(seed)
    boots = [_ped_anova([done[i] for i in rng.integers(0, len(done), len(done))], params,
                        evaluator) for _ in range(n_boot)]
    out["bootstrap"] = {k: {"p5": float(np.percentile([b.get(k, 0.0) for b in boots], 5)),
                            "p95": float(np.percentile([b.get(k, 0.0) for b in boots], 95))}
                        for k in params}
    out["n_boot"] = n_boot
    return out


def coverage(study) -> dict[str, Any]:
    """Which trials importances cover (the full-budget completed ones) and, by how they ended,
    the ones they leave out: early stopping keeps the survivors of each rung, so importances
    over them describe the region the search kept, not the whole space."""
    import optuna

    left: dict[str, int] = {}
    for t in study.trials:
        if t.state != optuna.trial.TrialState.COMPLETE:
            why = str(t.user_attrs.get("status") or t.state.name.lower())
            left[why] = left.get(why, 0) + 1
    n = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    note = f"over the {n} full-budget completed trials of {len(study.trials)}"
    if left:
        note += "; not covered: " + ", ".join(f"{v} {k}" for k, v in sorted(left.items()))
    return {"covers": note, "left_out": left}


def _ped_anova(trials, params: list[str], evaluator) -> dict[str, float]:
    import optuna

    tmp = optuna.create_study()
    tmp.add_trials([optuna.trial.create_trial(params=t.params, distributions=t.distributions,
                                              value=t.value) for t in trials])
    try:
        imp = optuna.importance.get_param_importances(tmp, evaluator=evaluator, params=params)
    except (RuntimeError, ValueError):  # e.g. a resample with one distinct value
        return {}
    return {k: float(v) for k, v in imp.items()}


def write_best(exp: Experiment, df, base: RunSpec, params: list[str]) -> str | None:
    """best.toml: the best completed trial as a fixed RunSpec."""
    best = best_completed(df)
    if best is None:
        return None
    values = {k: (best[k].item() if hasattr(best[k], "item") else best[k]) for k in params}
    spec = base.with_params(**values).settled()
    text = spec.to_toml(f"Best of search {exp.name}: {METRIC}={best[METRIC]:.5f} (trial "
                        f"{best['trial_id']}, {int(best['tokens_seen']):,} tokens)")
    exp.write_bytes(text, BEST_FILE)
    return text


def holdout_check(exp: Experiment, df, datasets: dict) -> dict[str, Any]:
    """The best completed trial re-evaluated on validation documents that selection never
    scored: how much of the best loss is selection on the same text."""
    import torch

    from ..spec.config import from_flat_dict
    from ..training.data import data_id, val_part, val_windows
    from ..training.evaluation import evaluate
    from ..training.model import TransformerLM
    from ..training.step import load_checkpoint

    best = best_completed(df)
    if best is None:
        return {"skipped": "no completed trial"}
    run = exp.read_json(str(best["folder"]), RUN_FILE)
    cfg = from_flat_dict(run["config"])
    data = datasets.get(data_id(cfg.data))
    if data is None:
        return {"skipped": "the best trial's data was not prepared by this driver"}
    parts = {p: val_part(data.val, data.eos_id, p) for p in ("select", "holdout")}
    fits = (len(parts["holdout"]) - 1) // cfg.data.seq_len
    if fits < MIN_HOLDOUT_WINDOWS:
        return {"skipped": f"the validation split is too small for a held-out check: its "
                f"held-out documents hold {fits} windows of seq_len {cfg.data.seq_len}, need "
                f"{MIN_HOLDOUT_WINDOWS}"}
    model = TransformerLM(cfg.model, data.vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = exp.fetch_checkpoint(str(best["folder"]), dest=Path(tmp) / "ckpt")
        model.load_state_dict(load_checkpoint(ckpt)["model"])
    token_bytes = torch.from_numpy(data.token_bytes)
    out: dict[str, Any] = {"trial_id": str(best["trial_id"]), "trial_folder": str(best["folder"])}
    for part, tokens in parts.items():
        w = val_windows(tokens, cfg.data.seq_len, cfg.eval.eval_tokens)
        m = evaluate(model, w, token_bytes, cfg.data.batch_size, torch.device("cpu"), None)
        out[f"{part}_val_loss"], out[f"{part}_val_loss_se"] = m["val_loss"], m["val_loss_se"]
        out[f"{part}_windows"] = len(w)
    out["gap"] = out["holdout_val_loss"] - out["select_val_loss"]
    return out


def finish_search(exp: Experiment, res, base: RunSpec, params: list[str], storage: str,
                  local_db: Path | None, datasets: dict,
                  distributions: dict[str, Any] | None = None) -> None:
    """Importances, best.toml and the held-out check, with one line each; the study made
    consistent with the searcher's saved records (a search resumed on another host after its
    last trial never reopened it), and uploaded when it was kept locally for a remote
    experiment."""
    from ..spec.names import HOLDOUT_FILE, IMPORTANCES_FILE
    from .searchers import consistent_study, saved_records

    df = res.trials
    if df.empty:
        say("event=search_empty trials=0")
        return
    study, _ = consistent_study(storage, exp.name, saved_records(exp), distributions or {})
    imp = importances(study, params)
    exp.write_json(imp, IMPORTANCES_FILE)
    best = write_best(exp, df, base, params)
    if best is not None:
        say(f"best: {exp.where(BEST_FILE)}")
        say(best.rstrip())
        hold = holdout_check(exp, df, datasets)
        exp.write_json(hold, HOLDOUT_FILE)
        if "gap" in hold:
            say(f"held-out check: select_val_loss={hold['select_val_loss']:.4f} "
                f"holdout_val_loss={hold['holdout_val_loss']:.4f}+-"
                f"{hold['holdout_val_loss_se']:.4f} on {hold['holdout_windows']} windows of "
                "documents selection never scored")
    if imp["importances"]:
        say("importances (" + imp["evaluator"] + f", {imp['covers']}): " + " ".join(
            f"{k}={v:.3f}" for k, v in imp["importances"].items()))
    else:
        say(f"importances: {imp.get('skipped', imp.get('note'))} ({imp['covers']})")
    if local_db is not None:  # optuna-dashboard reads no URI: the copy on this machine
        exp.write_bytes(local_db.read_bytes(), STUDY_FILE)
        say(f"study: optuna-dashboard sqlite:///{local_db} (this machine's copy; the "
            f"experiment keeps {exp.where(STUDY_FILE)})")
    else:
        say(f"study: optuna-dashboard {redact(storage)}")
