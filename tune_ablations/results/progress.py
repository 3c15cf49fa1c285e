"""How far a sweep is, read from its experiment alone (never a running Ray, never a
checkpoint): trials by status, the best completed trial, tokens done and planned, an ETA.

Design choices:
- A finished sweep is read from its results table, a running one from each trial's small
  files.
- Planned tokens come from the plan sweep.json stored when the sweep started (each arm's
  tokens, the first look, the lr sweep; a search's trials and their largest budget), never
  re-derived: a grid with `--seeds auto` grows with each look recorded in decisions.json.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from ..spec.names import DECISIONS_FILE, METRIC, RESULTS_TABLE, STATUSES, TRIALS_FILE
from .experiment import Experiment
from .frames import best_completed, load


def planned_tokens(sweep: dict[str, Any], decisions: dict | None) -> int:
    """Tokens the sweep will train if every trial it has planned runs its budget (an upper
    bound for a search with ASHA; grows with each look of a grid with --seeds auto)."""
    plan = sweep.get("plan") or {}
    if "arm_tokens" in plan:  # a grid: the lr sweep, then every arm at each seed so far
        looks = (decisions or {}).get("looks") or [plan.get("first_seeds", 0)]
        return int(plan.get("lr_sweep_tokens", 0)) + int(looks[-1]) * sum(
            int(t) for t in plan["arm_tokens"].values())
    if "trial_tokens" in plan:
        return int(plan["trials"]) * int(plan["trial_tokens"])
    return int(sweep.get("num_samples", 0)) * int(sweep.get("max_t", 0))  # older records


def sweep_status(exp: Experiment) -> dict[str, Any]:
    """The status of any sweep, as one JSON-ready dict."""
    sweep = exp.read_sweep()
    finished = exp.exists(TRIALS_FILE)
    df = exp.read_table(RESULTS_TABLE) if finished and exp.exists(f"{RESULTS_TABLE}.parquet") \
        else load(exp).trials
    counts = {s: int((df["status"].astype(str) == s).sum()) if len(df) else 0 for s in STATUSES}
    best = best_completed(df)
    if best is not None:
        best = {"trial_id": str(best["trial_id"]), "ablation": str(best["ablation"]),
                METRIC: float(best[METRIC]), "tokens_seen": int(best["tokens_seen"])}
    done = int(df["tokens_seen"].fillna(0).sum()) if len(df) else 0
    planned = max(done, planned_tokens(sweep, exp.read_json(DECISIONS_FILE)))
    elapsed = max(0.0, time.time() - datetime.fromisoformat(sweep["created"]).timestamp())
    eta = None if finished or not done else elapsed * max(0, planned - done) / done
    return {"experiment": exp.name, "kind": sweep.get("kind"), "finished": finished,
            "trials": len(df), "statuses": {k: v for k, v in counts.items() if v},
            "best": best, "tokens_done": done, "tokens_planned": planned,
            "elapsed_s": round(elapsed, 1), "eta_s": None if eta is None else round(eta, 1),
            "bytes_read": exp.bytes_read}
