"""The only bridge to Ray: a function trainable around `train()`, resources, and run metadata.

Design choices:
- Ray's flat config goes through `resolve.resolve`, so a trial validates exactly like the CLI.
- `report` forwards to `ray.tune.report(metrics, checkpoint=...)`, and a restarted trial resumes
  from `ray.tune.get_checkpoint()`: in Ray 2.x only the `ray.tune.*` names work inside a Tune
  function (`ray.train.report` ends the trial in ERROR).
- A checkpoint that fails to load is skipped with a warning and the trial starts from scratch,
  rather than failing the trial on every retry.
- Each trial directory holds `run.json` (resolved config, seed, versions, git SHA, data cache
  key, the node it ran on): what reproduces it; and, when it ends, `outcome.json` (history,
  samples, throughput). Both are written into the trial's *working directory* (Ray changes
  into it) and reach the experiment folder through Ray's artifact sync at every report, so
  they arrive from any node of a cluster and to any storage (`SyncConfig(sync_artifacts=True)`
  in `sweep.run_tuner`); never through a path that exists only on the trial's node.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from .config import OUTCOME_FILE, RUN_FILE, to_flat_dict
from .data import prepare_data
from .resolve import resolve
from .train import train


def git_sha(path: str | os.PathLike | None = None) -> str | None:
    """The commit of the checkout holding `path` (default: this package), or None."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain",
                            "--untracked-files=no"], capture_output=True, text=True,
                           timeout=5).stdout.strip()
    return out.stdout.strip() + ("-dirty" if dirty else "")


def package_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("tune-ablations", "torch", "ray", "optuna", "numpy", "tokenizers", "datasets",
                 "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def run_metadata(flat: dict[str, Any], cfg, data, *, sha: str | None) -> dict[str, Any]:
    return {"ablation": cfg.name, "seed": cfg.seed, "config": to_flat_dict(cfg),
            "param_space": flat, "git_sha": sha, "versions": package_versions(),
            "data": data.facts(cfg.total_tokens), "host": platform.node(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv}


def _node() -> dict[str, Any]:
    """The Ray node this trial runs on (a cluster has several)."""
    import ray

    if not ray.is_initialized():
        return {"node_id": None, "node_ip": None}
    return {"node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address()}


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


_DATA: dict[str, Any] = {}  # per worker process: a reused actor loads each corpus once


def _data(cfg, cache_dir: str | None):
    from .data import cache_key

    key = cache_key(cfg.data)
    if key not in _DATA:
        _DATA[key] = prepare_data(cfg.data, Path(cache_dir) if cache_dir else None,
                                  log=lambda s: None)
    return _DATA[key]


def run_trial(config: dict[str, Any], *, threads: int = 1, gpu_fraction: float = 0.0,
              cache_dir: str | None = None, sha: str | None = None) -> dict[str, Any]:
    """Ray Tune function trainable: one training run, reporting at every evaluation."""
    import torch
    from ray import tune

    cfg = resolve(config)
    if threads:
        torch.set_num_threads(threads)
    if torch.cuda.is_available() and 0 < gpu_fraction < 1:
        # Several trials share a GPU: cap this process so one cannot starve the others.
        torch.cuda.set_per_process_memory_fraction(gpu_fraction)
    context = tune.get_context()
    trial_dir = Path.cwd()  # Ray's trial working directory, synced to storage at each report
    data = _data(cfg, cache_dir)
    meta = run_metadata(dict(config), cfg, data, sha=sha) | {
        "trial_id": context.get_trial_id(), "threads": threads, "gpu_fraction": gpu_fraction,
        "pid": os.getpid(), **_node()}
    _write_json(trial_dir / RUN_FILE, meta)

    def report(metrics: dict[str, Any], save_checkpoint) -> None:
        with tempfile.TemporaryDirectory(prefix="ckpt-") as tmp:
            save_checkpoint(Path(tmp))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

    resume_dir = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        resume_dir = Path(tempfile.mkdtemp(prefix="resume-"))
        checkpoint.to_directory(str(resume_dir))

    def on_end(result: dict[str, Any]) -> None:
        _write_json(trial_dir / OUTCOME_FILE, result | {"trial_id": context.get_trial_id()})

    try:
        _train_resuming(cfg, report, data, resume_dir, threads, on_end)
    finally:
        if resume_dir is not None:
            shutil.rmtree(resume_dir, ignore_errors=True)
    return {}


def _train_resuming(cfg, report, data, resume_dir: Path | None, threads: int,
                    on_end) -> dict[str, Any]:
    """`train()`, resuming from `resume_dir` when given; a checkpoint that cannot be read
    (truncated, corrupted) is skipped with a warning and the run starts from scratch."""
    if resume_dir is not None:
        try:
            from .train import load_checkpoint

            load_checkpoint(resume_dir)
        except Exception as exc:  # any unreadable checkpoint: the trial must still run
            warnings.warn(f"event=checkpoint_unreadable path={resume_dir} "
                          f"error={type(exc).__name__} action=restart_from_scratch", stacklevel=2)
            print(f"event=checkpoint_unreadable error={type(exc).__name__}: {exc} "
                  "action=restart_from_scratch", file=sys.stderr, flush=True)
            resume_dir = None
    return train(cfg, report=report, data=data, resume_from=resume_dir, threads=threads,
                 log=lambda s: print(s, flush=True), on_end=on_end)


def build_trainable(*, cpus: float, gpus: float, cache_dir: str | None, sha: str | None,
                    resources: dict[str, float] | None = None):
    """`run_trial` with its parameters bound and its resources declared (custom resources
    place trials on chosen nodes of a cluster)."""
    from ray import tune

    threads = max(1, int(cpus))
    fn = tune.with_parameters(run_trial, threads=threads, gpu_fraction=gpus,
                              cache_dir=cache_dir, sha=sha)
    return tune.with_resources(fn, {"cpu": cpus, "gpu": gpus, **(resources or {})})
