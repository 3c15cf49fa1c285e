"""What the grid and the search share: Ray start-up, resource preflight, the experiment folder,
running or restoring a Tuner, recording statuses and writing the results tables.

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

from .config import METRIC

SWEEP_FILE = "sweep.json"
SNAPSHOT_PERIOD_S = "1"


class SweepError(RuntimeError):
    """A sweep that cannot start; the message says why and what to do."""


def log(msg: str) -> None:
    print(msg, flush=True)


def add_sweep_args(ap, kind: str) -> None:
    """The options every sweep command shares: where results go, resume, resources, retries."""
    ap.add_argument("--storage", default="./results", help="results root (default ./results)")
    ap.add_argument("--name", help=f"experiment name (default {kind}-...-<time>)")
    ap.add_argument("--resume", action="store_true",
                    help=f"continue the sweep --name (default: the latest {kind} in --storage)")
    ap.add_argument("--cpus-per-trial", type=float, default=1.0,
                    help="CPUs (and torch threads) per trial")
    ap.add_argument("--gpus-per-trial", type=float,
                    help="fraction of a GPU per trial (default: packs trials on the GPUs)")
    ap.add_argument("--address", help="join this Ray cluster (default: $RAY_ADDRESS or local)")
    ap.add_argument("--max-failures", type=int, default=2,
                    help="retries of a crashed trial from its checkpoint")
    ap.add_argument("--keep-checkpoints", type=int, default=2, help="checkpoints kept per trial")
    ap.add_argument("--cache-dir", help="token cache (default $TUNE_ABLATIONS_CACHE or "
                    "~/.cache/tune_ablations)")


def check_sweep_args(args) -> None:
    """Reject impossible values of the shared options (before anything runs)."""
    if args.keep_checkpoints < 1:
        raise SweepError(f"--keep-checkpoints={args.keep_checkpoints} must be >= 1 (a trial "
                         "resumes from its latest checkpoint)")
    if args.max_failures < 0:
        raise SweepError(f"--max-failures={args.max_failures} must be >= 0")


def local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


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
    """The experiment folder; refuses to reuse a name unless resuming, and to resume nothing."""
    if not name or "/" in name or name.startswith("."):
        raise SweepError(f"--name={name!r} must be a plain folder name")
    path = Path(storage).expanduser().resolve() / name
    if resume and not (path / SWEEP_FILE).exists():
        raise SweepError(f"--resume: no sweep at {path} (no {SWEEP_FILE}); run without --resume "
                         "to start it")
    if not resume and path.exists() and any(path.iterdir()):
        raise SweepError(f"experiment {path} already exists; add --resume to continue it, or "
                         "choose another --name")
    return path


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


def preflight(cpus: float, gpus: float) -> None:
    """Fail now if the cluster cannot ever place one trial (Ray would wait forever)."""
    import ray

    have = ray.cluster_resources()
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


def progress_reporter(parameter_columns: list[str]):
    from ray import tune

    return tune.CLIReporter(
        metric_columns={"step": "step", "tokens_seen": "tokens", METRIC: METRIC,
                        "val_acc": "acc", "tokens_per_s": "tok/s", "status": "run"},
        parameter_columns=parameter_columns, max_report_frequency=15, sort_by_metric=False)


def run_tuner(trainable, param_space: dict[str, Any] | None, *, exp: Path, resume: bool,
              tune_config, max_failures: int, keep_checkpoints: int,
              parameter_columns: list[str]):
    """Fit a new Tuner, or restore the one in `exp` (errored trials retried)."""
    from ray import tune

    if resume:
        if not (exp / "tuner.pkl").exists():
            raise SweepError(f"--resume: {exp} has no Ray state (tuner.pkl): the sweep was "
                             "stopped before Ray started; rerun without --resume after removing "
                             "the folder")
        tuner = tune.Tuner.restore(str(exp), trainable=trainable, resume_errored=True)
    else:
        run_config = tune.RunConfig(
            name=exp.name, storage_path=str(exp.parent),
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep_checkpoints),
            progress_reporter=progress_reporter(parameter_columns), verbose=1,
            log_to_file=True)
        tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                           run_config=run_config)
    return tuner.fit()


def record_states(exp: Path, results) -> dict[str, dict]:
    """Ray's final view of each trial into `trials.json` (analysis needs no Ray after this)."""
    states: dict[str, dict] = {}
    for r in results:
        trial_id = (r.metrics or {}).get("trial_id") or Path(r.path).name
        states[trial_id] = {
            "status": "ERROR" if r.error else "TERMINATED", "path": r.path,
            "error": f"{type(r.error).__name__}: {str(r.error)[:500]}" if r.error else None}
    tmp = exp / "trials.json.tmp"
    tmp.write_text(json.dumps(states, indent=2))
    tmp.replace(exp / "trials.json")
    return states


def finish(exp: Path, results, *, started: float) -> tuple[Any, int]:
    """Write statuses and tables, print the failed trials; returns (results frame, exit code)."""
    from .results import load_results, write_tables

    record_states(exp, results)
    write_tables(exp)
    df = load_results(exp)
    failed = df[df["status"] == "error"]
    code = 0
    if len(failed):
        code = 1
        log(f"event=trials_failed count={len(failed)}")
        for _, row in failed.iterrows():
            log(f"failed trial={row['trial_id']} ablation={row['ablation']} seed={row['seed']} "
                f"logs={row['path']}")
    log(f"event=sweep_done trials={len(df)} seconds={time.perf_counter() - started:.1f} "
        f"results={exp}")
    return df, code


def fail(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2
