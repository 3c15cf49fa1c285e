"""Sweeps as a service: `python -m tune_ablations.submit grid|search [SWEEP OPTIONS]` submits the
sweep to a running Ray cluster as a Ray Job (`sweeps.jobs`); `... submit stop NAME` ends it so
that `submit grid --resume --name NAME` (or `grid --resume`) continues it. `status` follows it.

Design choices:
- The sweep's own options are checked here first (the same parser and planner as the command,
  resolving with the config's vocabulary: the cluster prepares the data), so bad input fails
  before anything is submitted.
- No secret reaches a job record: credentials inside `--storage` are refused (they would be
  in the entrypoint); the cluster's environment provides them.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from .cli import build_parser
from .spec.io import fail, redact, say
from .sweeps.jobs import DEFAULT_JOB_ADDRESS, inline_question, stop, submit


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
    from .training.resolved import Resolver

    module = importlib.import_module(f"tune_ablations.{kind}")
    planner = importlib.import_module(f"tune_ablations.sweeps.{kind}_plan")
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
    plan = planner.build_plan(args, None, 0, resources,  # the cluster decides GPUs and data
                              Resolver(prepare=False))
    return plan.name, args.storage


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
        name, storage = _check_sweep(args.kind, rest)
        rec = submit(args.kind, inline_question(rest), name=name, storage=storage,
                     job_address=args.job_address or DEFAULT_JOB_ADDRESS, python=args.python,
                     ship_code=not args.no_ship_code)
    except (ValueError, RuntimeError) as exc:
        return fail(exc)
    say(f"event=submitted job={rec['job_id']} experiment={rec['experiment']} "
        f"storage={rec['storage']} (follow: python -m tune_ablations.status "
        f"{rec['experiment']} --storage {rec['storage']} --watch)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
