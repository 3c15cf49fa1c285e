"""`python -m tune_ablations.status [NAME] [--storage ...] [--json] [--watch]`: any sweep, running
or finished, local or on a URI: trials by status, the best completed trial, tokens done and
planned, an ETA (`results.progress`), and the Ray Job's state when the sweep was submitted
(`sweeps.jobs`). `--json` prints only JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from .cli import build_parser
from .spec.io import fail, say
from .spec.names import JOB_ENDED, METRIC


def _line(s: dict[str, Any]) -> str:
    best = s["best"]
    eta = "-" if s["eta_s"] is None else f"{s['eta_s']:.0f}s"
    pct = 100 * s["tokens_done"] / s["tokens_planned"] if s["tokens_planned"] else math.nan
    return (f"experiment={s['experiment']} kind={s['kind']} finished={s['finished']} "
            f"job={s.get('job', '-')} trials={s['trials']} "
            + " ".join(f"{k}={v}" for k, v in s["statuses"].items())
            + f" tokens={s['tokens_done']:,}/{s['tokens_planned']:,} ({pct:.0f}%) eta={eta}"
            + (f" best_completed={best[METRIC]:.4f} ({best['ablation']}, {best['trial_id']})"
               if best else " best_completed=-"))


def parser() -> argparse.ArgumentParser:
    from .sweeps.jobs import DEFAULT_JOB_ADDRESS

    ap = build_parser("status", "Trials by status, the best completed trial, tokens and ETA of "
                      "a sweep.")
    ap.add_argument("name", nargs="?", help="experiment name (default: the newest, by the "
                    "creation time in its sweep.json)")
    ap.add_argument("--storage", default="./results", help="results root: a folder or a URI "
                    "(default: ./results)")
    ap.add_argument("--job-address", default=None, help="Ray job server to ask for a "
                    f"submitted sweep's job (default: the one it was submitted to, else "
                    f"{DEFAULT_JOB_ADDRESS})")
    ap.add_argument("--json", action="store_true", help="one JSON object per update, nothing "
                    "else on stdout")
    ap.add_argument("--watch", action="store_true", help="update until the sweep has ended")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between updates "
                    "(default: 5)")
    ap.add_argument("--smoke-test", action="store_true", help="the status of a tiny real "
                    "experiment made here without Ray (seconds)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from .results.experiment import ExperimentError, open_experiment
    from .results.progress import sweep_status
    from .sweeps.jobs import job_logs_tail, job_state

    args = parser().parse_args(argv)
    if args.smoke_test:
        from .sweeps.smoke import smoke_experiment

        args.storage = str(smoke_experiment(Path(tempfile.mkdtemp(prefix="ta-status-"))).parent)
        args.name = "smoke"
    deadline = time.time() + 24 * 3600
    while True:
        try:
            s = sweep_status(open_experiment(args.storage, args.name))
        except (ValueError, OSError, ExperimentError) as exc:
            job = job_state(args.name, args.job_address) if args.name else None
            if job in JOB_ENDED:  # it will never write one now
                return fail(f"{exc}; its Ray job is {job}: {job_logs_tail(args.name)}")
            if not args.watch or time.time() > deadline:
                return fail(exc)
            time.sleep(args.interval)  # a submitted sweep has not written sweep.json yet
            continue
        job = job_state(s["experiment"], args.job_address)
        if job is not None:
            s["job"] = job
        say(json.dumps(s) if args.json else _line(s))
        ended = s["finished"] or job in JOB_ENDED
        if not args.watch or ended:
            return 0
        time.sleep(args.interval)


if __name__ == "__main__":
    raise SystemExit(main())
