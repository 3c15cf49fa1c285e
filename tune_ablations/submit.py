"""Sweeps as a service: `python -m tune_ablations.submit grid|search [SWEEP OPTIONS]` submits the
sweep to a running Ray cluster as a Ray Job; `... submit stop NAME` ends it so that
`submit grid --resume --name NAME` (or `grid --resume`) continues it. `status` follows it.

Design choices:
- The sweep's own options are checked here first (the same parser and planner as the command),
  so bad input fails before anything is submitted.
- The job runs `python -m tune_ablations.<grid|search> ... --name NAME --address auto` on the
  cluster; the experiment name is fixed at submission, so status and stop can find it.
- A job is found from any machine: its metadata names the experiment, and Ray's job server
  keeps it (`list_jobs`); a local record is only a shortcut to the job server's address.
- The project's code ships with the job (`runtime_env` py_modules), so every node runs the
  submitter's version; dependencies (torch, Ray) come from the cluster's environment.
- The job server defaults to the local dashboard on 127.0.0.1 (an exposed job server runs
  arbitrary code for anyone who reaches it: CVE-2023-48022); `--job-address` names another.
- No secret reaches a job record: credentials inside `--storage` are refused (they would be
  in the entrypoint); the cluster's environment provides them.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from .cli import build_parser
from .spec.io import fail, redact, say, write_atomic

DEFAULT_JOB_ADDRESS = "http://127.0.0.1:8265"
ENDED = ("STOPPED", "SUCCEEDED", "FAILED")


def jobs_dir() -> Path:
    from .training.runtime import cache_root

    return cache_root() / "jobs"


def job_record(name: str) -> dict[str, Any] | None:
    path = jobs_dir() / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def client(address: str):
    """A job client; like Ray's own local clusters (2.59+), it authenticates with the token in
    ~/.ray/auth_token when one exists and no RAY_AUTH_MODE was chosen."""
    import logging
    import os

    if "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").exists():
        os.environ["RAY_AUTH_MODE"] = "token"
    from ray.job_submission import JobSubmissionClient

    for name in ("ray", "ray.dashboard"):  # "Uploading package ..." lines: --verbose territory
        logging.getLogger(name).setLevel(logging.WARNING)

    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # nothing listening, not a Ray dashboard, ...
        raise ValueError(f"--job-address {address!r}: no Ray job server there "
                         f"({type(exc).__name__}); start one with `ray start --head "
                         "--dashboard-host 127.0.0.1` or name another with --job-address"
                         ) from None


def find_job(name: str, address: str | None) -> tuple[str, str] | None:
    """(job server address, job id) of the newest job submitted for experiment `name`: the
    local record's, else what the job server's own job list says."""
    rec = job_record(name)
    address = address or (rec or {}).get("job_address") or DEFAULT_JOB_ADDRESS
    try:
        jobs = client(address).list_jobs()
    except Exception:  # no job server: a sweep run without submit, or the head is down
        return (address, rec["job_id"]) if rec else None
    mine = [j for j in jobs if (j.metadata or {}).get("experiment") == name]
    if not mine:
        return None
    newest = max(mine, key=lambda j: j.start_time or 0)
    return address, newest.submission_id or newest.job_id


def job_state(name: str, address: str | None = None) -> str | None:
    found = find_job(name, address)
    if found is None:
        return None
    try:
        return str(client(found[0]).get_job_status(found[1])).rsplit(".", 1)[-1]
    except (ValueError, RuntimeError, OSError):
        return "unknown (job server unreachable)"


def job_logs_tail(name: str, address: str | None = None, lines: int = 3) -> str:
    """The last lines of a submitted sweep's job log, on one line."""
    found = find_job(name, address)
    if found is None:
        return "no job found"
    try:
        text = client(found[0]).get_job_logs(found[1])
    except (ValueError, RuntimeError, OSError):
        return "its logs are unreachable"
    return " | ".join(line for line in text.strip().splitlines()[-lines:])


def parser() -> argparse.ArgumentParser:
    ap = build_parser("submit", "Submit a grid or search to a Ray cluster as a Ray Job, or "
                      "stop one.")
    ap.add_argument("kind", nargs="?", choices=("grid", "search", "stop"),
                    help="what to submit, or `stop` a submitted sweep")
    ap.add_argument("--smoke-test", action="store_true", help="alone: check a smoke grid and "
                    "print the job it would submit, without a cluster; after grid|search: "
                    "submit that sweep's smoke test")
    ap.add_argument("--job-address", default=None,
                    help=f"Ray job server (default: {DEFAULT_JOB_ADDRESS}, the local dashboard)")
    ap.add_argument("--python", default="python",
                    help="the Python the cluster runs the sweep with (default: python)")
    ap.add_argument("--no-ship-code", action="store_true", help="run the cluster's installed "
                    "tune_ablations instead of shipping this one with the job")
    return ap


def _check_sweep(kind: str, rest: list[str]) -> tuple[str, str]:
    """Validate the sweep's own options as the command would; returns (name, storage)."""
    import importlib

    from .results.experiment import has_credentials
    from .sweeps.options import ResourceOptions, SweepError, options_from_args

    module = importlib.import_module(f"tune_ablations.{kind}")
    args = module.parser().parse_args(rest)
    if has_credentials(args.storage or ""):
        raise ValueError("--storage holds credentials, which would be stored in the job's "
                         "entrypoint; give the cluster AWS_ACCESS_KEY_ID / "
                         "AWS_SECRET_ACCESS_KEY in its environment instead")
    for i, arg in enumerate(rest):  # whatever the flag: the job server keeps its entrypoint
        if redact(arg) != arg:
            flag = rest[i - 1] if i and rest[i - 1].startswith("--") else arg.split("=")[0]
            raise ValueError(f"{flag} {redact(arg)!r} holds a secret, which would be stored in "
                             "the job's entrypoint; give it to the cluster in its environment "
                             "or the client's config file instead (PostgreSQL: PGPASSWORD or "
                             "~/.pgpass; S3: AWS_SECRET_ACCESS_KEY or ~/.aws/credentials)")
    if args.address:
        raise ValueError("--address: a submitted sweep runs on the cluster it is submitted to "
                         "(drop --address; use --job-address for the job server)")
    resources, _ = options_from_args(ResourceOptions, args)
    if args.resume:
        if not args.name:
            raise SweepError("--resume needs --name when submitting")
        return args.name, args.storage
    plan = module.build_plan(args, None, 0, resources)  # the cluster decides GPUs
    return plan.name, args.storage


def submit(kind: str, rest: list[str], *, job_address: str, python: str,
           ship_code: bool = True) -> dict[str, Any]:
    name, storage = _check_sweep(kind, rest)
    if "--name" not in rest:
        rest = [*rest, "--name", name]
    entrypoint = shlex.join([python, "-m", f"tune_ablations.{kind}", *rest, "--address", "auto"])
    runtime_env = {"py_modules": [str(Path(__file__).resolve().parent)]} if ship_code else None
    c, deadline = client(job_address), time.time() + 60
    while True:  # a head that has just started may not have its job agent yet
        try:
            job_id = c.submit_job(
                entrypoint=entrypoint, submission_id=f"tune-ablations-{name}-{int(time.time())}",
                metadata={"experiment": name, "kind": kind, "storage": redact(storage)},
                runtime_env=runtime_env)
            break
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.time() > deadline:
                raise
            time.sleep(1)
    record = {"job_id": job_id, "job_address": job_address, "experiment": name, "kind": kind,
              "storage": redact(storage), "entrypoint": redact(entrypoint),
              "submitted": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write_atomic(jobs_dir() / f"{name}.json", json.dumps(record, indent=2))
    return record


def stop(name: str, address: str | None) -> dict[str, Any]:
    found = find_job(name, address)
    if found is None:
        raise ValueError(f"no submitted sweep named {name!r} (not in {jobs_dir()} nor in the "
                         f"job list of {address or DEFAULT_JOB_ADDRESS})")
    c = client(found[0])
    c.stop_job(found[1])
    state = ""
    for _ in range(120):  # until the job has ended, so --resume finds a quiet experiment
        state = str(c.get_job_status(found[1])).rsplit(".", 1)[-1]
        if state in ENDED:
            break
        time.sleep(0.5)
    rec = job_record(name) or {}
    return {"job_id": found[1], "experiment": name, "state": state,
            "kind": rec.get("kind", "grid"), "storage": rec.get("storage", "<storage>")}


def main(argv: list[str] | None = None) -> int:
    args, rest = parser().parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.smoke_test and args.kind is not None:  # `submit grid --smoke-test`: the sweep's
        rest, args.smoke_test = ["--smoke-test", *rest], False
    if args.smoke_test:
        try:
            name, storage = _check_sweep("grid", ["--smoke-test", "--preset", "tiny", *rest])
        except ValueError as exc:
            return fail(exc)
        entry = shlex.join([args.python, "-m", "tune_ablations.grid", "--smoke-test", *rest,
                            "--name", name, "--address", "auto"])
        say(f"event=would_submit entrypoint={redact(entry)!r} storage={redact(storage)}")
        return 0
    if args.kind is None:
        return fail("submit needs grid, search or stop (see --help)")
    try:
        if args.kind == "stop":
            if len(rest) != 1:
                raise ValueError("usage: submit stop NAME")
            rec = stop(rest[0], args.job_address)
            say(f"event=stopped job={rec['job_id']} experiment={rec['experiment']} "
                f"state={rec['state']} (resume: python -m tune_ablations.submit {rec['kind']} "
                f"--resume --name {rec['experiment']} --storage {rec['storage']})")
            return 0
        rec = submit(args.kind, rest, job_address=args.job_address or DEFAULT_JOB_ADDRESS,
                     python=args.python, ship_code=not args.no_ship_code)
    except (ValueError, RuntimeError) as exc:
        return fail(exc)
    say(f"event=submitted job={rec['job_id']} experiment={rec['experiment']} "
        f"storage={rec['storage']} (follow: python -m tune_ablations.status "
        f"{rec['experiment']} --storage {rec['storage']} --watch)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
