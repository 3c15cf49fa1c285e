"""`python -m tune_ablations.grid`: the six reference ablations x seeds as one Ray Tune sweep.

Design choices:
- The grid builds a `SweepPlan` and `sweep.run_sweep` runs it: every trial's config is resolved
  and validated, and the corpus tokenized and cached, in the driver before Ray starts.
- `--iso-tokens` trains every ablation on the baseline's token count (the reference's
  "controlled data exposure"); by default each keeps its published step count, as the reference.
  Every arm evaluates at the same token milestones either way.
- An override of a key that an arm defines (`--set lr=...` would make high_lr, low_lr and
  large_batch equal to the baseline) is refused unless `--force-set`, which sweep.json records.
- The costliest ablations start first (longest-processing-time order).
- Resume: the sweep's own settings come back from sweep.json, so a resumed sweep is the same.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .cli import add_spec_args, build_parser, spec_from_args
from .config import METRIC, MODE, RunConfig, unknown_key_error
from .plan import SweepPlan
from .resolve import ABLATIONS, check_collapse, resolve
from .runtime import local_gpus
from .sweep import (
    add_sweep_args,
    default_gpus_per_trial,
    sweep_main,
)
from .sweep_args import trial_resources

SMOKE_ABLATIONS = ["baseline", "high_lr"]


def parser():
    ap = build_parser("grid", "The six reference ablations x seeds as one Ray Tune sweep.")
    add_spec_args(ap, single=False)
    ap.add_argument("--ablations", nargs="+", default=list(ABLATIONS), metavar="NAME",
                    help=f"subset of: {', '.join(ABLATIONS)}")
    ap.add_argument("--seeds", type=int, default=1, help="seeds per ablation (3 for claims)")
    add_sweep_args(ap, "grid")
    ap.add_argument("--smoke-test", action="store_true",
                    help="tiny preset, two ablations, seconds per trial")
    return ap


def _check_arms(ablations: list[str], seeds: int) -> None:
    if seeds < 1:
        raise ValueError(f"--seeds={seeds} must be >= 1")
    for name in ablations:
        if name not in ABLATIONS:
            raise unknown_key_error(name, list(ABLATIONS), what="ablation")
    if len(set(ablations)) != len(ablations):
        raise ValueError(f"--ablations={ablations} lists a name twice")


def _cost(c: RunConfig) -> float:
    from .model import flops_per_token

    return flops_per_token(c.model, c.data.vocab_size, c.data.seq_len) * c.total_tokens


def build_plan(args, saved: dict[str, Any] | None) -> SweepPlan:
    """The grid's plan, from the command line or (resume) from its sweep.json."""
    if saved is not None:
        shared, ablations, seeds = saved["shared"], saved["ablations"], saved["seeds"]
        forced, cpus, gpus = saved.get("forced_overrides", {}), saved["cpus_per_trial"], \
            saved["gpus_per_trial"]
        name, resources = args.name, saved.get("trial_resources", {})
    else:
        ablations, seeds = args.ablations, args.seeds
        _check_arms(ablations, seeds)
        shared, overrides = spec_from_args(args, smoke=args.smoke_test,
                                       n_gpus=getattr(args, "n_gpus", None))
        for a in ablations:  # bad values first, named by the config's own rule
            resolve({**shared, "ablation": a})
        forced = check_collapse(overrides, ablations, force=args.force_set)
        cpus = args.cpus_per_trial
        gpus = args.gpus_per_trial if args.gpus_per_trial is not None else \
            default_gpus_per_trial(len(ablations) * seeds,
                                   getattr(args, "n_gpus", None) or local_gpus())
        name = args.name or f"grid-{shared['preset']}-{datetime.now():%Y%m%d-%H%M%S}"
        resources = trial_resources(getattr(args, "trial_resource", None))
    configs = [resolve({**shared, "ablation": a, "seed": s}) for a in ablations
               for s in range(seeds)]
    by_cost = sorted(ablations, key=lambda a: -sum(_cost(c) for c in configs if c.name == a))

    def tune_config():
        from ray import tune

        # One worker process runs trial after trial: imports, Ray start-up and the token
        # cache are paid once per worker, not per trial (trial files go to each trial's own
        # working directory, so reuse cannot mix them up).
        return tune.TuneConfig(metric=METRIC, mode=MODE, reuse_actors=True)

    from ray import tune

    return SweepPlan(
        kind="grid", name=name, configs=configs,
        labels=[f"{c.name}/seed{c.seed}" for c in configs],
        param_space={**shared, "ablation": tune.grid_search(by_cost),
                     "seed": tune.grid_search(list(range(seeds)))},
        parameter_columns=["ablation", "seed"],
        record={"shared": shared, "ablations": ablations, "seeds": seeds},
        cpus=cpus, gpus=gpus, tune_config=tune_config, forced=forced, resources=resources)


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.smoke_test and args.ablations == list(ABLATIONS):
        args.ablations = SMOKE_ABLATIONS
    return sweep_main(ap, args, "grid", build_plan)


if __name__ == "__main__":
    raise SystemExit(main())
