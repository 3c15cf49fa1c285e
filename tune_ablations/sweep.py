"""One skeleton for every sweep: `run_sweep(plan, args)` does the resume lookup, experiment folder,
data preparation, `--dry-run`, Ray start, preflight, sweep.json, the Tuner and the end tables.

Design choices:
- Everything a user can get wrong is checked before `ray.init`: configs, corpus, resources that
  can be known locally, and whether the experiment name is free (or `--resume` was asked).
- A local Ray starts with the dashboard off and quiet logs; `--address`/`RAY_ADDRESS` joins an
  existing cluster instead.
- Preflight: trials asking for GPUs on a cluster without them stay PENDING forever in Ray, with
  no error; we compare the request with `ray.cluster_resources()` and fail first.
- Ray snapshots the experiment state only every >= 10 s by default; we set 1 s so a sweep killed
  mid-way resumes its trials from their checkpoints rather than from step 0.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from .cli import fail, log
from .config import SWEEP_FILE
from .plan import SweepPlan, epoch_warnings, print_plan, trial_rows, warm_measurements
from .runtime import local_gpus
from .storage import download, exists, is_uri, join, list_dirs, mirror, upload
from .summary import print_summary
from .sweep_args import SweepError, add_sweep_args, check_sweep_args, resume_conflicts
from .tuner import finish, live_view, run_tuner

__all__ = ["SweepError", "add_sweep_args", "check_sweep_args", "resume_conflicts", "run_sweep",
           "resume_lookup", "default_gpus_per_trial"]

SNAPSHOT_PERIOD_S = "1"



def available_gpus(address: str | None) -> int:
    """GPUs that trials can use: the cluster's (connecting to it) with --address or
    $RAY_ADDRESS, else this machine's. A CPU-only machine submitting to a GPU cluster gets the
    GPU defaults (preset `seed`, packed GPU shares)."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        return local_gpus()
    import ray

    init_ray(address)
    return int(ray.cluster_resources().get("GPU", 0))


def default_gpus_per_trial(n_trials: int, n_gpus: int) -> float:
    """Pack trials onto the GPUs: 1 / ceil(trials / gpus), at most 1, at least 1/8."""
    if n_gpus <= 0:
        return 0.0
    per_gpu = min(8, max(1, math.ceil(n_trials / n_gpus)))
    return round(1.0 / per_gpu, 4)


def check_resources(cpus: float, gpus: float, *, address: str | None) -> None:
    """Reject impossible requests that can be known before Ray starts (local runs only)."""
    if cpus <= 0:
        raise SweepError(f"--cpus-per-trial={cpus} must be > 0")
    if gpus < 0 or (gpus > 1 and gpus != int(gpus)):
        raise SweepError(f"--gpus-per-trial={gpus} must be >= 0, and a whole number above 1")
    ray = sys.modules.get("ray")
    if address is None and not (ray is not None and ray.is_initialized()):
        if gpus > 0 and local_gpus() == 0:
            raise SweepError(f"--gpus-per-trial={gpus} but this machine has no CUDA GPU; use "
                             "--gpus-per-trial 0 (the default without a GPU) or join a cluster "
                             "with GPUs via --address")
        if cpus > (os.cpu_count() or 1):
            raise SweepError(f"--cpus-per-trial={cpus} exceeds this machine's "
                             f"{os.cpu_count()} CPUs")


def experiment_dir(storage: str, name: str, *, resume: bool) -> Path:
    """The experiment folder (for a storage URI, its local mirror, with sweep.json fetched when
    resuming); refuses to reuse a name unless resuming, and to resume nothing."""
    if not name or "/" in name or name.startswith("."):
        raise SweepError(f"--name={name!r} must be a plain folder name")
    if is_uri(storage):
        return _remote_experiment(join(storage, name), resume=resume)
    path = Path(storage).expanduser().resolve() / name
    if resume and not (path / SWEEP_FILE).exists():
        raise SweepError(f"--resume: no sweep at {path} (no {SWEEP_FILE}); run without --resume "
                         "to start it")
    if not resume and path.exists() and any(path.iterdir()):
        raise SweepError(f"experiment {path} already exists; add --resume to continue it, or "
                         "choose another --name")
    return path


def _remote_experiment(uri: str, *, resume: bool) -> Path:
    local = mirror(uri)
    if resume:
        if not exists(join(uri, SWEEP_FILE)):
            raise SweepError(f"--resume: no sweep at {uri} (no {SWEEP_FILE})")
        return download(uri, local)
    if exists(uri) and exists(join(uri, SWEEP_FILE)):
        raise SweepError(f"experiment {uri} already exists; add --resume to continue it, or "
                         "choose another --name")
    return local


def init_ray(address: str | None, *, num_cpus: int | None = None) -> None:
    import ray

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", SNAPSHOT_PERIOD_S)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the classic one-line-per-trial table
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), num_gpus=local_gpus(),
                 include_dashboard=False, dashboard_host="127.0.0.1",
                 logging_level=logging.WARNING, log_to_driver=False,
                 configure_logging=True)


def preflight(cpus: float, gpus: float, resources: dict[str, float] | None = None) -> None:
    """Fail now if the cluster cannot ever place one trial (Ray would wait forever), naming
    what it lacks."""
    import ray

    have = ray.cluster_resources()
    for key, amount in (resources or {}).items():
        if have.get(key, 0) < amount:
            raise SweepError(f"--trial-resource {key}={amount:g} but the Ray cluster has "
                             f"{have.get(key, 0):g} of {key!r} (it has: "
                             f"{', '.join(sorted(have)) or 'nothing'}): trials would stay "
                             "PENDING forever")
    if gpus > 0 and have.get("GPU", 0) < gpus:
        raise SweepError(f"--gpus-per-trial={gpus} but the Ray cluster has "
                         f"{have.get('GPU', 0):g} GPUs: trials would stay PENDING forever. Use "
                         "--gpus-per-trial 0 or a cluster with GPUs")
    if have.get("CPU", 0) < cpus:
        raise SweepError(f"--cpus-per-trial={cpus} but the Ray cluster has "
                         f"{have.get('CPU', 0):g} CPUs")


def write_sweep_file(exp: Path, record: dict[str, Any]) -> None:
    exp.mkdir(parents=True, exist_ok=True)
    tmp = exp / (SWEEP_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(exp / SWEEP_FILE)


def read_sweep_file(exp: Path) -> dict[str, Any]:
    return json.loads((exp / SWEEP_FILE).read_text())


def resume_lookup(args, kind: str) -> dict[str, Any] | None:
    """With `--resume`: the stored sweep's record (name defaults to the newest of this kind)."""
    if not args.resume:
        return None
    if not args.name:
        if is_uri(args.storage):
            found = [n for n, _ in sorted(list_dirs(args.storage), key=lambda d: d[1])
                     if n.startswith(f"{kind}-") and exists(join(args.storage, n, SWEEP_FILE))]
        else:
            root = Path(args.storage).expanduser()
            found = [p.name for p in sorted((p for p in root.glob(f"{kind}-*")
                                             if (p / SWEEP_FILE).exists()),
                                            key=lambda p: p.stat().st_mtime)]
        if not found:
            raise SweepError(f"--resume: no {kind} experiment in {args.storage}")
        args.name = found[-1]
    return read_sweep_file(experiment_dir(args.storage, args.name, resume=True))


def prepare_all(plan: SweepPlan, cache_dir: str | None) -> dict[str, Any]:
    """Tokenize and cache every corpus the plan needs (in the driver, before Ray), and check
    that every trial's window fits."""
    from .data import cache_key, check_fits, prepare_data

    data_by_key: dict[str, Any] = {}
    for c in plan.configs:
        key = cache_key(c.data)
        if key not in data_by_key:
            data_by_key[key] = prepare_data(c.data, Path(cache_dir) if cache_dir else None,
                                            log=log)
        check_fits(data_by_key[key], c.data.seq_len)
        if c.data.eval_data:  # extra domains, tokenized once here; trials only read them
            from .domains import domain_names, domain_tokens

            for _, corpus in domain_names(c.data):
                domain_tokens(c.data, data_by_key[key], corpus)
    return data_by_key


def concurrency(cpus: float, gpus: float) -> int:
    if gpus:
        n = _known_gpus()
        return max(1, int(n / gpus)) if n else 1
    return max(1, int((os.cpu_count() or 1) // cpus))


def run_sweep(plan: SweepPlan, args, *, started: float) -> int:
    """Run (or restore, or dry-run) a planned sweep; returns the exit code."""
    try:
        exp = experiment_dir(args.storage, plan.name, resume=args.resume)
        check_resources(plan.cpus, plan.gpus, address=args.address)
        data_by_key = prepare_all(plan, args.cache_dir)
    except (ValueError, SweepError) as exc:
        return fail(exc)
    for data in data_by_key.values():
        log("event=data " + " ".join(f"{k}={v}" for k, v in data.facts().items()))
    dry = args.dry_run
    rows = trial_rows(plan, data_by_key, max(1, int(plan.cpus))) if dry else \
        _cheap_rows(plan, data_by_key)
    epochs: dict[str, float] = {}
    for r in rows:
        epochs[r["ablation"]] = max(epochs.get(r["ablation"], 0.0), r["epochs"])
    log("event=epochs " + " ".join(f"{a}={e:.2f}" for a, e in epochs.items()))
    for line in epoch_warnings(rows, plan.configs[0].data.corpus):
        log(line)
    if dry:
        print_plan(rows, concurrency(plan.cpus, plan.gpus), as_json=args.json, log=log)
        return 0
    if not plan.gpus and not (args.address or os.environ.get("RAY_ADDRESS")):
        warm_measurements(plan, data_by_key)
    return _fit(plan, args, exp, started)


def _known_gpus() -> int:
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return int(ray.cluster_resources().get("GPU", 0))
    return local_gpus()


def _cheap_rows(plan: SweepPlan, data_by_key: dict) -> list[dict[str, Any]]:
    from .data import cache_key

    return [{"ablation": c.name, "epochs": c.total_tokens / data_by_key[cache_key(
        c.data)].manifest["train_tokens"]} for c in plan.configs]


def _fit(plan: SweepPlan, args, exp: Path, started: float) -> int:
    from .trainable import build_trainable, git_sha, package_versions

    try:
        init_ray(args.address)
        preflight(plan.cpus, plan.gpus, plan.resources)
    except SweepError as exc:
        return fail(exc)
    sha = git_sha()
    remote = join(args.storage, exp.name) if is_uri(args.storage) else None
    if not args.resume:
        exp.mkdir(parents=True, exist_ok=True)
        for name, src in plan.files.items():
            (exp / name).write_bytes(Path(src).read_bytes())  # stored verbatim
        write_sweep_file(exp, {**plan.record, "kind": plan.kind, "cpus_per_trial": plan.cpus,
                               "gpus_per_trial": plan.gpus, "forced_overrides": plan.forced,
                               "trial_resources": plan.resources,
                               "max_failures": args.max_failures,
                               "keep_checkpoints": args.keep_checkpoints,
                               "argv": sys.argv, "git_sha": sha,
                               "versions": package_versions(),
                               "created": time.strftime("%Y-%m-%dT%H:%M:%S")})
        if remote:
            for name in (SWEEP_FILE, *plan.files):
                upload(exp / name, join(remote, name))
    for key, arms in plan.forced.items():
        log(f"warning: --force-set {key} applies to {', '.join(arms)}: those arms no longer "
            f"differ from the baseline in {key}")
    log(f"event=sweep_start kind={plan.kind} name={exp.name} trials={len(plan.configs)} "
        f"cpus_per_trial={plan.cpus} gpus_per_trial={plan.gpus} resume={args.resume} "
        f"path={exp}")
    trainable = build_trainable(cpus=plan.cpus, gpus=plan.gpus, cache_dir=args.cache_dir,
                                sha=sha, resources=plan.resources)
    try:
        results = run_tuner(trainable, plan.param_space, exp=exp, resume=args.resume,
                            tune_config=plan.tune_config(), max_failures=args.max_failures,
                            keep_checkpoints=args.keep_checkpoints,
                            parameter_columns=plan.parameter_columns, remote=remote,
                            callbacks=[] if remote else [live_view(exp, plan.live)])
    except SweepError as exc:
        return fail(exc)
    df, code = finish(exp, results, started=started, remote=remote)
    print_summary(df)
    for key, arms in plan.forced.items():  # said again where the numbers are read
        log(f"note: --force-set {key}: {', '.join(arms)} share the baseline's {key}")
    if plan.after is not None:
        before = {p.name for p in exp.iterdir()}
        try:
            plan.after(exp, df)
        except Exception as exc:  # post-processing must never cost the results above
            log(f"error: after the sweep: {type(exc).__name__}: {exc} (results are in {exp}; "
                f"rerun with --resume --name {exp.name} to retry)")
            code = max(code, 1)
        for p in exp.iterdir():  # the study, best.toml, ... reach the storage URI too
            if remote and p.is_file() and (p.name not in before or p.suffix in (".db",
                                                                                 ".json")):
                upload(p, join(remote, p.name))
    log(f"event=report_hint command=\"python -m tune_ablations.analysis {exp}\" "
        f"report={exp / 'report' / 'report.md'}")
    return code


def sweep_main(ap, args, kind: str, build_plan) -> int:
    """What every sweep command does with its parsed options: check them, find a resumed
    sweep (refusing changed flags), take defaults from the cluster, plan, run."""
    started = time.perf_counter()
    try:
        check_sweep_args(args)
        saved = resume_lookup(args, kind)
        if saved is not None:
            resume_conflicts(args, ap, saved)
        else:  # defaults (preset, GPU shares) from the cluster's resources with --address
            args.n_gpus = available_gpus(args.address)
        plan = build_plan(args, saved)
    except (ValueError, SweepError) as exc:
        return fail(exc)
    return run_sweep(plan, args, started=started)
