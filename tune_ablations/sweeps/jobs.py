"""The Ray Jobs client: submit a sweep as a Ray Job, find it again from any machine, read its
state and logs, stop it.

Design choices:
- The job runs `python -m tune_ablations.<grid|search> ... --name NAME --address auto` on the
  cluster; the experiment name is fixed at submission, so status and stop can find it.
- A job is found from any machine: its metadata names the experiment, and Ray's job server
  keeps it (`list_jobs`); a local record is only a shortcut to the job server's address.
- The project's code ships with the job (`runtime_env` py_modules), so every node runs the
  submitter's version; dependencies (torch, Ray) come from the cluster's environment.
- A question file given to `--arms` travels inside the job's command line (its text), since
  the cluster may not have the file; the sweep stores that text verbatim.
- The job server defaults to the local dashboard on 127.0.0.1 (an exposed job server runs
  arbitrary code for anyone who reaches it: CVE-2023-48022).
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path
from typing import Any

from ..spec.io import redact, write_atomic
from ..spec.names import JOB_ENDED, JOBS_DIR

DEFAULT_JOB_ADDRESS = "http://127.0.0.1:8265"


def jobs_dir() -> Path:
    from ..training.runtime import cache_root

    return cache_root() / JOBS_DIR


def job_record(name: str) -> dict[str, Any] | None:
    path = jobs_dir() / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def client(address: str):
    """A job client; like Ray's own local clusters (2.59+), it authenticates with the token in
    ~/.ray/auth_token when one exists and no RAY_AUTH_MODE was chosen. The mode is set only
    while the client reads its headers: left in the environment, it would make every Ray this
    process starts later (a sweep, a test's cluster) demand a token its own driver lacks."""
    import logging
    import os

    auto = "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").exists()
    from ray.job_submission import JobSubmissionClient

    for name in ("ray", "ray.dashboard"):  # "Uploading package ..." lines: --verbose territory
        logging.getLogger(name).setLevel(logging.WARNING)

    try:
        if auto:
            os.environ["RAY_AUTH_MODE"] = "token"
        return JobSubmissionClient(address)
    except Exception as exc:  # nothing listening, not a Ray dashboard, ...
        raise ValueError(f"--job-address {address!r}: no Ray job server there "
                         f"({type(exc).__name__}); start one with `ray start --head "
                         "--dashboard-host 127.0.0.1` or name another with --job-address"
                         ) from None
    finally:
        if auto:
            os.environ.pop("RAY_AUTH_MODE", None)


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


def inline_question(rest: list[str]) -> list[str]:
    """The sweep's options with a local `--arms FILE` replaced by the file's text: the job runs
    on a cluster that may not have the file, and the sweep stores the text verbatim."""
    from ..spec.questions import is_shipped

    out = list(rest)
    for i, item in enumerate(out):
        flag, eq, value = item.partition("=")
        if flag == "--arms" and (eq or i + 1 < len(out)):
            value = value if eq else out[i + 1]
            if "\n" in value or is_shipped(value):
                continue
            text = Path(value).expanduser().read_text()
            out[i:i + (1 if eq else 2)] = ["--arms", text]
            break
    return out


def submit(kind: str, rest: list[str], *, name: str, storage: str, job_address: str,
           python: str, ship_code: bool = True) -> dict[str, Any]:
    """Submit `python -m tune_ablations.<kind> REST --name NAME --address auto` as a Ray Job
    (its options already checked); the local record is a shortcut to the job server."""
    if "--name" not in rest:
        rest = [*rest, "--name", name]
    entrypoint = shlex.join([python, "-m", f"tune_ablations.{kind}", *rest, "--address", "auto"])
    runtime_env = {"py_modules": [str(Path(__file__).resolve().parent.parent)]} if ship_code \
        else None
    c, deadline = client(job_address), time.time() + 180
    while True:  # a head that has just started (or is loaded) may not have its job agent yet
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
        if state in JOB_ENDED:
            break
        time.sleep(0.5)
    rec = job_record(name) or {}
    return {"job_id": found[1], "experiment": name, "state": state,
            "kind": rec.get("kind", "grid"), "storage": rec.get("storage", "<storage>")}
