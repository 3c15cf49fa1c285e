"""`python -m tune_ablations.status [NAME] [--storage ...] [--json] [--watch]`: any sweep,
running or finished: trials by status, the best so far, tokens done and planned, an ETA, and
the Ray Job's state when the sweep was submitted.

Reads only the results folder (or its mirror, for a storage URI), never a running Ray: what it
shows is what Ray has persisted so far.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from .cli import build_parser, fail
from .config import METRIC, STATUSES, SWEEP_FILE, TRIALS_FILE


def planned_tokens(sweep: dict[str, Any]) -> int:
    """Tokens the sweep will train if every trial runs its budget (a search with ASHA stops
    some early, so this is its upper bound)."""
    from .resolve import resolve

    if sweep.get("kind") == "grid":
        return sum(resolve({**sweep["shared"], "ablation": a, "seed": s}).total_tokens
                   for a in sweep["ablations"] for s in range(sweep["seeds"]))
    return int(sweep.get("num_samples", 0)) * int(sweep.get("max_t", 0))


def sweep_status(exp: Path) -> dict[str, Any]:
    from .results import load_history, load_results

    sweep = json.loads((exp / SWEEP_FILE).read_text())
    df = load_results(exp)
    hist = load_history(exp) if len(df) else None
    counts = {s: int((df["status"].astype(str) == s).sum()) if len(df) else 0 for s in STATUSES}
    ok = hist[~hist["diverged"].fillna(False).astype(bool)] if hist is not None else None
    best = None
    if ok is not None and ok[METRIC].notna().any():
        row = ok.loc[ok[METRIC].astype(float).idxmin()]
        best = {"trial_id": row["trial_id"], "ablation": row["ablation"],
                METRIC: float(row[METRIC]), "tokens_seen": int(row["tokens_seen"])}
    done = int(df["tokens_seen"].fillna(0).sum()) if len(df) else 0
    planned = planned_tokens(sweep)
    created = datetime.fromisoformat(sweep["created"]).timestamp()
    elapsed = max(0.0, time.time() - created)
    finished = (exp / TRIALS_FILE).exists()
    eta = None if finished or not done else elapsed * max(0, planned - done) / done
    return {"experiment": exp.name, "kind": sweep.get("kind"), "finished": finished,
            "trials": len(df), "statuses": {k: v for k, v in counts.items() if v},
            "best": best, "tokens_done": done, "tokens_planned": planned,
            "elapsed_s": round(elapsed, 1), "eta_s": None if eta is None else round(eta, 1)}


def _job_state(name: str) -> str | None:
    from .submit import client, job_record

    rec = job_record(name)
    if rec is None:
        return None
    try:
        return str(client(rec["job_address"]).get_job_status(rec["job_id"])).rsplit(".", 1)[-1]
    except (ValueError, RuntimeError, OSError):
        return "unknown (job server unreachable)"


def _locate(name: str | None, storage: str) -> Path:
    from .storage import download, is_uri, join, list_dirs

    if is_uri(storage):
        if name is None:
            dirs = sorted(list_dirs(storage), key=lambda d: d[1])
            if not dirs:
                raise ValueError(f"no sweep in {storage}")
            name = dirs[-1][0]
        return download(join(storage, name))
    root = Path(storage).expanduser()
    if name is None:
        found = sorted((p for p in root.glob("*") if (p / SWEEP_FILE).exists()),
                       key=lambda p: p.stat().st_mtime)
        if not found:
            raise ValueError(f"no sweep in {str(root)!r}")
        return found[-1]
    if not (root / name / SWEEP_FILE).exists():
        raise ValueError(f"no sweep {name!r} in {str(root)!r} (no {SWEEP_FILE} yet: a "
                         "submitted sweep writes it once its driver has started)")
    return root / name


def _smoke_sweep() -> str:
    """A tiny real experiment (analysis.smoke_experiment) with the sweep.json of a grid."""
    import tempfile

    from .analysis import smoke_experiment

    exp = smoke_experiment(Path(tempfile.mkdtemp(prefix="ta-status-")))
    (exp / SWEEP_FILE).write_text(json.dumps({
        "kind": "grid", "shared": {"preset": "tiny", "text_samples": 0},
        "ablations": ["baseline", "high_lr"], "seeds": 2,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    return str(exp.parent)


def _line(s: dict[str, Any]) -> str:
    best = s["best"]
    eta = "-" if s["eta_s"] is None else f"{s['eta_s']:.0f}s"
    pct = 100 * s["tokens_done"] / s["tokens_planned"] if s["tokens_planned"] else math.nan
    return (f"experiment={s['experiment']} kind={s['kind']} finished={s['finished']} "
            f"job={s.get('job', '-')} trials={s['trials']} "
            + " ".join(f"{k}={v}" for k, v in s["statuses"].items())
            + f" tokens={s['tokens_done']:,}/{s['tokens_planned']:,} ({pct:.0f}%) eta={eta}"
            + (f" best={best[METRIC]:.4f} ({best['ablation']}, {best['trial_id']})"
               if best else ""))


def parser():
    ap = build_parser("status", "Trials by status, best so far, tokens and ETA of a sweep.")
    ap.add_argument("name", nargs="?", help="experiment name (default: the newest)")
    ap.add_argument("--storage", default="./results", help="results root or storage URI")
    ap.add_argument("--json", action="store_true", help="one JSON object per update")
    ap.add_argument("--watch", action="store_true", help="update until the sweep has ended")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between updates")
    ap.add_argument("--smoke-test", action="store_true", help="the status of a tiny real "
                    "experiment made here without Ray (seconds)")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.smoke_test:
        args.storage, args.name = _smoke_sweep(), "smoke"
    deadline = time.time() + 24 * 3600
    while True:
        try:
            s = sweep_status(_locate(args.name, args.storage))
        except (ValueError, OSError) as exc:
            if not args.watch or time.time() > deadline:
                return fail(exc)
            time.sleep(args.interval)  # a submitted sweep has not written sweep.json yet
            continue
        job = _job_state(s["experiment"])
        if job is not None:
            s["job"] = job
        print(json.dumps(s) if args.json else _line(s), flush=True)
        ended = s["finished"] or job in ("STOPPED", "FAILED", "SUCCEEDED")
        if not args.watch or ended:
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    raise SystemExit(main())
