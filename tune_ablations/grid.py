"""`python -m tune_ablations.grid`: a question's arms as one Ray Tune sweep, ending with an
answer: every arm against the baseline at equal tokens, with enough seeds to tell. The question
is the six reference ablations unless `--arms FILE` or `--arm NAME:KEY=VALUE,...` states
another.

Design choices:
- Equal tokens by default: every arm trains the baseline's token budget (`--iso-flops`: its
  training FLOPs; `--published-steps` reproduces the reference's step counts, and every
  comparison carries the confound).
- `--seeds auto` (the default): three seeds per arm, then more only for arms whose comparison is
  still undecided, by a group-sequential test that controls the familywise error across arms
  and looks (`results.sequential`), up to `--max-seeds` or the time budget. `--seeds N` keeps a
  fixed count.
- The plan (`sweeps.grid_plan`) refuses, before any compute, an arm that cannot be built,
  changes nothing once resolved, equals another arm, or cannot reach its budget.
- `--resume` continues the stored sweep; the same command with `--resume` appended is accepted,
  a changed setting (the question's arms included) is refused by name with both values.
- `--json`: the answer as one JSON object per arm on stdout, nothing else there.
"""

from __future__ import annotations

import argparse
import json

from .cli import build_parser
from .spec.io import fail, log, say
from .sweeps.grid_plan import add_grid_arguments, build_plan, smoke_defaults
from .sweeps.sweep import SweepRun, execute


def parser() -> argparse.ArgumentParser:
    ap = build_parser("grid", "A question's arms (by default the six reference ablations) as "
                      "one Ray Tune sweep, ending with every arm's difference from the baseline "
                      "and its verdict.")
    add_grid_arguments(ap)
    ap.add_argument("--smoke-test", action="store_true", help="tiny preset, two arms, two "
                    "seeds, in a temporary folder unless --storage is given")
    return ap


def run(args: argparse.Namespace, ap: argparse.ArgumentParser) -> SweepRun:
    """The grid for parsed arguments (the command line and the Python API both call it)."""
    if args.smoke_test:
        smoke_defaults(args, ap)
    return execute(args, "grid", build_plan)


def print_end(outcome: SweepRun, *, as_json: bool) -> None:
    """The answer (lines, or one JSON object per arm), then where the results are."""
    from .results.frames import load
    from .results.verdicts import answer_records, answer_text, experiment_answer

    exp = outcome.experiment
    res = load(exp)
    ans, decisions = experiment_answer(exp, res)
    if ans is not None:
        if as_json:
            for record in answer_records(ans, decisions):
                say(json.dumps(record))
        else:
            for line in answer_text(ans, decisions, res):
                say(line)
    where = log if as_json else say
    where(f"results: {exp}")
    where(f"report:  python -m tune_ablations.analysis {exp}")


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    outcome = run(args, ap)
    if outcome.error is not None:
        return fail(outcome.error)
    if outcome.experiment is not None:
        try:
            print_end(outcome, as_json=args.json)
        except Exception as exc:  # reading the answer must never cost the results
            log(f"error: after the sweep: {type(exc).__name__}: {exc} (results are in "
                f"{outcome.experiment})")
            return max(outcome.code, 1)
    return outcome.code


if __name__ == "__main__":
    raise SystemExit(main())
