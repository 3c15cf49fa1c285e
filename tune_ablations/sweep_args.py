"""The options every sweep shares, their checks, and what `--resume` does with them.

Design choices:
- A resumed sweep is the same sweep: its settings come back from sweep.json. A flag given with
  `--resume` that differs from the stored value is refused with a message naming it (Ray cannot
  change a restored Tuner's failure, checkpoint or resource settings), never silently ignored.
"""

from __future__ import annotations

from typing import Any

# Flags a resumed sweep takes from sweep.json: argparse dest -> sweep.json key.
STORED_FLAGS = {"max_failures": "max_failures", "keep_checkpoints": "keep_checkpoints",
                "cpus_per_trial": "cpus_per_trial", "gpus_per_trial": "gpus_per_trial",
                "trial_resource": "trial_resources"}
# Flags that define what a sweep trains; with --resume they must not be given at all.
SPEC_FLAGS = ("preset", "data", "eval_data", "config", "max_steps", "tokens", "iso_tokens", "set",
              "force_set", "seeds", "ablations", "space", "num_samples", "sampler",
              "sampler_seed", "scheduler", "reduction_factor", "evals", "max_concurrent",
              "asha_probes")


class SweepError(RuntimeError):
    """A sweep that cannot start; the message says why and what to do."""


def add_sweep_args(ap, kind: str) -> None:
    """The options every sweep command shares: where results go, resume, resources, retries."""
    ap.add_argument("--storage", default="./results", help="results root (default ./results)")
    ap.add_argument("--name", help=f"experiment name (default {kind}-...-<time>)")
    ap.add_argument("--resume", action="store_true",
                    help=f"continue the sweep --name (default: the latest {kind} in --storage)")
    ap.add_argument("--cpus-per-trial", type=float, default=1.0,
                    help="CPUs (and torch threads) per trial")
    ap.add_argument("--gpus-per-trial", type=float,
                    help="fraction of a GPU per trial (default: packs trials on the GPUs)")
    ap.add_argument("--trial-resource", nargs="+", action="extend", metavar="NAME=AMOUNT",
                    help="custom Ray resource per trial, e.g. worker_node=0.5; repeatable")
    ap.add_argument("--address", help="join this Ray cluster (default: $RAY_ADDRESS or local)")
    ap.add_argument("--max-failures", type=int, default=2,
                    help="retries of a crashed trial from its checkpoint")
    ap.add_argument("--keep-checkpoints", type=int, default=2, help="checkpoints kept per trial")
    ap.add_argument("--cache-dir", help="token cache (default $TUNE_ABLATIONS_CACHE or "
                    "~/.cache/tune_ablations)")
    ap.add_argument("--dry-run", action="store_true",
                    help="print the plan (steps, tokens, FLOPs, epochs, seconds), train nothing")
    ap.add_argument("--json", action="store_true", help="with --dry-run: one JSON object per "
                    "trial")


def trial_resources(items: list[str] | None) -> dict[str, float]:
    """`["worker_node=0.5"]` -> {"worker_node": 0.5}."""
    out: dict[str, float] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        try:
            amount = float(value)
        except ValueError:
            amount = -1.0
        if not sep or not key or amount <= 0 or key.upper() in ("CPU", "GPU"):
            raise SweepError(f"--trial-resource {item!r} must be NAME=AMOUNT with AMOUNT > 0 "
                             "(CPUs and GPUs have their own flags)")
        out[key] = amount
    return out


def check_sweep_args(args) -> None:
    """Reject impossible values of the shared options (before anything runs)."""
    if args.keep_checkpoints < 1:
        raise SweepError(f"--keep-checkpoints={args.keep_checkpoints} must be >= 1 (a trial "
                         "resumes from its latest checkpoint)")
    if args.max_failures < 0:
        raise SweepError(f"--max-failures={args.max_failures} must be >= 0")
    args.trial_resources = trial_resources(getattr(args, "trial_resource", None))


def resume_conflicts(args, parser, saved: dict[str, Any]) -> None:
    """With --resume: refuse every flag that was given and differs from the stored sweep."""
    for dest, key in STORED_FLAGS.items():
        given = getattr(args, dest, None)
        if given is None or given == parser.get_default(dest):
            continue
        stored = saved.get(key)
        if dest == "trial_resource":
            given = trial_resources(given)
        if given != stored:
            flag = "--" + dest.replace("_", "-")
            raise SweepError(f"--resume: {flag}={given} differs from the stored sweep's "
                             f"{stored!r}; Ray restores a sweep with its original settings, so "
                             f"drop {flag} (or start a new sweep with another --name)")
    for dest in SPEC_FLAGS:
        if hasattr(args, dest) and getattr(args, dest) not in (None, False,
                                                               parser.get_default(dest)):
            flag = "--" + dest.replace("_", "-")
            raise SweepError(f"--resume: {flag} would change what the stored sweep trains; "
                             f"a resumed sweep keeps its own (see sweep.json); drop {flag}")
