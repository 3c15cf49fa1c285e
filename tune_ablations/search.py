"""`python -m tune_ablations.search --space lr`: Optuna + ASHA on equal token budgets.

Design choices:
- The search builds a `SweepPlan` and `sweeps.sweep.run_sweep` runs it, as the grid does.
- Optuna's ask/tell (`sweeps.searchers.OptunaSearcher`: TPE, seeded; or random / QMC) with the
  base config tried first, so the search always reports where the reference stood. ASHA-stopped
  trials reach the sampler as PRUNED with their intermediate values, diverged ones as FAIL.
- The study is written as trials report (SQLite in the experiment, or `--study-storage`, e.g.
  PostgreSQL shared by a cluster), so optuna-dashboard follows the search live.
- ASHA's time attribute is `tokens_seen`. Every trial evaluates at the same token milestones
  (multiples of the reference run's evaluation interval, in tokens), ASHA's grace period is the
  first milestone and its reduction factor an integer, so every rung falls on a report of every
  trial, whatever its batch size and sequence length.
- `best.toml` is the best trial's RunSpec (`train --config` / `grid --config` read it back).
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from .cli import build_parser
from .spec.names import METRIC, MODE, RANK_METRIC, SPACE_FILE, TIME_ATTR
from .spec.presets import default_preset
from .spec.resolve import reference_run, resolve
from .spec.runspec import RunSpec, add_spec_args, apply_flat, spec_from_args
from .sweeps.cluster import default_gpus_per_trial
from .sweeps.options import (
    ResourceOptions,
    SearchOptions,
    SweepError,
    add_options,
    options_from_args,
    refuse_changes,
    refuse_spec_changes,
    restore,
    stored,
    with_secrets,
)
from .sweeps.plan import SweepPlan
from .sweeps.search_space import SearchSpace, find_space, load_space, parse_space
from .sweeps.sweep import add_sweep_args, sweep_main
from .sweeps.tuner import samples_progress

SMOKE_SPACE = "lr"


def parser() -> argparse.ArgumentParser:
    ap = build_parser("search", "Optuna (TPE) + ASHA over a declarative search space, on "
                      "equal token budgets.")
    add_spec_args(ap, single=False)
    add_options(ap, SearchOptions, "the search")
    add_sweep_args(ap, "search")
    ap.add_argument("--smoke-test", action="store_true", help="the lr space at the tiny "
                    "preset, 4 samples, in a temporary folder unless --storage is given")
    return ap


def rung_probes(milestone: int, eta: int, budget: int, min_rung: float) -> str:
    """probe_tokens at every ASHA rung below every trial's budget whose cooldown is at least
    one step of every trial (`min_rung`: the largest tokens per step / decay_fraction)."""
    rungs, r = [], milestone
    while r < budget:
        if r >= min_rung:
            rungs.append(r)
        r *= eta
    return ",".join(str(r) for r in rungs)


def _derive(space: SearchSpace, base: RunSpec, opts: SearchOptions) -> tuple[RunSpec, list]:
    """The settings a search derives (its evaluation cadence, rung probes): overrides of the
    base that best.toml leaves out."""
    derived: list[str] = []
    if "eval_every" not in dict(base.overrides):
        base, _ = apply_flat(base, {"eval_every": max(1, reference_run(base).steps //
                                                      opts.evals)})
        derived.append("eval_every")
    wsd = resolve(base).optim.schedule == "wsd"
    if opts.asha_probes == "on" and not wsd:
        raise ValueError("--asha-probes on needs schedule=wsd (e.g. --set schedule=wsd): "
                         "cooldowns branch from a stable phase")
    if opts.scheduler == "asha" and wsd and opts.asha_probes != "off" and \
            "probe_tokens" not in dict(base.overrides):
        corners = [resolve(c) for c in space.corners(base)]
        probes = rung_probes(resolve(base).eval.eval_every_tokens, opts.reduction_factor,
                             min(c.total_tokens for c in corners),
                             max(c.tokens_per_step / c.optim.decay_fraction for c in corners))
        base, _ = apply_flat(base, {"probe_tokens": probes})
        derived.append("probe_tokens")
    return base, derived


def _options(args) -> tuple[SearchOptions, set[str]]:
    """The search's options as given, `--study-storage`'s password moved out of its URL."""
    from .sweeps.study import study_url

    opts, given = options_from_args(SearchOptions, args)
    return replace(opts, study_storage=study_url(opts.study_storage)), given


def _new(args, n_gpus: int) -> tuple[SearchSpace, RunSpec, SearchOptions, list, str]:
    opts, _ = _options(args)
    if not opts.space:
        raise SweepError("--space is required: a shipped space (lr, lr_batch, "
                         "lr_batch_seq_dim, ...) or a TOML file")
    path = find_space(opts.space)
    space = load_space(path)
    spec, given = spec_from_args(args, default_preset=space.preset or default_preset(n_gpus))
    for key, value in spec.overrides:
        if key in space.params:
            raise ValueError(f"--set {key}={value!r}: {key} is searched by {path.name}; drop it "
                             "or use another space")
    base, derived = _derive(space, space.base_spec(spec, given | {"preset"}), opts)
    return space, base, opts, derived, path.read_text()


def _stored(args, record: dict, text: str):
    space = parse_space(text, Path(SPACE_FILE))
    base, opts = RunSpec.from_dict(record["spec"]), restore(SearchOptions, record["search"])
    given_spec, names = spec_from_args(args, default_preset=base.preset)
    refuse_spec_changes(base, given_spec, names - set(record.get("derived_keys", [])))
    given_opts, names = _options(args)
    refuse_changes(opts, given_opts, names, what="the search's settings")
    opts = with_secrets(opts, given_opts, names)
    return space, base, opts, record.get("derived_keys", []), text


def build_plan(args, record: dict | None, n_gpus: int, resources: ResourceOptions
               ) -> SweepPlan:
    """The search's plan, from the command line or (resume) from its sweep.json."""
    if record:
        from .results.experiment import open_experiment

        text = open_experiment(args.storage, record["name"]).read_text(SPACE_FILE)
        space, base, opts, derived, text = _stored(args, record, text)
        name = record["name"]
    else:
        space, base, opts, derived, text = _new(args, n_gpus)
        name = args.name or f"search-{space.path.stem}-{datetime.now():%Y%m%d-%H%M%S}"
    corners = space.corners(base)
    milestone = resolve(base).eval.eval_every_tokens
    max_t = max(resolve(c).total_tokens for c in corners)
    samples = opts.num_samples or space.num_samples or 16
    gpus = resources.gpus_per_trial if resources.gpus_per_trial is not None else \
        (record or {}).get("gpus_per_trial",
                           default_gpus_per_trial(opts.max_concurrent or 4, n_gpus))
    probes = "probe_tokens" in derived
    points, later = planned_samples(space, base, opts, samples)
    return SweepPlan(
        kind="search", name=name, base=base, trials=corners, planned=samples,
        searcher=_searcher(space, base, opts, samples), resources=resources, gpus=gpus,
        record={"spec": base.to_dict(), "search": stored(opts), "space": space.path.name,
                "searched": list(space.params), "derived_keys": derived,
                "grace_tokens": milestone, "max_t": max_t, "num_samples": samples},
        parameter_columns=list(space.params), files={SPACE_FILE: text},
        scheduler=_scheduler(opts, milestone, max_t, probes), after=_after(base, space, opts,
                                                                           derived),
        max_concurrent=opts.max_concurrent, later=later, progress=samples_progress(samples),
        preview=[base.with_params(**p) for p in points])


STARTUP = 4  # TPE's random start (sweeps.searchers.make_sampler): independent of any result


def planned_samples(space: SearchSpace, base: RunSpec, opts: SearchOptions, samples: int
                    ) -> tuple[list[dict[str, Any]], str]:
    """(the samples the search will draw that are known before any result, what follows).
    Random and QMC samplers draw every point from their seed alone: all are listed. TPE's
    first STARTUP points (the base config first, then seeded random ones) are too; the rest
    follow from the losses, so only their number is said."""
    import optuna

    from .sweeps.searchers import _quiet, make_sampler

    known = samples if opts.sampler in ("random", "qmc") else min(samples, STARTUP)
    with _quiet(optuna):
        study = optuna.create_study(sampler=make_sampler(opts.sampler, opts.sampler_seed))
        first = space.baseline_point(base)
        if first:
            study.enqueue_trial(first)
        points = [dict(study.ask(space.distributions()).params) for _ in range(known)]
    rest = samples - known
    later = (f"{rest} more samples chosen by TPE from the results so far (which ones depends "
             "on the losses)") if rest else ""
    return points, later


def _searcher(space: SearchSpace, base: RunSpec, opts: SearchOptions, samples: int):
    def make(location: str, slots: int):
        from .results.experiment import Experiment
        from .sweeps.searchers import OptunaSearcher

        exp = Experiment(location)
        return OptunaSearcher(space.distributions(), storage=opts.study_storage,
                              study_name=exp.name, sampler=opts.sampler,
                              sampler_seed=opts.sampler_seed, num_samples=samples,
                              first_point=space.baseline_point(base), experiment=location)

    return make


def _scheduler(opts: SearchOptions, milestone: int, max_t: int, probes: bool):
    if opts.scheduler != "asha":
        return None

    def make():
        from ray.tune.schedulers import ASHAScheduler

        # Schedule-aware: with cooldown probes at the rungs, rank by the probe's decayed loss.
        return ASHAScheduler(time_attr=TIME_ATTR, max_t=max_t, grace_period=milestone,
                             reduction_factor=opts.reduction_factor,
                             metric=RANK_METRIC if probes else METRIC, mode=MODE)

    return make


def _after(base: RunSpec, space: SearchSpace, opts: SearchOptions, derived: list[str]):
    def after(exp, res, datasets: dict[str, Any]) -> None:
        from .sweeps.searchers import study_location
        from .sweeps.study import finish_search

        url, local_db = study_location(exp, opts.study_storage)
        keep = tuple((k, v) for k, v in base.overrides if k not in derived)
        finish_search(exp, res, replace(base, overrides=keep), list(space.params), url,
                      local_db, datasets, space.distributions())

    return after


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    if args.smoke_test:
        args.preset = "tiny"
        args.space = args.space or SMOKE_SPACE
        args.num_samples = args.num_samples or 4
        if args.storage == ap.get_default("storage") and not args.resume:
            args.storage = tempfile.mkdtemp(prefix="ta-smoke-")
    return sweep_main(args, "search", build_plan)


if __name__ == "__main__":
    raise SystemExit(main())
