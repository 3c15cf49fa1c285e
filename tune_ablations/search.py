"""`python -m tune_ablations.search --space lr`: Optuna + ASHA on a token budget.

Design choices:
- The search builds a `SweepPlan` and `sweep.run_sweep` runs it, as the grid does.
- OptunaSearch (TPE, seeded; or random / QMC) with the base config enqueued as the first point,
  so the search always reports where the reference stood.
- ASHA's time attribute is `tokens_seen`. Every trial evaluates at the same token milestones
  (multiples of the reference run's evaluation interval, in tokens), ASHA's grace period is the
  first milestone and its reduction factor an integer, so every rung falls on a report of every
  trial, whatever its batch size and sequence length.
- The Optuna study lives in memory during the run (a persistent Optuna storage breaks
  `Tuner.restore` after a kill in Ray 2.x); afterwards `study.py` rebuilds it from the results
  with honest states (ASHA-stopped trials PRUNED, diverged and errored FAIL) into `study.db`.
- `best.toml` keeps the spec unresolved (`iso_tokens = true`, the searched keys), so
  `train --config` and `grid --config` resolve it the same way the search did.
"""

from __future__ import annotations

import itertools
from datetime import datetime
from pathlib import Path
from typing import Any

from .cli import add_spec_args, build_parser, spec_from_args
from .config import METRIC, MODE, RANK_METRIC, SPACE_FILE, TIME_ATTR
from .plan import SweepPlan
from .resolve import reference_run, resolve
from .runtime import local_gpus
from .search_space import SearchSpace, build_param_space, find_space, load_space
from .sweep import (
    SweepError,
    add_sweep_args,
    default_gpus_per_trial,
    sweep_main,
)
from .sweep_args import trial_resources

SMOKE_SPACE = "lr"


def parser():
    ap = build_parser("search", "Optuna (TPE) + ASHA over a declarative search space, on "
                      "equal token budgets.")
    ap.add_argument("--space", help="a shipped space by name (lr, lr_batch, ...) or a TOML file")
    add_spec_args(ap, single=False)
    ap.add_argument("--num-samples", type=int, help="trials (default: the file's, else 16)")
    ap.add_argument("--max-concurrent", type=int, help="trials at once (default: what fits)")
    ap.add_argument("--sampler", choices=("tpe", "random", "qmc"), default="tpe",
                    help="Optuna sampler (default tpe)")
    ap.add_argument("--sampler-seed", type=int, default=0, help="seed of the Optuna sampler")
    ap.add_argument("--scheduler", choices=("asha", "none"), default="asha",
                    help="early stopping (default asha)")
    ap.add_argument("--reduction-factor", type=int, default=3, help="ASHA eta (an integer, so "
                    "rungs fall on evaluation milestones)")
    ap.add_argument("--asha-probes", choices=("auto", "on", "off"), default="auto",
                    help="rank trials at each ASHA rung by a cooldown probe's decayed loss "
                    "(needs schedule=wsd; auto: on with wsd)")
    ap.add_argument("--evals", type=int, default=8,
                    help="evaluations per reference run: ASHA can only stop a trial when it "
                    "reports (ignored if eval_every is set in the space or --set)")
    add_sweep_args(ap, "search")
    ap.add_argument("--smoke-test", action="store_true",
                    help="the lr space at the tiny preset, 4 samples, under a minute on CPU")
    return ap


def make_sampler(kind: str, seed: int):
    import optuna

    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)


def make_tune_config(rec: dict[str, Any], space: SearchSpace, preset: str, milestone: int,
                     max_t: int):
    """Ray's TuneConfig: OptunaSearch with the base point first, and ASHA whose grace period is
    the first evaluation milestone (rungs at milestone x eta^k, each a milestone)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    scheduler = None
    if rec["scheduler"] == "asha":
        # Schedule-aware: with cooldown probes at the rungs, rank by the probe's decayed loss.
        scheduler = ASHAScheduler(time_attr=TIME_ATTR, max_t=max_t, grace_period=milestone,
                                  reduction_factor=rec["reduction_factor"],
                                  metric=RANK_METRIC if rec.get("asha_probes") else METRIC,
                                  mode=MODE)
    point = space.baseline_point(preset)
    searcher = OptunaSearch(sampler=make_sampler(rec["sampler"], rec["sampler_seed"]),
                            points_to_evaluate=[point] if point else None, metric=METRIC,
                            mode=MODE)
    return tune.TuneConfig(search_alg=searcher, scheduler=scheduler,
                           num_samples=rec["num_samples"],
                           max_concurrent_trials=rec["max_concurrent"], reuse_actors=True)


def rung_probes(milestone: int, eta: int, budget: int, min_rung: float) -> str:
    """probe_tokens at every ASHA rung below every trial's budget whose cooldown is at least
    one step of every trial (`min_rung`: the largest tokens per step / decay_fraction)."""
    rungs, r = [], milestone
    while r < budget:
        if r >= min_rung:
            rungs.append(r)
        r *= eta
    return ",".join(str(r) for r in rungs)


def corner_specs(space: SearchSpace, shared: dict[str, Any]) -> list[dict[str, Any]]:
    """Every corner of the space (bounds x choices) as a run spec."""
    return [{**shared, **dict(zip(space.params, c))}
            for c in itertools.product(*(p.corners() for p in space.params.values()))]


def _check_args(args) -> None:
    if args.evals < 1:
        raise ValueError(f"--evals={args.evals} must be >= 1")
    if args.num_samples is not None and args.num_samples < 1:
        raise ValueError(f"--num-samples={args.num_samples} must be >= 1")
    if args.reduction_factor < 2:
        raise ValueError(f"--reduction-factor={args.reduction_factor} must be an integer >= 2")
    if args.max_concurrent is not None and args.max_concurrent < 1:
        raise ValueError(f"--max-concurrent={args.max_concurrent} must be >= 1")


def _new_record(args) -> dict[str, Any]:
    """sweep.json's record of a new search (its space, spec and scheduler settings)."""
    _check_args(args)
    if not args.space:
        raise SweepError("--space is required: a shipped space (lr, lr_batch, lr_batch_seq_dim,"
                         " ...) or a TOML file")
    space = load_space(find_space(args.space))
    if args.preset is None and space.preset:
        args.preset = space.preset
    spec, overrides = spec_from_args(args, smoke=args.smoke_test,
                                       n_gpus=getattr(args, "n_gpus", None))
    for key in overrides:
        if key in space.params:
            raise ValueError(f"--set {key}={overrides[key]!r}: {key} is searched by "
                             f"{space.path.name}; drop it or use another space")
    shared = {**space.base_flat(spec["preset"]), **spec}
    derived = []
    if "eval_every" not in shared:
        ref = reference_run(spec["preset"], shared)
        shared["eval_every"] = max(1, ref.steps // args.evals)
        derived.append("eval_every")
    wsd = resolve(shared).optim.schedule == "wsd"
    if args.asha_probes == "on" and not wsd:
        raise ValueError("--asha-probes on needs schedule=wsd (e.g. --set schedule=wsd): "
                         "cooldowns branch from a stable phase")
    probes = args.scheduler == "asha" and wsd and args.asha_probes != "off"
    return {"space": str(space.path), "shared": shared, "derived_keys": derived,
            "asha_probes": probes,
            "num_samples": args.num_samples or space.num_samples or 16,
            "sampler": args.sampler, "sampler_seed": args.sampler_seed,
            "scheduler": args.scheduler, "reduction_factor": args.reduction_factor,
            "max_concurrent": args.max_concurrent}


def build_plan(args, saved: dict[str, Any] | None) -> SweepPlan:
    """The search's plan, from the command line or (resume) from its sweep.json."""
    if saved is not None:
        rec, space = saved, load_space(Path(args.storage).expanduser() / args.name / SPACE_FILE)
        cpus, gpus, name = saved["cpus_per_trial"], saved["gpus_per_trial"], args.name
        resources = saved.get("trial_resources", {})
    else:
        rec = _new_record(args)
        space = load_space(rec["space"])
        cpus = args.cpus_per_trial
        gpus = args.gpus_per_trial if args.gpus_per_trial is not None else \
            default_gpus_per_trial(args.max_concurrent or 4,
                                   getattr(args, "n_gpus", None) or local_gpus())
        name = args.name or f"search-{space.path.stem}-{datetime.now():%Y%m%d-%H%M%S}"
        resources = trial_resources(getattr(args, "trial_resource", None))
    shared = rec["shared"]
    if rec.get("asha_probes") and "probe_tokens" not in shared:
        corners = [resolve(s) for s in corner_specs(space, shared)]
        shared["probe_tokens"] = rung_probes(
            resolve(shared).eval.eval_every_tokens, rec["reduction_factor"],
            min(c.total_tokens for c in corners),
            max(c.tokens_per_step / c.optim.decay_fraction for c in corners))
        rec["derived_keys"] = [*rec.get("derived_keys", []), "probe_tokens"]
    specs = corner_specs(space, shared)
    configs = [resolve(s) for s in specs]
    base = resolve(shared)
    milestone = base.eval.eval_every_tokens
    max_t = max(c.total_tokens for c in configs)
    preset = shared["preset"]

    def tune_config():
        return make_tune_config(rec, space, preset, milestone, max_t)

    def after(exp: Path, df) -> None:
        from .study import finish_search

        finish_search(exp, df, space, rec,
                      Path(args.cache_dir) if getattr(args, "cache_dir", None) else None)

    return SweepPlan(
        kind="search", name=name, configs=configs,
        labels=["corner:" + ",".join(f"{k}={s[k]}" for k in space.params) for s in specs],
        param_space=build_param_space(space, preset, shared), parameter_columns=list(
            space.params), record={**rec, "grace_tokens": milestone, "max_t": max_t},
        cpus=cpus, gpus=gpus, tune_config=tune_config, after=after,
        files={SPACE_FILE: space.path}, resources=resources, live=space)


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.smoke_test:
        args.space = args.space or SMOKE_SPACE
        args.num_samples = args.num_samples or 4
    return sweep_main(ap, args, "search", build_plan)


if __name__ == "__main__":
    raise SystemExit(main())
