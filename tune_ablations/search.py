"""`python -m tune_ablations.search --space lr`: Optuna + ASHA on equal token budgets.

Design choices:
- The search's plan (`sweeps.search_plan`) and the grid's run through one sweep skeleton
  (`sweeps.sweep`): Optuna's ask/tell with honest trial states, ASHA on token milestones
  (`sweeps.early_stopping`), the study written as trials report.
- `best.toml` is the best trial's RunSpec (`train --config` / `grid --config` read it back).
"""

from __future__ import annotations

import argparse

from .cli import build_parser
from .spec.io import fail, say
from .spec.runspec import add_spec_args
from .sweeps.options import SearchOptions, add_options
from .sweeps.search_plan import build_plan, smoke_defaults
from .sweeps.sweep import SweepRun, add_sweep_args, execute


def parser() -> argparse.ArgumentParser:
    ap = build_parser("search", "Optuna (TPE) + ASHA over a declarative search space, on "
                      "equal token budgets.")
    add_spec_args(ap, single=False, arms=False)
    add_options(ap, SearchOptions, "the search")
    add_sweep_args(ap, "search")
    ap.add_argument("--smoke-test", action="store_true", help="the lr space at the tiny "
                    "preset, 4 samples, in a temporary folder unless --storage is given")
    return ap


def run(args: argparse.Namespace, ap: argparse.ArgumentParser) -> SweepRun:
    """The search for parsed arguments (the command line and the Python API both call it)."""
    if args.smoke_test:
        smoke_defaults(args, ap)
    return execute(args, "search", build_plan)


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    outcome = run(args, ap)
    if outcome.error is not None:
        return fail(outcome.error)
    if outcome.experiment is not None:
        say(f"results: {outcome.experiment}")
        say(f"report:  python -m tune_ablations.analysis {outcome.experiment}")
    return outcome.code


if __name__ == "__main__":
    raise SystemExit(main())
