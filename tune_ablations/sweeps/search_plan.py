"""A search's plan: Optuna over a declarative space with ASHA on equal token budgets, from the
command line or (resume) from sweep.json.

Design choices:
- Optuna's ask/tell (`searchers.OptunaSearcher`: TPE, seeded; or random / QMC) with the base
  config tried first, so the search always reports where the reference stood.
- The settings a search derives from its space (its evaluation cadence, ASHA's rung probes)
  are overrides of the base spec that sweep.json lists as derived (`best.toml` leaves them
  out). Every size is computed from configs resolved with the real vocabulary.
- sweep.json stores the plan (trials and each one's largest budget), which `status` reads.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

from ..spec.names import SPACE_FILE
from ..spec.presets import default_preset
from ..spec.resolve import reference_run
from ..spec.runspec import RunSpec, apply_flat, spec_from_args
from ..training.resolved import Resolver
from .cluster import default_gpus_per_trial
from .early_stopping import asha, rung_probes
from .options import (
    ResourceOptions,
    SearchOptions,
    SweepError,
    options_from_args,
    refuse_changes,
    refuse_spec_changes,
    restore,
    stored,
    with_secrets,
)
from .plan import SweepPlan
from .search_space import SearchSpace, find_space, load_space, parse_space
from .tuner import samples_progress


def derive(space: SearchSpace, base: RunSpec, opts: SearchOptions, resolver: Resolver
           ) -> tuple[RunSpec, list[str]]:
    """The settings a search derives (its evaluation cadence, rung probes): overrides of the
    base that best.toml leaves out."""
    derived: list[str] = []
    if "eval_every" not in dict(base.overrides):
        base, _ = apply_flat(base, {"eval_every": max(1, reference_run(base).steps //
                                                      opts.evals)})
        derived.append("eval_every")
    cfg = resolver.config(base)
    decays = cfg.optim.schedule != "constant"
    if opts.asha_probes == "on" and not decays:
        raise ValueError("--asha-probes on needs a schedule that decays (wsd, cosine or "
                         "linear): under constant the final loss is read at the peak lr too")
    if opts.scheduler == "asha" and decays and opts.asha_probes != "off" and \
            "probe_tokens" not in dict(base.overrides):
        corners = resolver.configs(space.corners(base))
        probes = rung_probes(cfg.eval.eval_every_tokens, opts.reduction_factor,
                             min(c.total_tokens for c in corners),
                             max(c.tokens_per_step / c.optim.decay_fraction for c in corners))
        base, _ = apply_flat(base, {"probe_tokens": probes})
        derived.append("probe_tokens")
    return base, derived


def _options(args) -> tuple[SearchOptions, set[str]]:
    """The search's options as given, `--study-storage`'s password moved out of its URL."""
    from .study import study_url

    opts, given = options_from_args(SearchOptions, args)
    return replace(opts, study_storage=study_url(opts.study_storage)), given


def _new(args, n_gpus: int, resolver: Resolver):
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
    base, derived = derive(space, space.base_spec(spec, given | {"preset"}), opts, resolver)
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


def build_plan(args, record: dict | None, n_gpus: int, resources: ResourceOptions,
               resolver: Resolver) -> SweepPlan:
    """The search's plan, from the command line or (resume) from its sweep.json."""
    if record:
        from ..results.experiment import open_experiment

        text = open_experiment(args.storage, record["name"]).read_text(SPACE_FILE)
        space, base, opts, derived, text = _stored(args, record, text)
        name = record["name"]
    else:
        space, base, opts, derived, text = _new(args, n_gpus, resolver)
        name = args.name or f"search-{space.path.stem}-{datetime.now():%Y%m%d-%H%M%S}"
    corners = space.corners(base)
    milestone = resolver.config(base).eval.eval_every_tokens
    max_t = max(c.total_tokens for c in resolver.configs(corners))
    samples = opts.num_samples or space.num_samples or 16
    gpus = resources.gpus_per_trial if resources.gpus_per_trial is not None else \
        (record or {}).get("gpus_per_trial",
                           default_gpus_per_trial(opts.max_concurrent or 4, n_gpus))
    points, later = planned_samples(space, base, opts, samples, resolver)
    scheduler = None if opts.scheduler != "asha" else asha(
        milestone=milestone, max_t=max_t, eta=opts.reduction_factor,
        probes="probe_tokens" in derived)
    return SweepPlan(
        kind="search", name=name, base=base, trials=corners, planned=samples,
        searcher=_searcher(space, base, opts, samples, resolver), resources=resources,
        gpus=gpus, record={"spec": base.to_dict(), "search": stored(opts),
                           "space": space.path.name, "searched": list(space.params),
                           "derived_keys": derived, "grace_tokens": milestone, "max_t": max_t,
                           "num_samples": samples,
                           "plan": {"trial_tokens": max_t, "trials": samples}},
        parameter_columns=list(space.params), files={SPACE_FILE: text}, scheduler=scheduler,
        after=_after(base, space, opts, derived), max_concurrent=opts.max_concurrent,
        later=later, progress=samples_progress(samples),
        preview=[base.with_params(**p) for p in points])


STARTUP = 4  # TPE's random start (searchers.make_sampler): independent of any result


def planned_samples(space: SearchSpace, base: RunSpec, opts: SearchOptions, samples: int,
                    resolver: Resolver) -> tuple[list[dict[str, Any]], str]:
    """(the samples the search will draw that are known before any result, what follows).
    Random and QMC samplers draw every point from their seed alone: all are listed. TPE's
    first STARTUP points (the base config first, then seeded random ones) are too; the rest
    follow from the losses, so only their number is said."""
    import optuna

    from .searchers import _quiet, make_sampler

    known = samples if opts.sampler in ("random", "qmc") else min(samples, STARTUP)
    with _quiet(optuna):
        study = optuna.create_study(sampler=make_sampler(opts.sampler, opts.sampler_seed))
        first = space.baseline_point(base, resolver.config(base))
        if first:
            study.enqueue_trial(first)
        points = [dict(study.ask(space.distributions()).params) for _ in range(known)]
    rest = samples - known
    later = (f"{rest} more samples chosen by TPE from the results so far (which ones depends "
             "on the losses)") if rest else ""
    return points, later


def _searcher(space: SearchSpace, base: RunSpec, opts: SearchOptions, samples: int,
              resolver: Resolver):
    first_point = space.baseline_point(base, resolver.config(base))

    def make(location: str, slots: int):
        from ..results.experiment import Experiment
        from .searchers import OptunaSearcher

        exp = Experiment(location)
        return OptunaSearcher(space.distributions(), storage=opts.study_storage,
                              study_name=exp.name, sampler=opts.sampler,
                              sampler_seed=opts.sampler_seed, num_samples=samples,
                              first_point=first_point, experiment=location)

    return make


def _after(base: RunSpec, space: SearchSpace, opts: SearchOptions, derived: list[str]):
    def after(exp, res, datasets: dict[str, Any]) -> None:
        from .searchers import study_location
        from .study import finish_search

        url, local_db = study_location(exp, opts.study_storage)
        keep = tuple((k, v) for k, v in base.overrides if k not in derived)
        finish_search(exp, res, replace(base, overrides=keep), list(space.params), url,
                      local_db, datasets, space.distributions())

    return after


def smoke_defaults(args, ap) -> None:
    """`--smoke-test`: the lr space at the tiny preset, 4 samples, a temporary folder."""
    import tempfile

    args.preset = "tiny"
    args.space = args.space or "lr"
    args.num_samples = args.num_samples or 4
    if args.storage == ap.get_default("storage") and not args.resume:
        args.storage = tempfile.mkdtemp(prefix="ta-smoke-")
