"""Sweeps as a service: `python -m tune_ablations.submit grid|search [SWEEP OPTIONS]` submits the
sweep to a running Ray cluster as a Ray Job; `... submit stop NAME` ends it so that
`submit grid --resume --name NAME` (or `grid --resume`) continues it. `status.py` follows it.

Design choices:
- The sweep's own options are checked here first (the same parser and resolver as the
  command), so bad input fails before anything is submitted.
- The job runs `python -m tune_ablations.<grid|search> ... --name NAME --address auto` on the
  cluster; the experiment name is fixed at submission, so status and stop can find it.
- The job server defaults to the local dashboard on 127.0.0.1 (an exposed job server runs
  arbitrary code for anyone who reaches it: CVE-2023-48022); `--job-address` names another.
- A small record per submitted sweep (job id, job server, storage) is kept in the cache folder,
  never the environment or any secret.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from .cli import build_parser, fail

DEFAULT_JOB_ADDRESS = "http://127.0.0.1:8265"


def jobs_dir() -> Path:
    from .data import cache_root

    return cache_root() / "jobs"


def job_record(name: str) -> dict[str, Any] | None:
    path = jobs_dir() / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def client(address: str):
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # nothing listening, not a Ray dashboard, ...
        raise ValueError(f"--job-address {address!r}: no Ray job server there "
                         f"({type(exc).__name__}); start one with `ray start --head "
                         "--dashboard-host 127.0.0.1` or name another with --job-address"
                         ) from None


def parser():
    ap = build_parser("submit", "Submit a grid or search to a Ray cluster as a Ray Job, or "
                      "stop one.")
    ap.add_argument("kind", nargs="?", choices=("grid", "search", "stop"),
                    help="what to submit, or `stop` a submitted sweep")
    ap.add_argument("--smoke-test", action="store_true", help="alone: check a smoke grid and "
                    "print the job it would submit, without a cluster; after grid|search: "
                    "submit that sweep's smoke test")
    ap.add_argument("--job-address", default=DEFAULT_JOB_ADDRESS,
                    help=f"Ray job server (default {DEFAULT_JOB_ADDRESS}, the local dashboard)")
    ap.add_argument("--python", default="python",
                    help="the Python the cluster runs the sweep with (default: python)")
    return ap


def _check_sweep(kind: str, rest: list[str]) -> tuple[str, str]:
    """Validate the sweep's own options as the command would; returns (name, storage)."""
    import importlib

    from .sweep import SweepError, check_sweep_args

    module = importlib.import_module(f"tune_ablations.{kind}")
    args = module.parser().parse_args(rest)
    check_sweep_args(args)
    if args.address:
        raise ValueError("--address: a submitted sweep runs on the cluster it is submitted to "
                         "(drop --address; use --job-address for the job server)")
    if not args.resume:
        args.n_gpus = 0  # the cluster decides; this only validates the spec
        plan = module.build_plan(args, None)
        name = plan.name
    elif not args.name:
        raise SweepError("--resume needs --name when submitting")
    else:
        name = args.name
    return name, args.storage


def submit(kind: str, rest: list[str], *, job_address: str, python: str) -> dict[str, Any]:
    name, storage = _check_sweep(kind, rest)
    if "--name" not in rest:
        rest = [*rest, "--name", name]
    entrypoint = shlex.join([python, "-m", f"tune_ablations.{kind}", *rest, "--address",
                             "auto"])
    c, deadline = client(job_address), time.time() + 60
    while True:  # a head that has just started may not have its job agent yet
        try:
            job_id = c.submit_job(
                entrypoint=entrypoint, submission_id=f"tune-ablations-{name}-{int(time.time())}",
                metadata={"experiment": name, "kind": kind})
            break
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.time() > deadline:
                raise
            time.sleep(1)
    record = {"job_id": job_id, "job_address": job_address, "experiment": name, "kind": kind,
              "storage": storage, "entrypoint": entrypoint,
              "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}
    jobs_dir().mkdir(parents=True, exist_ok=True)
    (jobs_dir() / f"{name}.json").write_text(json.dumps(record, indent=2))
    return record


def stop(name: str) -> dict[str, Any]:
    record = job_record(name)
    if record is None:
        raise ValueError(f"no submitted sweep named {name!r} (records in {jobs_dir()})")
    c = client(record["job_address"])
    c.stop_job(record["job_id"])
    for _ in range(120):  # until the job has ended, so --resume finds a quiet experiment
        state = str(c.get_job_status(record["job_id"]))
        if state.rsplit(".", 1)[-1] in ("STOPPED", "SUCCEEDED", "FAILED"):
            break
        time.sleep(0.5)
    return {**record, "state": state}


def main(argv: list[str] | None = None) -> int:
    args, rest = parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.smoke_test and args.kind is not None:  # `submit grid --smoke-test`: the sweep's
        rest, args.smoke_test = ["--smoke-test", *rest], False
    if args.smoke_test:
        name, storage = _check_sweep("grid", ["--smoke-test", *rest])
        entry = shlex.join([args.python, "-m", "tune_ablations.grid", "--smoke-test", *rest,
                            "--name", name, "--address", "auto"])
        print(f"event=would_submit entrypoint={entry!r} storage={storage}")
        return 0
    if args.kind is None:
        return fail("submit needs grid, search or stop (see --help)")
    try:
        if args.kind == "stop":
            if len(rest) != 1:
                raise ValueError("usage: submit stop NAME")
            rec = stop(rest[0])
            print(f"event=stopped job={rec['job_id']} experiment={rec['experiment']} "
                  f"state={rec['state']} (resume: python -m tune_ablations.submit "
                  f"{rec['kind']} --resume --name {rec['experiment']} --storage "
                  f"{rec['storage']})")
            return 0
        rec = submit(args.kind, rest, job_address=args.job_address, python=args.python)
    except (ValueError, RuntimeError) as exc:
        return fail(exc)
    print(f"event=submitted job={rec['job_id']} experiment={rec['experiment']} "
          f"storage={rec['storage']} (follow: python -m tune_ablations.status "
          f"{rec['experiment']} --storage {rec['storage']} --watch)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
