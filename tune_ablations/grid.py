"""`python -m tune_ablations.grid`: the six reference ablations as one Ray Tune sweep, ending with
an answer: every arm against the baseline at equal tokens, with enough seeds to tell.

Design choices:
- Equal tokens by default: every arm trains the baseline's token budget (`--published-steps`
  reproduces the reference's step counts; then every comparison carries the confound).
- `--seeds auto` (the default): two seeds per arm, then more only for arms whose comparison is
  still undecided, by a group-sequential test that controls the familywise error across arms
  and looks (`results.sequential`), up to `--max-seeds` or the time budget. `--seeds N` keeps a
  fixed count.
- An override of a key that an arm defines (`--set lr=...` would make high_lr, low_lr and
  large_batch equal to the baseline) is refused unless `--force-set`, which sweep.json records.
- The costliest arms start first within each look (longest-processing-time order).
- `--resume` continues the stored sweep; the same command with `--resume` appended is accepted,
  a changed setting is refused by name with both values.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from datetime import datetime

from .cli import build_parser
from .spec.config import RunConfig, unknown_key_error
from .spec.io import say
from .spec.presets import ABLATIONS, default_preset
from .spec.resolve import check_collapse, resolve
from .spec.runspec import RunSpec, add_spec_args, spec_from_args
from .sweeps.cluster import default_gpus_per_trial
from .sweeps.options import (
    GridOptions,
    ResourceOptions,
    add_options,
    options_from_args,
    refuse_changes,
    refuse_spec_changes,
    restore,
    stored,
)
from .sweeps.plan import SweepPlan
from .sweeps.sweep import add_sweep_args, sweep_main
from .sweeps.tuner import arms_progress

SMOKE_ABLATIONS = ("baseline", "high_lr")
CPU_TIME_BUDGET = 300.0  # seconds: the default command answers in about 6 minutes on 2 cores


def parser() -> argparse.ArgumentParser:
    ap = build_parser("grid", "The six reference ablations as one Ray Tune sweep, ending with "
                      "every arm's difference from the baseline and its verdict.")
    add_spec_args(ap, single=False)
    add_options(ap, GridOptions, "arms and seeds")
    add_sweep_args(ap, "grid")
    ap.add_argument("--smoke-test", action="store_true", help="tiny preset, two arms, two "
                    "seeds, in a temporary folder unless --storage is given")
    return ap


def check_arms(ablations: tuple[str, ...], seeds: int | str) -> None:
    for name in ablations:
        if name not in ABLATIONS:
            raise unknown_key_error(name, list(ABLATIONS), what="ablation")
    if len(set(ablations)) != len(ablations):
        raise ValueError(f"--ablations={list(ablations)} lists a name twice")
    if seeds == "auto" and "baseline" not in ablations:
        raise ValueError("--seeds auto compares every arm with the baseline: add baseline to "
                         "--ablations, or give a fixed --seeds N")


def cost(c: RunConfig) -> float:
    from .spec.flops import flops_per_token

    return flops_per_token(c.model, c.data.vocab_size, c.data.seq_len) * c.total_tokens


def _new(args, n_gpus: int) -> tuple[RunSpec, GridOptions, dict[str, list[str]]]:
    spec, _ = spec_from_args(args, default_preset=default_preset(n_gpus))
    opts, _ = options_from_args(GridOptions, args)
    arms = opts.ablations or tuple(ABLATIONS)
    check_arms(arms, opts.seeds)
    for a in arms:  # bad values first, named by the config's own rule
        resolve(replace(spec, ablation=a))
    forced = check_collapse(dict(spec.overrides), arms, force=spec.force)
    return spec, opts, forced


def _stored(args, record: dict) -> tuple[RunSpec, GridOptions, dict[str, list[str]]]:
    spec, opts = RunSpec.from_dict(record["spec"]), restore(GridOptions, record["grid"])
    given_spec, names = spec_from_args(args, default_preset=spec.preset)
    refuse_spec_changes(spec, given_spec, names)
    given_opts, names = options_from_args(GridOptions, args)
    refuse_changes(opts, given_opts, names, what="the grid's arms and seeds")
    return spec, opts, record.get("forced_overrides", {})


def build_plan(args, record: dict | None, n_gpus: int, resources: ResourceOptions
               ) -> SweepPlan:
    """The grid's plan, from the command line or (resume) from its sweep.json."""
    spec, opts, forced = _stored(args, record) if record else _new(args, n_gpus)
    arms = list(opts.ablations or ABLATIONS)
    first = 2 if opts.seeds == "auto" else int(opts.seeds)
    by_cost = sorted(arms, key=lambda a: -cost(resolve(replace(spec, ablation=a))))
    trials = [replace(spec, ablation=a, seed=s) for s in range(first) for a in by_cost]
    budget = opts.time_budget if opts.time_budget is not None else (
        CPU_TIME_BUDGET if spec.preset == "cpu" else 0.0)
    gpus = resources.gpus_per_trial if resources.gpus_per_trial is not None else \
        (record or {}).get("gpus_per_trial", default_gpus_per_trial(len(trials), n_gpus))
    name = record["name"] if record else (args.name or
                                          f"grid-{spec.preset}-{datetime.now():%Y%m%d-%H%M%S}")

    def searcher(location: str, slots: int):
        from .sweeps.searchers import ArmsSearcher

        return ArmsSearcher(by_cost, seeds=opts.seeds, max_seeds=opts.max_seeds,
                            time_budget=budget, slots=slots, experiment=location)

    max_trials = len(arms) * (opts.max_seeds if opts.seeds == "auto" else first)
    plan = SweepPlan(
        kind="grid", name=name, base=spec, trials=trials, planned=max_trials,
        searcher=searcher, record={"spec": spec.to_dict(), "grid": stored(opts)},
        resources=resources, gpus=gpus, parameter_columns=["ablation", "seed"],
        forced=forced, after=print_answer, show_best=False,
        progress=arms_progress(by_cost, opts.seeds, opts.max_seeds,
                               len(arms) * opts.tune_lr))
    return with_lr_tuning(plan, opts, by_cost, budget) if opts.tune_lr else plan


def with_lr_tuning(plan: SweepPlan, opts: GridOptions, arms: list[str], budget: float
                   ) -> SweepPlan:
    """`--tune-lr K`: the lr sweep first (K lrs per arm, early stopping within each arm), then
    the seeds at each arm's chosen lr (`sweeps.lr_tuning`)."""
    from .results.lr_curves import lr_grid
    from .spec.names import LR_SWEEP_SEED

    spec = plan.base
    centres = {a: resolve(replace(spec, ablation=a)).optim.lr for a in arms}
    ref = resolve(replace(spec, ablation="baseline"))
    sweep = [replace(spec, ablation=a, seed=LR_SWEEP_SEED).with_params(lr=lr)
             for a in arms for lr in lr_grid(centres[a], opts.tune_lr, opts.lr_span)]

    def searcher(location: str, slots: int):
        from .sweeps.lr_tuning import TuneLrSearcher

        return TuneLrSearcher(arms, centres=centres, k=opts.tune_lr, span=opts.lr_span,
                              seeds=opts.seeds, max_seeds=opts.max_seeds, time_budget=budget,
                              slots=slots, experiment=location)

    def scheduler():
        from .sweeps.lr_tuning import per_arm_scheduler

        return per_arm_scheduler(ref.eval.eval_every_tokens, ref.total_tokens, 3, centres)

    seeds = "2, then more for undecided arms" if opts.seeds == "auto" else str(opts.seeds)
    return replace(plan, trials=sweep, planned=plan.planned + len(sweep), searcher=searcher,
                   scheduler=scheduler, parameter_columns=["ablation", "seed", "lr"],
                   later=f"each arm's chosen lr with seeds 0.. ({seeds})")


def print_answer(exp, res, datasets) -> None:
    """The answer at the end of the grid (stdout): one line per arm."""
    from .results.answer import answer, answer_lines
    from .spec.names import DECISIONS_FILE

    decisions = exp.read_json(DECISIONS_FILE) or {}
    ans = answer(res, decisions)
    if ans is None:
        return
    tuned = decisions.get("tune_lr")
    say("")
    say("Answer (each arm's final val_loss minus the baseline's; negative is better"
        + (", every arm at its own chosen lr" if tuned else "") + "):")
    for line in answer_lines(ans):
        say(f"  {line}")
    if tuned:
        from .results.lr_curves import fixed_lr
        from .results.report import changed_section

        say("  chosen lr: " + ", ".join(f"{a} {lr:.3g}" for a, lr in tuned["chosen"].items()))
        fixed = fixed_lr(res.trials, tuned["centres"], ans.pooled_sd, ans.pooled_df)
        for line in changed_section(fixed, ans)[4:]:
            if line:
                say(f"  {line}")


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.smoke_test:
        args.preset = "tiny"
        args.ablations = args.ablations or list(SMOKE_ABLATIONS)
        args.seeds = args.seeds if args.seeds is not None else 2
        if args.storage == ap.get_default("storage") and not args.resume:
            args.storage = tempfile.mkdtemp(prefix="ta-smoke-")
    return sweep_main(args, "grid", build_plan)


if __name__ == "__main__":
    raise SystemExit(main())
