"""One skeleton for every sweep: `execute` finds or creates the experiment and builds the plan
(refusing changed settings on `--resume`), then `run_sweep` dry-runs or starts Ray, writes
sweep.json, runs the Tuner and writes the end tables. Commands print what it returns.

Design choices:
- Everything a user can get wrong is checked before Ray starts: configs and arms (resolved
  with their data: corpora prepared and tokenized here, once, by the plan's `Resolver`),
  resources that can be known locally, and whether the experiment name is free (or `--resume`
  was asked). Nothing is written before the checks pass.
- Bad input is one `SweepRun.error` line (a command prints it and exits 2; the Python API
  raises it); nothing here prints it.
- The driver hands the prepared data to the trials (object store) and stores the tokenizer
  with the experiment, so trials and exports need nothing from the driver's disk.
- The experiment's location, its `sweep.json` and every record hold no credentials.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..results.experiment import Experiment, new_experiment, open_experiment
from ..results.frames import Results, load, write_tables
from ..spec.io import log, redact, user_command
from ..spec.names import (
    DATA_DIR,
    MANIFEST_FILE,
    METRIC,
    MODE,
    SWEEP_FILE,
    TOKENIZER_DIR,
    TOKENIZER_JSON,
    TRIALS_FILE,
    Status,
)
from ..training.resolved import Resolver
from .cluster import (
    available_gpus,
    check_local_resources,
    concurrency,
    init_ray,
    preflight,
)
from .options import ResourceOptions, SweepError, options_from_args, refuse_changes, restore
from .options import stored as stored_options
from .plan import SweepPlan, epoch_rows, epoch_warnings, print_plan, trial_rows, warm_measurements
from .trackers import TrackerOptions, open_tracker, tracker_from_args

JSON_OUTPUTS: dict[str, str] = {"grid": "the answer: one JSON object per arm"}
"""What `--json` prints without `--dry-run`, per sweep kind (with `--dry-run`: the plan, one
object per trial). A kind without an entry refuses `--json` without `--dry-run` instead of
ignoring it."""


def check_json(args, kind: str) -> None:
    """`--json` is refused where it has no meaning."""
    if getattr(args, "json", False) and not args.dry_run and kind not in JSON_OUTPUTS:
        raise SweepError(f"--json without --dry-run: a {kind} prints no JSON while it runs "
                         "(--dry-run --json prints its plan, one JSON object per trial); "
                         "drop --json, or add --dry-run")


@dataclass
class SweepRun:
    """What a sweep command did: its exit code, the experiment, and the one-line error of
    bad input (None when the sweep ran)."""
    code: int
    experiment: Experiment | None = None
    plan: SweepPlan | None = None
    error: str | None = None
    dry_run: bool = False


def add_sweep_args(ap, kind: str) -> None:
    """Where a sweep's results go, resuming, the cluster, and its resources."""
    from .options import add_options

    g = ap.add_argument_group("where and how")
    g.add_argument("--storage", default="./results", help="results root: a folder or a URI "
                   "(s3://bucket/path, gs://..., file://...) (default: ./results)")
    g.add_argument("--name", help=f"experiment name (default: {kind}-...-<time>)")
    g.add_argument("--resume", action="store_true", help=f"continue the sweep --name (default: "
                   f"the newest {kind} in --storage) with its stored settings")
    g.add_argument("--address", help="join this Ray cluster (default: $RAY_ADDRESS, else a "
                   "local Ray)")
    g.add_argument("--shared-storage", action="store_true", help="a local --storage folder is "
                   "mounted at the same path on every node of the cluster")
    g.add_argument("--cache-dir", help="token cache (default: $TUNE_ABLATIONS_CACHE or "
                   "~/.cache/tune_ablations)")
    g.add_argument("--dry-run", action="store_true",
                   help="print the plan (steps, tokens, FLOPs, epochs, seconds), train nothing")
    answer = "; without it, the answer: one JSON object per arm" if kind == "grid" else ""
    g.add_argument("--json", action="store_true", help="with --dry-run: one JSON object per "
                   f"planned trial{answer}; nothing else on stdout (logs stay on stderr)")
    g.add_argument("--verbose", action="store_true", help="show Ray's and Optuna's own logs "
                   "and warnings")
    add_options(ap, ResourceOptions, "resources")
    add_options(ap, TrackerOptions, "experiment tracker (MLflow, Weights & Biases)")


def execute(args, kind: str, build_plan) -> SweepRun:
    """What every sweep command does with its parsed options: check them, find a resumed sweep
    (refusing changed settings by name), take defaults from the cluster, plan (resolving every
    trial with its data), run. `build_plan(args, record, n_gpus, resources, resolver)` returns
    the plan (record: a resumed sweep's sweep.json, else None)."""
    started = time.perf_counter()
    try:
        check_json(args, kind)
        resources, given = options_from_args(ResourceOptions, args)
        if args.resume:
            exp = open_experiment(args.storage, args.name, kind=kind)
            record = exp.read_sweep()
            refuse_changes(restore(ResourceOptions, record["resources"]), resources, given,
                           what="resources")
            resources = restore(ResourceOptions, record["resources"])
            resolver = Resolver(args.cache_dir, fetch=_stored_data(exp, args.cache_dir),
                                log=log)
            plan = build_plan(args, record, 0, resources, resolver)
        else:
            record = None
            if args.name:  # a taken name is refused before the plan prepares any data
                new_experiment(args.storage, args.name)
            resolver = Resolver(args.cache_dir, log=log)
            plan = build_plan(args, None, available_gpus(args.address), resources, resolver)
            exp = new_experiment(args.storage, plan.name)
        plan.tracker = tracker_from_args(args, record)
        return run_sweep(plan, exp, args, resolver, started=started)
    except (ValueError, SweepError) as exc:  # ExperimentError and CorpusError included
        return SweepRun(2, error=str(exc))


def _stored_data(exp: Experiment, cache_dir: str | None):
    """A resolver's `fetch`: the experiment's stored token data of a local corpus that is
    missing here, fetched into this machine's cache folder; None when not needed or not
    stored."""
    def fetch(cfg, key: str):
        from ..spec.config import is_local_path
        from ..training.data import STORED_FILES, load_folder
        from ..training.runtime import cache_root

        missing = is_local_path(cfg.corpus) and not os.path.exists(os.path.expanduser(
            cfg.corpus))
        if not missing or not exp.exists(DATA_DIR, key, MANIFEST_FILE):
            return None
        folder = (Path(cache_dir) if cache_dir else cache_root()) / f"stored-{key}"
        for name in STORED_FILES:
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(exp.read_bytes(DATA_DIR, key, *name.split("/")))
        log(f"event=data_from_experiment corpus={cfg.corpus!r} key={key} (the file is not on "
            "this machine; the experiment stored its tokens)")
        return load_folder(folder)

    return fetch


def store_data(exp: Experiment, datasets: dict) -> None:
    """Store the token data of every corpus read from a local path with the experiment (the
    embedded and Hub corpora can be rebuilt on any machine)."""
    from ..spec.config import is_local_path
    from ..training.data import STORED_FILES

    for key, data in datasets.items():
        if data.path is not None and is_local_path(data.manifest["corpus"]):
            for name in STORED_FILES:
                exp.write_bytes((data.path / name).read_bytes(), DATA_DIR, key, *name.split("/"))


def run_sweep(plan: SweepPlan, exp: Experiment, args, resolver: Resolver, *,
              started: float) -> SweepRun:
    """Run (or restore, or dry-run) a planned sweep; bad input raises ValueError/SweepError
    before anything is written."""
    from dataclasses import replace

    from ..training.optimizers import check_available
    from ..training.probes import Choice
    from .decide import record

    shown = replace(plan, trials=plan.preview) if args.dry_run and plan.preview else plan
    check_local_resources(plan.cpus, plan.gpus, address=args.address)
    unprepared = Resolver(prepare=False)  # settings only: no data is prepared for this check
    for c in unprepared.configs(plan.trials + (shown.trials if shown is not plan else [])):
        check_available(c.optim)  # a missing optimizer package, before data, tracker, Ray
    if not args.dry_run:  # the tracker's store opens before any data is prepared
        plan.tracker = open_tracker(plan.tracker, exp.name)
    configs = resolver.configs(plan.trials)
    if shown is not plan:
        configs = resolver.configs(shown.trials)
    datasets = resolver.datasets
    for data in datasets.values():
        log("event=data " + " ".join(f"{k}={v}" for k, v in data.facts().items()))
    remote = bool(args.address or os.environ.get("RAY_ADDRESS"))
    stored_choice = exp.read_sweep().get("runtime") if args.resume else None
    choice = Choice.from_dict(stored_choice) if stored_choice else None
    if choice is None and not remote:  # here, before trials compete for the cores
        choice = _choose(plan, configs, datasets)
    rows = trial_rows(shown, configs, datasets, max(1, int(plan.cpus)), choice) \
        if args.dry_run else epoch_rows(configs, datasets)
    _epochs(rows, configs[0].data.corpus)
    if args.dry_run:
        print_plan(rows, concurrency(plan.cpus, plan.gpus), as_json=args.json)
        if plan.later:
            log(f"then: {plan.later} (up to {plan.planned} trials in all)")
        return SweepRun(0, None, plan, dry_run=True)
    if not plan.gpus and not remote:
        warm_measurements(plan.cpus)
    shared = args.shared_storage or (args.resume and bool(exp.read_sweep().get(
        "shared_storage")))
    init_ray(args.address, verbose=args.verbose)
    preflight(plan.cpus, plan.gpus, plan.resources.trial_resources,
              local_storage=not exp.remote, shared=shared)
    if choice is None:  # on a cluster: measured where the trials run
        choice = _choose(plan, configs, datasets, on_worker=True)
    _write_start(plan, exp, args, datasets, record(choice, configs))
    return _fit(plan, exp, args, datasets, started, choice)


def _choose(plan: SweepPlan, configs, datasets: dict, *, on_worker: bool = False):
    """The sweep's one precision and compile setting, from a probe of its shapes."""
    from ..training.data import data_id
    from .decide import sweep_choice

    return sweep_choice(configs, [datasets[data_id(c.data)].vocab_size for c in configs],
                        plan.cpus, on_worker=on_worker, gpus=plan.gpus,
                        resources=plan.resources.trial_resources)


def _epochs(rows: list[dict], corpus: str) -> None:
    epochs: dict[str, float] = {}
    for r in rows:
        epochs[r["ablation"]] = max(epochs.get(r["ablation"], 0.0), r["epochs"])
    log("event=epochs " + " ".join(f"{a}={e:.2f}" for a, e in epochs.items()))
    for line in epoch_warnings(rows, corpus):
        log(line)


def sweep_record(plan: SweepPlan, exp: Experiment, *, storage: str, shared: bool = False,
                 argv: list[str] | None = None, runtime: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
    """What sweep.json holds: the plan's record (spec, options, the plan's tokens) with the
    resources, the command line, versions and the creation time."""
    from .trainable import git_sha, package_versions

    return {**plan.record, "kind": plan.kind, "name": exp.name,
            "resources": stored_options(plan.resources), "gpus_per_trial": plan.gpus,
            "planned_trials": plan.planned, "shared_storage": shared, "runtime": runtime,
            "tracker": stored_options(plan.tracker or TrackerOptions()),
            "argv": user_command(argv), "storage": redact(storage),
            "git_sha": git_sha(), "versions": package_versions(),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S")}


def write_start(plan: SweepPlan, exp: Experiment, datasets: dict, record: dict) -> None:
    """A new sweep's files: those stored verbatim, the tokenizers, the token data of local
    corpora, and sweep.json (last: its presence says the sweep exists)."""
    for name, text in plan.files.items():
        exp.write_bytes(text, name)
    for data in datasets.values():
        exp.write_bytes(data.tokenizer_json, TOKENIZER_DIR, data.key, TOKENIZER_JSON)
    store_data(exp, datasets)
    exp.write_json(record, SWEEP_FILE)


def _write_start(plan: SweepPlan, exp: Experiment, args, datasets: dict,
                 runtime: dict[str, Any]) -> None:
    """A new sweep's files (with the sweep's runtime decision); on resume, drop the previous
    end's trials.json so status shows a running sweep, and record a decision a sweep of an
    older version did not store."""
    if args.resume:
        exp.delete(TRIALS_FILE)
        if "runtime" not in exp.read_sweep():
            exp.write_json({**exp.read_sweep(), "runtime": runtime}, SWEEP_FILE)
        return
    write_start(plan, exp, datasets, sweep_record(plan, exp, storage=args.storage,
                                                  shared=args.shared_storage,
                                                  runtime=runtime))


def _fit(plan: SweepPlan, exp: Experiment, args, datasets: dict, started: float,
         choice) -> SweepRun:
    from ray import tune

    from .trainable import build_trainable, git_sha, hold_driver
    from .tuner import prune_checkpoints, record_states, run_tuner, trial_dirname

    log(f"event=sweep_start kind={plan.kind} name={exp.name} trials={plan.planned} "
        f"cpus_per_trial={plan.cpus} gpus_per_trial={plan.gpus} resume={args.resume} "
        f"results={exp}")
    trainable = build_trainable(
        base=plan.base, datasets=datasets, cpus=plan.cpus, gpus=plan.gpus,
        cache_dir=args.cache_dir, experiment=exp.location, sha=git_sha(),
        argv=exp.read_sweep().get("argv", []), resources=plan.resources.trial_resources,
        choice=choice.to_dict())
    slots = concurrency(plan.cpus, plan.gpus)
    tracker = None if args.resume else _tracker(plan, exp, datasets, choice)  # resume: restored
    scheduler = plan.scheduler() if plan.scheduler else None
    tune_config = tune.TuneConfig(  # a scheduler names its own metric (ASHA may rank by probes)
        metric=None if scheduler else METRIC, mode=None if scheduler else MODE,
        search_alg=plan.searcher(exp.location, slots), scheduler=scheduler, num_samples=-1,
        max_concurrent_trials=plan.max_concurrent, reuse_actors=True,
        trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname)
    results = run_tuner(trainable, exp=exp, resume=args.resume, tune_config=tune_config,
                        max_failures=plan.resources.max_failures,
                        keep_checkpoints=plan.resources.keep_checkpoints,
                        parameter_columns=plan.parameter_columns,
                        extra_callbacks=[tracker] if tracker else [],
                        summary=plan.progress, best=plan.show_best)
    hold_driver()
    record_states(exp, results)
    res = load(exp)
    for folder in res.trials.get("folder", []):  # the final snapshot names each latest one
        prune_checkpoints(exp, str(folder), plan.resources.keep_checkpoints)
    return SweepRun(finish(plan, exp, res, datasets, started), exp, plan)


def _tracker(plan: SweepPlan, exp: Experiment, datasets: dict, choice):
    """The `--tracker` callback of a new sweep (None without one)."""
    from .trackers import build_tracker

    t = plan.tracker or TrackerOptions()
    return build_tracker(t.tracker, uri=t.tracker_uri, project=t.tracker_project,
                         sweep=exp.name, kind=plan.kind, base=plan.base.to_dict(),
                         vocab={k: d.vocab_size for k, d in datasets.items()},
                         results=str(exp), choice=choice.to_dict())


def finish(plan: SweepPlan, exp: Experiment, res: Results, datasets: dict,
           started: float) -> int:
    """Tables, failed trials and the after-sweep step; returns the exit code."""
    write_tables(res, exp)
    df, code = res.trials, 0
    failed = df[df["status"].astype(str) == Status.ERROR] if len(df) else df
    if len(failed):
        code = 1
        log(f"event=trials_failed count={len(failed)}")
        for _, row in failed.iterrows():
            log(f"failed trial={row['trial_id']} ablation={row['ablation']} seed={row['seed']} "
                f"logs={row['path']}")
    log(f"event=sweep_done trials={len(df)} seconds={time.perf_counter() - started:.1f} "
        f"results={exp}")
    if plan.after is not None:
        try:
            plan.after(exp, res, datasets)
        except Exception as exc:  # post-processing must never cost the results above
            log(f"error: after the sweep: {type(exc).__name__}: {exc} (results are in {exp}; "
                f"rerun with --resume --name {exp.name} to retry)")
            code = max(code, 1)
    return code

