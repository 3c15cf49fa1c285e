"""Experiment folder -> pandas DataFrames, without Ray: works on partial and finished sweeps.

Layout read (written by `trainable` and Ray): one folder per trial holding `run.json` (resolved
config), Ray's `result.json` (one JSON line per report), `outcome.json` once the run ended, and
Ray's `error.txt` if it failed; the driver's `trials.json` records Ray's final status per trial.

Status of a trial: `outcome.json` says `completed` / `diverged` / `stopped`; else Ray's error file
means `error`; else a trial Ray terminated early (ASHA) is `early_stopped`; else `running`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from .config import (
    OUTCOME_FILE,
    REPORT_KEYS,
    RUN_FILE,
    STATUSES,
    TRIALS_FILE,
    VAL_KEYS,
    field_names,
)

_VAL = VAL_KEYS
_HISTORY_KEYS = tuple(k for k in REPORT_KEYS if k != "status")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def trial_dirs(path: str | Path) -> list[Path]:
    """Trial folders under an experiment folder (those holding `run.json` or Ray's params)."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"experiment folder {str(root)!r} does not exist")
    found = {p.parent for name in (RUN_FILE, "params.json") for p in root.glob(f"*/{name}")}
    return sorted(found)


def read_reports(trial: Path) -> list[dict[str, Any]]:
    """Ray's per-report lines, deduplicated by step (a resumed trial repeats the steps after its
    checkpoint; the later line wins)."""
    by_step: dict[int, dict[str, Any]] = {}
    try:
        lines = (trial / "result.json").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut off by a kill
        if "step" in row:
            by_step[int(row["step"])] = row
    return [by_step[s] for s in sorted(by_step)]


def _status(trial: Path, outcome: dict | None, ray_state: dict | None) -> str:
    if outcome:
        return outcome.get("status", "completed")
    if (trial / "error.txt").exists() or (trial / "error.pkl").exists():
        return "error"
    if ray_state:
        if ray_state.get("status") == "ERROR":
            return "error"
        if ray_state.get("status") == "TERMINATED":
            return "early_stopped"
    return "running"


def _trial_record(trial: Path, ray_states: dict[str, dict]) -> tuple[dict, list[dict]]:
    run = _read_json(trial / RUN_FILE) or {}
    params = _read_json(trial / "params.json") or {}
    outcome = _read_json(trial / OUTCOME_FILE)
    reports = read_reports(trial)
    trial_id = run.get("trial_id") or (reports[-1].get("trial_id") if reports else None) or \
        trial.name
    ray_state = ray_states.get(trial_id) or ray_states.get(trial.name)
    config = run.get("config", {})
    row: dict[str, Any] = {"trial_id": trial_id,
                           "ablation": run.get("ablation") or params.get("ablation"),
                           "seed": run.get("seed", params.get("seed")),
                           "status": _status(trial, outcome, ray_state), "path": str(trial)}
    for key in field_names():
        row[key] = config.get(key, params.get(key))
    last = reports[-1] if reports else {}
    finite = [r for r in reports if not r.get("diverged")]
    best = min(finite, key=lambda r: r["val_loss"]) if finite else {}
    for key in _VAL:
        row[key] = last.get(key) if not last.get("diverged") else math.nan
        row[f"best_{key}"] = best.get(key)
    for key in ("train_loss", "tokens_seen", "step", "epoch", "tokens_per_s", "mfu",
                "train_time_s", "eval_time_s", "unigram_val_loss", "unigram_val_bpb"):
        row[key] = last.get(key)
    row["diverged"] = bool(last.get("diverged", False))
    for key in sorted(k for k in last if "@" in k):  # extra evaluation domains
        row[key] = last[key] if not last.get("diverged") else math.nan
    row["wall_time_s"] = (outcome or {}).get("wall_time_s", last.get("time_total_s"))
    data = (outcome or {}).get("data") or run.get("data") or {}
    row["train_tokens"] = data.get("train_tokens")
    row["data_key"] = data.get("key")
    for key in ("params", "non_embedding_params", "flops_per_token", "peak_flops",
                "initial_loss", "diverged_because"):
        row[key] = (outcome or {}).get(key)
    if ray_state and ray_state.get("error"):
        row["error"] = ray_state["error"]
    history = [{"trial_id": trial_id, "ablation": row["ablation"], "seed": row["seed"],
                **{k: r.get(k) for k in _HISTORY_KEYS}} for r in reports]
    return row, history


def _ray_states(root: Path) -> dict[str, dict]:
    return _read_json(root / TRIALS_FILE) or {}


def load_results(path: str | Path):
    """One row per trial: ids, ablation, seed, status, every config field, final and best
    validation metrics, train loss, tokens, steps, epochs, times, throughput, MFU, parameters."""
    import pandas as pd

    root = Path(path)
    states = _ray_states(root)
    rows = [_trial_record(t, states)[0] for t in trial_dirs(root)]
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["status"] = pd.Categorical(df["status"], categories=STATUSES)
    for col in ("ablation", "trial_id", "path"):
        df[col] = df[col].astype("string")
    for col in ("seed", "step", "tokens_seen", "params", "non_embedding_params"):
        df[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    return df.sort_values(["ablation", "seed", "trial_id"], ignore_index=True)


def load_history(path: str | Path):
    """Long format: one row per trial per evaluation."""
    import pandas as pd

    root = Path(path)
    states = _ray_states(root)
    rows = [h for t in trial_dirs(root) for h in _trial_record(t, states)[1]]
    df = pd.DataFrame(rows, columns=["trial_id", "ablation", "seed", *_HISTORY_KEYS])
    return df.sort_values(["trial_id", "step"], ignore_index=True)


def load_outcomes(path: str | Path) -> dict[str, dict]:
    """`outcome.json` of every finished trial, by trial id (samples, full results)."""
    out = {}
    for t in trial_dirs(path):
        o = _read_json(t / OUTCOME_FILE)
        if o:
            out[o.get("trial_id", t.name)] = o
    return out


def write_tables(path: str | Path, out: str | Path | None = None) -> dict[str, Path]:
    """results.parquet/.csv and history.parquet/.csv into `out` (default: the experiment)."""
    target = Path(out or path)
    target.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, frame in (("results", load_results(path)), ("history", load_history(path))):
        for ext in ("parquet", "csv"):
            p = target / f"{name}.{ext}"
            tmp = p.with_suffix(p.suffix + ".tmp")
            getattr(frame, f"to_{ext}")(tmp, index=False)
            tmp.replace(p)
            written[f"{name}.{ext}"] = p
    return written


def load_probes(path: str | Path):
    """Cooldown probes (wsd runs with `probe_tokens`): one row per trial per budget, the loss a
    run of that budget reaches with its learning rate decayed."""
    import pandas as pd

    rows = [{"trial_id": tid, "ablation": o.get("name"), "seed": o.get("seed"), **p}
            for tid, o in load_outcomes(path).items() for p in o.get("probes") or []]
    return pd.DataFrame(rows, columns=["trial_id", "ablation", "seed", "budget_tokens",
                                       "branch_step", "cooldown_steps", "tokens", "val_loss",
                                       "val_loss_se", "val_bpb"])
