"""An experiment -> pandas DataFrames, without Ray: works on partial and finished sweeps, local or
remote (everything is read through `Experiment`).

What is read per trial (written by the trainable and by Ray): `run.json` (the spec, the
resolved config, versions), `outcome.json` once the run ended (history, samples, throughput),
else Ray's `result.json` (one JSON line per report), and whether Ray's `error.txt` exists; the
driver's `trials.json` records Ray's final status per trial.

Status of a trial: `outcome.json` says completed / diverged / stopped; else Ray's error file
means error; else a trial Ray terminated early (ASHA) is early_stopped; else running.

`best_completed` is the one definition of "the best trial": the final value of the metric
among completed trials, in the metric's own direction. Status, the summary, the report and
export all use it.

One dtype per column and one meaning per name, in both tables: text is pandas' `string`
(whatever pandas' own default for text), whole numbers `Int64`, flags `boolean`; `lr` is the
configured peak learning rate everywhere, and the history's learning rate at each evaluation
(after warmup and decay) is `scheduled_lr`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

from ..spec.config import field_names
from ..spec.names import (
    HISTORY_NAMES,
    METRIC,
    OUTCOME_FILE,
    RAY_ERROR,
    RAY_ERROR_FILE,
    RAY_ERROR_PICKLE,
    RAY_PARAMS_FILE,
    RAY_RESULT_FILE,
    RAY_TERMINATED,
    REPORT_KEYS,
    RUN_FILE,
    STATUSES,
    TABLES,
    TRIALS_FILE,
    VAL_KEYS,
    Status,
    mode_of,
)
from .experiment import Experiment, as_experiment

_HISTORY_KEYS = tuple(k for k in REPORT_KEYS if k != "status")
_LAST_KEYS = ("train_loss", "tokens_seen", "step", "epoch", "tokens_per_s", "mfu",
              "train_time_s", "eval_time_s", "unigram_val_loss", "unigram_val_bpb")
_OUTCOME_KEYS = ("params", "non_embedding_params", "active_params", "flops_per_token",
                 "peak_flops", "initial_loss", "diverged_because", "probe_tokens_trained",
                 "probe_time_s", "compile_time_s")
SPEC_COLUMNS = ("preset", "data", "budget")


@dataclass
class Trial:
    """What one trial folder holds, read once."""
    folder: str
    run: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    outcome: dict | None = None
    reports: list = field(default_factory=list)
    errored: bool = False

    @property
    def trial_id(self) -> str:
        return self.run.get("trial_id") or (self.reports[-1].get("trial_id") if self.reports
                                            else None) or self.folder


def parse_reports(text: str) -> list[dict[str, Any]]:
    """Ray's per-report lines, deduplicated by step (a resumed trial repeats the steps after its
    checkpoint; the later line wins); a line cut off by a kill is skipped."""
    by_step: dict[int, dict[str, Any]] = {}
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if "step" in row:
            by_step[int(row["step"])] = row
    return [by_step[s] for s in sorted(by_step)]


def read_trials(exp: Experiment) -> list[Trial]:
    """Every trial folder of the experiment, each file read at most once."""
    out = []
    for folder in exp.trials():
        names = {n for n, _ in exp.listdir(folder)}
        t = Trial(folder, run=exp.read_json(folder, RUN_FILE, default={}) or {},
                  params=exp.read_json(folder, RAY_PARAMS_FILE, default={}) or {},
                  outcome=exp.read_json(folder, OUTCOME_FILE) if OUTCOME_FILE in names else None,
                  errored=bool({RAY_ERROR_FILE, RAY_ERROR_PICKLE} & names))
        if t.outcome and t.outcome.get("history"):
            t.reports = t.outcome["history"]
        elif RAY_RESULT_FILE in names:
            t.reports = parse_reports(exp.read_text(folder, RAY_RESULT_FILE))
        out.append(t)
    return out


def trial_status(t: Trial, ray_state: dict | None) -> str:
    if t.outcome:
        return t.outcome.get("status", Status.COMPLETED.value)
    if t.errored or (ray_state or {}).get("status") == RAY_ERROR:
        return Status.ERROR.value
    if (ray_state or {}).get("status") == RAY_TERMINATED:
        return Status.EARLY_STOPPED.value
    return Status.RUNNING.value


def _row(t: Trial, ray_state: dict | None, exp: Experiment) -> dict[str, Any]:
    run, outcome, last = t.run, t.outcome or {}, (t.reports[-1] if t.reports else {})
    config, spec = run.get("config", {}), run.get("spec", {})
    row: dict[str, Any] = {"trial_id": t.trial_id, "label": run.get("label", t.folder),
                           "ablation": run.get("ablation") or t.params.get("ablation"),
                           "seed": run.get("seed", t.params.get("seed")),
                           "status": trial_status(t, ray_state), "path": exp.path(t.folder),
                           "folder": t.folder}
    row.update({k: spec.get(k) for k in SPEC_COLUMNS})
    for key in field_names():
        row[key] = config.get(key, t.params.get(key))
    diverged = bool(last.get("diverged", False))
    finite = [r for r in t.reports if not r.get("diverged")]
    best = min(finite, key=lambda r: r[METRIC]) if finite else {}
    for key in VAL_KEYS:
        row[key] = math.nan if diverged else last.get(key)
        row[f"best_{key}"] = best.get(key)
    row.update({k: last.get(k) for k in _LAST_KEYS})
    row["diverged"] = diverged
    for key in sorted(k for k in last if "@" in k):  # extra domains, other contexts
        row[key] = math.nan if diverged else last[key]
    row["wall_time_s"] = outcome.get("wall_time_s", last.get("time_total_s"))
    data = outcome.get("data") or run.get("data") or {}
    row["train_tokens"], row["data_key"] = data.get("train_tokens"), data.get("key")
    row.update({k: outcome.get(k) for k in _OUTCOME_KEYS})
    row["run_precision"] = outcome.get("precision")  # what ran (the config may say auto)
    if (ray_state or {}).get("error"):
        row["error"] = ray_state["error"]
    return row


@dataclass
class Results:
    """An experiment's results: one row per trial, one row per trial per evaluation, and the
    outcome of every finished trial by trial id."""
    trials: Any
    history: Any
    outcomes: dict


def load(source: Experiment | str) -> Results:
    """Read an experiment once into its DataFrames."""
    import pandas as pd

    exp = as_experiment(source)
    if not exp.remote and not exp.local_dir.is_dir():
        raise FileNotFoundError(f"experiment folder {str(exp)!r} does not exist")
    states = exp.read_json(TRIALS_FILE, default={}) or {}
    trials = read_trials(exp)
    rows, hist = [], []
    for t in trials:
        row = _row(t, states.get(t.trial_id) or states.get(t.folder), exp)
        rows.append(row)
        hist += [{"trial_id": row["trial_id"], "ablation": row["ablation"], "seed": row["seed"],
                  **{k: r.get(k) for k in _HISTORY_KEYS}} for r in t.reports]
    history = pd.DataFrame(hist, columns=["trial_id", "ablation", "seed", *_HISTORY_KEYS])
    history = one_dtype_per_column(history.rename(columns=HISTORY_NAMES), ("seed", "step",
                                                                            "tokens_seen"))
    outcomes = {t.trial_id: t.outcome for t in trials if t.outcome}
    return Results(_typed(pd.DataFrame(rows)), history.sort_values(["trial_id", "step"],
                                                                   ignore_index=True), outcomes)


def _typed(df):
    import pandas as pd

    if df.empty:
        return df
    df = one_dtype_per_column(df, ("seed", "step", "tokens_seen", "params",
                                   "non_embedding_params", "probe_tokens_trained"))
    df["status"] = pd.Categorical(df["status"].astype(object), categories=STATUSES)
    return df.sort_values(["ablation", "seed", "trial_id"], ignore_index=True)


def one_dtype_per_column(df, whole: tuple[str, ...] = ()):
    """Text columns as `string`, flags as `boolean`, `whole` number columns as `Int64`, mixed
    values as their text; numbers stay numbers; a column with no value at all is left as it
    is."""
    import pandas as pd

    for col in df.columns:
        if col in whole:
            df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
            continue
        if pd.api.types.is_numeric_dtype(df[col]) and not pd.api.types.is_bool_dtype(df[col]):
            continue
        kinds = {type(v) for v in df[col] if v is not None and not _missing(v)}
        if not kinds:  # nothing recorded: no type to choose (the readers treat it as missing)
            continue
        if kinds <= {bool}:
            df[col] = df[col].astype("boolean")
        elif kinds <= {int, float}:
            df[col] = pd.to_numeric(df[col], errors="coerce")
        elif not pd.api.types.is_bool_dtype(df[col]):
            df[col] = df[col].map(lambda v: v if v is None or _missing(v) or isinstance(v, str)
                                  else json.dumps(v, default=str)).astype("string")
    return df


def _missing(v: Any) -> bool:
    return isinstance(v, float) and math.isnan(v)


def load_results(source: Experiment | str):
    """One row per trial: ids, ablation, seed, status, the spec's preset/data/budget, every
    config field, final and best validation metrics, train loss, tokens, steps, epochs, times,
    throughput, MFU, parameters, probe compute, the precision the run trained in
    (`run_precision`)."""
    return load(source).trials


def load_history(source: Experiment | str):
    """Long format: one row per trial per evaluation."""
    return load(source).history


def load_outcomes(source: Experiment | str) -> dict[str, dict]:
    """`outcome.json` of every finished trial, by trial id (samples, full results)."""
    return load(source).outcomes


def write_tables(res: Results, exp: Experiment) -> list[str]:
    """results.parquet/.csv and history.parquet/.csv into the experiment."""
    written = []
    for name, frame in zip(TABLES, (res.trials, res.history)):
        written += exp.write_table(name, frame)
    return written


def probes_frame(outcomes: dict[str, dict]):
    """Cooldown probes (runs with `probe_tokens`): one row per trial per budget, its loss with
    the learning rate decayed; under `schedule` wsd, exactly the loss a run of that budget
    reaches (under cosine or linear, a decay branch that early stopping ranks by)."""
    import pandas as pd

    rows = [{"trial_id": tid, "ablation": o.get("name"), "seed": o.get("seed"),
             "schedule": (o.get("config") or {}).get("schedule"), **p}
            for tid, o in outcomes.items() for p in o.get("probes") or []]
    return pd.DataFrame(rows, columns=["trial_id", "ablation", "seed", "schedule",
                                       "budget_tokens", "branch_step", "cooldown_steps",
                                       "tokens", "val_loss", "val_loss_se", "val_bpb"])


def best_completed(df, metric: str = METRIC):
    """The best completed trial's row (final `metric`, in its own direction), or None."""
    if df is None or df.empty:
        return None
    done = df[df["status"].astype(str) == Status.COMPLETED.value].dropna(subset=[metric])
    if done.empty:
        return None
    return done.sort_values(metric, ascending=mode_of(metric) == "min").iloc[0]
