"""One skeleton for every sweep: `sweep_main` finds or creates the experiment and builds the plan
(refusing changed settings on `--resume`); `run_sweep` prepares the data, dry-runs or starts
Ray, writes sweep.json, runs the Tuner and writes the end tables and answer.

Design choices:
- Everything a user can get wrong is checked before Ray starts: configs, corpora (prepared and
  tokenized here, once), resources that can be known locally, and whether the experiment name
  is free (or `--resume` was asked). Nothing is written before the checks pass.
- The driver hands the prepared data to the trials (object store) and stores the tokenizer
  with the experiment, so trials and exports need nothing from the driver's disk.
- The experiment's location, its `sweep.json` and every record hold no credentials.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..results.experiment import Experiment, new_experiment, open_experiment
from ..results.frames import Results, load, write_tables
from ..spec.config import check_paths
from ..spec.io import fail, log, redact, say, user_command
from ..spec.names import DATA_DIR, METRIC, MODE, SWEEP_FILE, TOKENIZER_DIR, TRIALS_FILE, Status
from ..spec.resolve import resolve
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

JSON_OUTPUTS: dict[str, str] = {}
"""What `--json` prints without `--dry-run`, per sweep kind (with `--dry-run`: the plan, one
object per trial). A kind without an entry refuses `--json` without `--dry-run` instead of
ignoring it."""


def check_json(args, kind: str) -> None:
    """`--json` is refused where it has no meaning."""
    if getattr(args, "json", False) and not args.dry_run and kind not in JSON_OUTPUTS:
        raise SweepError(f"--json without --dry-run: a {kind} prints no JSON while it runs "
                         "(--dry-run --json prints its plan, one JSON object per trial); "
                         "drop --json, or add --dry-run")


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
    g.add_argument("--json", action="store_true", help="with --dry-run: one JSON object per "
                   "trial on stdout, nothing else there (refused where it means nothing)")
    g.add_argument("--verbose", action="store_true", help="show Ray's and Optuna's own logs "
                   "and warnings")
    add_options(ap, ResourceOptions, "resources")
    add_options(ap, TrackerOptions, "experiment tracker (MLflow, Weights & Biases)")


def sweep_main(args, kind: str, build_plan) -> int:
    """What every sweep command does with its parsed options: check them, find a resumed sweep
    (refusing changed settings by name), take defaults from the cluster, plan, run.
    `build_plan(args, record, n_gpus, resources)` returns the plan (record: a resumed sweep's
    sweep.json, else None)."""
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
            plan = build_plan(args, record, 0, resources)
        else:
            record = None
            plan = build_plan(args, None, available_gpus(args.address), resources)
            exp = new_experiment(args.storage, plan.name)
        plan.tracker = tracker_from_args(args, record)
    except (ValueError, SweepError) as exc:
        return fail(exc)
    return run_sweep(plan, exp, args, started=started)


def prepare_all(configs, cache_dir: str | None, stored: Experiment | None = None
                ) -> dict[str, Any]:
    """Tokenize and cache every corpus the trials read (here, before Ray), with their extra
    domains; check that every trial's window fits. Resuming (`stored`), a corpus file missing
    here is read from the token data the experiment stored when it started."""
    from ..training.data import check_fits, data_id, prepare_data
    from ..training.domains import with_domains

    out: dict[str, Any] = {}
    cache = Path(cache_dir) if cache_dir else None
    for c in configs:
        key = data_id(c.data)
        if key not in out:
            data = stored_data(stored, c.data, key, cache)
            if data is None:
                check_paths(c.data)
                data = prepare_data(c.data, cache, log=log)
            out[key] = with_domains(data, c.data, cache)
        check_fits(out[key], c.data.seq_len)
    return out


def stored_data(exp: Experiment | None, cfg, key: str, cache: Path | None):
    """The experiment's stored token data of a local corpus that is missing here, fetched into
    this machine's cache folder; None when not needed or not stored."""
    from ..spec.config import is_local_path
    from ..training.data import STORED_FILES, load_folder
    from ..training.runtime import cache_root

    missing = is_local_path(cfg.corpus) and not os.path.exists(os.path.expanduser(cfg.corpus))
    if exp is None or not missing or not exp.exists(DATA_DIR, key, "manifest.json"):
        return None
    folder = (cache or cache_root()) / f"stored-{key}"
    for name in STORED_FILES:
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(exp.read_bytes(DATA_DIR, key, *name.split("/")))
    log(f"event=data_from_experiment corpus={cfg.corpus!r} key={key} (the file is not on this "
        "machine; the experiment stored its tokens)")
    return load_folder(folder)


def store_data(exp: Experiment, datasets: dict) -> None:
    """Store the token data of every corpus read from a local path with the experiment (the
    embedded and Hub corpora can be rebuilt on any machine)."""
    from ..spec.config import is_local_path
    from ..training.data import STORED_FILES

    for key, data in datasets.items():
        if data.path is not None and is_local_path(data.manifest["corpus"]):
            for name in STORED_FILES:
                exp.write_bytes((data.path / name).read_bytes(), DATA_DIR, key, *name.split("/"))


def _configs(plan: SweepPlan, datasets: dict | None = None):
    from ..training.data import data_id

    first = [resolve(t) for t in plan.trials]
    if datasets is None:
        return first
    return [resolve(t, vocab_size=datasets[data_id(c.data)].vocab_size)
            for t, c in zip(plan.trials, first)]


def run_sweep(plan: SweepPlan, exp: Experiment, args, *, started: float) -> int:
    """Run (or restore, or dry-run) a planned sweep; returns the exit code."""
    from dataclasses import replace

    from ..training.optimizers import check_available

    shown = replace(plan, trials=plan.preview) if args.dry_run and plan.preview else plan
    try:
        check_local_resources(plan.cpus, plan.gpus, address=args.address)
        for c in _configs(plan) + (_configs(shown) if shown is not plan else []):
            check_available(c.optim)  # a missing optimizer package, before data, tracker, Ray
        if not args.dry_run:  # the tracker's store opens before any data is prepared
            plan.tracker = open_tracker(plan.tracker, exp.name)
        datasets = prepare_all(_configs(plan) + (_configs(shown) if shown is not plan else []),
                               args.cache_dir, exp if args.resume else None)
        configs = _configs(shown if args.dry_run else plan, datasets)
    except (ValueError, SweepError) as exc:
        return fail(exc)
    for data in datasets.values():
        log("event=data " + " ".join(f"{k}={v}" for k, v in data.facts().items()))
    from ..training.probes import Choice
    from .decide import record

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
        return 0
    if not plan.gpus and not remote:
        warm_measurements(plan.cpus)
    shared = args.shared_storage or (args.resume and bool(exp.read_sweep().get(
        "shared_storage")))
    try:
        init_ray(args.address, verbose=args.verbose)
        preflight(plan.cpus, plan.gpus, plan.resources.trial_resources,
                  local_storage=not exp.remote, shared=shared)
    except SweepError as exc:
        return fail(exc)
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


def _write_start(plan: SweepPlan, exp: Experiment, args, datasets: dict,
                 runtime: dict[str, Any]) -> None:
    """sweep.json (with the sweep's runtime decision), the files stored verbatim and the
    tokenizer (new sweep); on resume, drop the previous end's trials.json so status shows a
    running sweep, and record a decision a sweep of an older version did not store."""
    from .trainable import git_sha, package_versions

    if args.resume:
        exp.delete(TRIALS_FILE)
        if "runtime" not in exp.read_sweep():
            exp.write_json({**exp.read_sweep(), "runtime": runtime}, SWEEP_FILE)
        return
    for name, text in plan.files.items():
        exp.write_bytes(text, name)
    for data in datasets.values():
        exp.write_bytes(data.tokenizer_json, TOKENIZER_DIR, data.key, "tokenizer.json")
    store_data(exp, datasets)
    exp.write_json({**plan.record, "kind": plan.kind, "name": exp.name,
                    "resources": stored_options(plan.resources), "gpus_per_trial": plan.gpus,
                    "forced_overrides": plan.forced, "planned_trials": plan.planned,
                    "runtime": runtime,
                    "shared_storage": args.shared_storage, "tracker": stored_options(plan.tracker),
                    "argv": user_command(), "storage": redact(args.storage),
                    "git_sha": git_sha(), "versions": package_versions(),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, SWEEP_FILE)


def _fit(plan: SweepPlan, exp: Experiment, args, datasets: dict, started: float,
         choice) -> int:
    from ray import tune

    from .trainable import build_trainable, git_sha, hold_driver
    from .tuner import prune_checkpoints, record_states, run_tuner, trial_dirname

    for key, arms in plan.forced.items():
        log(f"warning: --force-set {key} applies to {', '.join(arms)}: those arms no longer "
            f"differ from the baseline in {key}")
    log(f"event=sweep_start kind={plan.kind} name={exp.name} trials={plan.planned} "
        f"cpus_per_trial={plan.cpus} gpus_per_trial={plan.gpus} resume={args.resume} "
        f"results={exp}")
    trainable = build_trainable(
        base=plan.base, datasets=datasets, cpus=plan.cpus, gpus=plan.gpus,
        cache_dir=args.cache_dir, experiment=exp.location, sha=git_sha(),
        argv=exp.read_sweep().get("argv", []), resources=plan.resources.trial_resources,
        choice=choice.to_dict())
    slots = concurrency(plan.cpus, plan.gpus)
    tracker = None if args.resume else _tracker(plan, exp, datasets)  # resume: Ray restores it
    scheduler = plan.scheduler() if plan.scheduler else None
    tune_config = tune.TuneConfig(  # a scheduler names its own metric (ASHA may rank by probes)
        metric=None if scheduler else METRIC, mode=None if scheduler else MODE,
        search_alg=plan.searcher(exp.location, slots), scheduler=scheduler, num_samples=-1,
        max_concurrent_trials=plan.max_concurrent, reuse_actors=True,
        trial_dirname_creator=trial_dirname, trial_name_creator=trial_dirname)
    try:
        results = run_tuner(trainable, exp=exp, resume=args.resume, tune_config=tune_config,
                            max_failures=plan.resources.max_failures,
                            keep_checkpoints=plan.resources.keep_checkpoints,
                            parameter_columns=plan.parameter_columns,
                            extra_callbacks=[tracker] if tracker else [],
                            summary=plan.progress, best=plan.show_best)
    except SweepError as exc:
        return fail(exc)
    hold_driver()
    record_states(exp, results)
    res = load(exp)
    for folder in res.trials.get("folder", []):  # the final snapshot names each latest one
        prune_checkpoints(exp, str(folder), plan.resources.keep_checkpoints)
    return finish(plan, exp, res, datasets, started)


def _tracker(plan: SweepPlan, exp: Experiment, datasets: dict):
    """The `--tracker` callback of a new sweep (None without one)."""
    from .trackers import build_tracker

    t = plan.tracker or TrackerOptions()
    return build_tracker(t.tracker, uri=t.tracker_uri, project=t.tracker_project,
                         sweep=exp.name, kind=plan.kind, base=plan.base.to_dict(),
                         vocab={k: d.vocab_size for k, d in datasets.items()},
                         results=str(exp))


def finish(plan: SweepPlan, exp: Experiment, res: Results, datasets: dict,
           started: float) -> int:
    """Tables, the answer, failed trials and the after-sweep step; returns the exit code."""
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
    for key, arms in plan.forced.items():  # said again where the numbers are read
        say(f"note: --force-set {key}: {', '.join(arms)} share the baseline's {key}")
    say(f"results: {exp}")
    say(f"report:  python -m tune_ablations.analysis {exp}")
    return code

