"""A grid's plan: a question's arms x seeds, from the command line or (resume) from sweep.json.

Design choices:
- The arms are the question's (`--arms FILE`, `--arm`; the six reference ablations by
  default); `--ablations` picks some of them. Every arm is resolved with the real vocabulary
  and checked before any compute: one that cannot be built, changes nothing once resolved,
  equals another, or cannot reach its budget is refused by name.
- The costliest arms start first within each look (longest-processing-time order).
- sweep.json stores the spec (with the arms), the options and the plan itself (each arm's
  tokens, the first look, the lr sweep's tokens): `status` reads it instead of re-deriving it.
  The question is stored verbatim (`question.toml`) beside it.
- `--tune-lr K`: the lr sweep first (K lrs per arm, early stopping within each arm), then the
  seeds at each arm's chosen lr (`lr_tuning`).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from ..results.sequential import FIRST_LOOK
from ..spec.arms import BASELINE
from ..spec.config import RunConfig
from ..spec.flops import flops_per_token
from ..spec.names import LR_REPLICATE_SEED, LR_SWEEP_SEED, QUESTION_FILE
from ..spec.presets import default_preset, time_budget
from ..spec.questions import REFERENCE, SHIPPED, find_question, question_toml
from ..spec.resolve import check_arms, with_eval_contexts
from ..spec.runspec import RunSpec, spec_from_args
from ..training.resolved import Resolver
from .cluster import default_gpus_per_trial
from .options import (
    GridOptions,
    ResourceOptions,
    options_from_args,
    refuse_changes,
    refuse_spec_changes,
    restore,
    stored,
)
from .plan import SweepPlan
from .tuner import arms_progress


def check_selection(spec: RunSpec, arms: tuple[str, ...], seeds: int | str) -> None:
    """`--ablations` names arms of the question, each once; `--seeds auto` needs the
    baseline."""
    from ..spec.config import unknown_key_error

    for name in arms:
        if name not in spec.arm_names:
            raise unknown_key_error(name, spec.arm_names, what="ablation")
    if len(set(arms)) != len(arms):
        raise ValueError(f"--ablations={list(arms)} lists a name twice")
    if seeds == "auto" and BASELINE not in arms:
        raise ValueError("--seeds auto compares every arm with the baseline: add baseline to "
                         "--ablations, or give a fixed --seeds N")


def cost(c: RunConfig) -> float:
    """Training FLOPs of a resolved run."""
    return flops_per_token(c.model, c.data.vocab_size, c.data.seq_len) * c.total_tokens


def resolve_arms(spec: RunSpec, arms: list[str], resolver: Resolver) -> dict[str, RunConfig]:
    """Every arm's config (at seed 0), refused by name when it cannot be built or reach its
    budget, changes nothing once resolved, or equals another arm."""
    configs = {a: resolver.config(replace(spec, ablation=a)) for a in arms}
    check_arms(spec, configs)
    return configs


def question_text(args, spec: RunSpec) -> str:
    """What the sweep stores as question.toml: the --arms file verbatim (arms given with --arm
    appended as tables), the arms as a question file, or the shipped reference question."""
    file = getattr(args, "arms", None)
    extra = getattr(args, "arm", None)
    text = "" if not file else file if "\n" in file else find_question(file).read_text()
    if not file and not spec.arms:
        return (SHIPPED / f"{REFERENCE}.toml").read_text()
    if extra or not file:
        from ..spec.runspec import parse_arm_flags

        added = question_toml(parse_arm_flags(extra))
        text += ("\n# Arms given on the command line (--arm):\n" if file else "") + added
    return text


def _new(args, n_gpus: int, resolver: Resolver):
    spec, _ = spec_from_args(args, default_preset=default_preset(n_gpus))
    opts, _ = options_from_args(GridOptions, args)
    arms = opts.ablations or tuple(spec.arm_names)
    check_selection(spec, arms, opts.seeds)
    configs = resolve_arms(spec, list(arms), resolver)
    return spec, opts, configs, {QUESTION_FILE: question_text(args, spec)}


def _stored(args, record: dict, resolver: Resolver):
    spec, opts = RunSpec.from_dict(record["spec"]), restore(GridOptions, record["grid"])
    given_spec, names = spec_from_args(args, default_preset=spec.preset)
    refuse_spec_changes(spec, given_spec, names)
    given_opts, names = options_from_args(GridOptions, args)
    refuse_changes(opts, given_opts, names, what="the grid's arms and seeds")
    arms = list(opts.ablations or spec.arm_names)
    return spec, opts, {a: resolver.config(replace(spec, ablation=a)) for a in arms}, {}


def build_plan(args, record: dict | None, n_gpus: int, resources: ResourceOptions,
               resolver: Resolver) -> SweepPlan:
    """The grid's plan, from the command line or (resume) from its sweep.json."""
    stored_spec, opts, configs, files = (_stored(args, record, resolver) if record
                                         else _new(args, n_gpus, resolver))
    by_cost = sorted(configs, key=lambda a: -cost(configs[a]))
    spec = with_eval_contexts(stored_spec, by_cost)  # derived again on resume, never stored
    first = FIRST_LOOK if opts.seeds == "auto" else int(opts.seeds)
    trials = [replace(spec, ablation=a, seed=s) for s in range(first) for a in by_cost]
    budget = opts.time_budget if opts.time_budget is not None else time_budget(spec.preset)
    gpus = resources.gpus_per_trial if resources.gpus_per_trial is not None else \
        (record or {}).get("gpus_per_trial", default_gpus_per_trial(len(trials), n_gpus))
    name = record["name"] if record else (args.name or
                                          f"grid-{spec.preset}-{datetime.now():%Y%m%d-%H%M%S}")

    def searcher(location: str, slots: int):
        from .searchers import ArmsSearcher

        return ArmsSearcher(by_cost, seeds=opts.seeds, max_seeds=opts.max_seeds,
                            time_budget=budget, slots=slots, experiment=location)

    max_trials = len(by_cost) * (opts.max_seeds if opts.seeds == "auto" else first)
    layout = {"arms": by_cost, "arm_tokens": {a: configs[a].total_tokens for a in by_cost},
              "first_seeds": first, "lr_sweep_tokens": 0}
    plan = SweepPlan(
        kind="grid", name=name, base=spec, trials=trials, planned=max_trials,
        searcher=searcher, record={"spec": stored_spec.to_dict(), "grid": stored(opts),
                                   "plan": layout},
        resources=resources, gpus=gpus, parameter_columns=["ablation", "seed"], files=files,
        show_best=False, progress=arms_progress(by_cost, opts.seeds, opts.max_seeds,
                                                len(by_cost) * opts.tune_lr))
    if not opts.tune_lr:
        return plan
    ref = configs.get(BASELINE) or resolver.config(replace(spec, ablation=BASELINE))
    return with_lr_tuning(plan, opts, by_cost, configs, ref, budget)


def with_lr_tuning(plan: SweepPlan, opts: GridOptions, arms: list[str],
                   configs: dict[str, RunConfig], ref: RunConfig, budget: float) -> SweepPlan:
    """`--tune-lr K`: the lr sweep first (K lrs per arm, early stopping within each arm), then
    the seeds at each arm's chosen lr (`lr_tuning`)."""
    from ..results.lr_curves import lr_grid, replicate_lrs
    from .lr_tuning import ArmHalving, rung_probe_tokens

    spec = plan.base
    centres = {a: configs[a].optim.lr for a in arms}
    grids = {a: lr_grid(centres[a], opts.tune_lr, opts.lr_span) for a in arms}
    sweep = [replace(spec, ablation=a, seed=LR_SWEEP_SEED).with_params(lr=lr)
             for a in arms for lr in grids[a]]
    probes = "" if "probe_tokens" in dict(spec.overrides) else rung_probe_tokens(
        ArmHalving(ref.eval.eval_every_tokens, ref.total_tokens).rungs,
        [configs[a] for a in arms])
    sweep = [s.with_params(probe_tokens=probes) for s in sweep] if probes else sweep
    replicates = [replace(spec, ablation=a, seed=LR_REPLICATE_SEED).with_params(lr=lr)
                  for a in arms for lr in replicate_lrs(centres[a], grids[a])]

    def searcher(location: str, slots: int):
        from .lr_tuning import TuneLrSearcher

        return TuneLrSearcher(arms, centres=centres, k=opts.tune_lr, span=opts.lr_span,
                              probes=probes, seeds=opts.seeds, max_seeds=opts.max_seeds,
                              time_budget=budget, slots=slots, experiment=location)

    def scheduler():
        from .lr_tuning import per_arm_scheduler

        return per_arm_scheduler(ref.eval.eval_every_tokens, ref.total_tokens, 3, centres)

    seeds = (f"{FIRST_LOOK}, then more for undecided arms" if opts.seeds == "auto"
             else str(opts.seeds))
    layout = {**plan.record["plan"], "lr_sweep_tokens": sum(
        configs[s.ablation].total_tokens for s in sweep + replicates)}
    sweep += replicates
    return replace(plan, trials=sweep, planned=plan.planned + len(sweep), searcher=searcher,
                   scheduler=scheduler, parameter_columns=["ablation", "seed", "lr"],
                   record={**plan.record, "plan": layout},
                   later=f"each arm's chosen lr with seeds 0.. ({seeds})")


def add_grid_arguments(ap) -> None:
    """A grid's options: what to train (the question), arms and seeds, where and how."""
    from ..spec.runspec import add_spec_args
    from .options import add_options
    from .sweep import add_sweep_args

    add_spec_args(ap, single=False)
    add_options(ap, GridOptions, "arms and seeds")
    add_sweep_args(ap, "grid")


def smoke_defaults(args, ap) -> None:
    """`--smoke-test`: the tiny preset, two arms, two seeds, a temporary folder."""
    import tempfile

    args.preset = "tiny"
    if not getattr(args, "arms", None) and not getattr(args, "arm", None):
        args.ablations = args.ablations or [BASELINE, "high_lr"]
    args.seeds = args.seeds if args.seeds is not None else 2
    if args.storage == ap.get_default("storage") and not args.resume:
        args.storage = tempfile.mkdtemp(prefix="ta-smoke-")

