"""The only bridge to Ray: a function trainable around `train()`, its resources, and what each
trial records.

Design choices:
- Data to the trials, not trials to the data: the driver prepares every corpus once and hands
  the token arrays, the tokenizer and the extra domains to the trials through Ray's object
  store (`tune.with_parameters`). A trial on any host reads nothing from the driver's disk and
  never rebuilds a tokenizer; only data the driver did not prepare is prepared where it runs.
- A trial receives the sweep's base `RunSpec` whole and only what varies in Ray's config
  (ablation, seed, a search's samples), so it resolves exactly as the command line did.
- `report` forwards to `ray.tune.report(metrics, checkpoint=...)`, and a restarted trial resumes
  from `ray.tune.get_checkpoint()` (in Ray 2.x only the `ray.tune.*` names work inside a Tune
  function). A checkpoint that fails to load is skipped with a warning and the trial starts
  from scratch rather than failing on every retry.
- A trial whose outcome is already in the experiment (the driver died after it finished, before
  Ray's snapshot said so) reports that outcome again and does not train.
- Each trial's `run.json` holds what reproduces it: the spec, the resolved config, versions, git
  SHA, data facts, the node, the user's command line and the one-run command for this trial.
  It and `outcome.json` are written in the trial's working directory and reach storage through
  Ray's artifact sync, from whichever node ran the trial.
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

from ..results.experiment import Experiment
from ..spec.io import redact, write_atomic
from ..spec.names import OUTCOME_FILE, RUN_FILE, Status
from ..spec.runspec import RunSpec
from ..training.resolved import Resolver
from ..training.trainer import train
from .decide import pin_spec

# Tests only: "<step>:<folder>[:<prefix>]" makes a trial (whose folder starts with <prefix>)
# report at its first evaluation at or after <step>, then create <folder>/held-<trial> and wait
# for <folder>/release (all trials) or <folder>/release-<trial>: a kill test kills on that state,
# never after a sleep.
HOLD_ENV = "TUNE_ABLATIONS_TEST_HOLD"
# Tests only: "<folder>" makes the driver, once Ray's Tuner has returned (every trial ended,
# the final snapshot written), create <folder>/held-driver and wait for
# <folder>/release-driver: a kill "after the last trial" on a state.
HOLD_DRIVER_ENV = "TUNE_ABLATIONS_TEST_HOLD_DRIVER"
VARIED = ("ablation", "seed")


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
                 "transformers", "lion-pytorch", "schedulefree"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def trial_spec(base: RunSpec, config: dict[str, Any]) -> RunSpec:
    """The base spec with what Ray's config varies for this trial."""
    from dataclasses import replace

    spec = replace(base, **{k: config[k] for k in VARIED if k in config})
    params = {k: v for k, v in config.items() if k not in VARIED}
    return spec.with_params(**params) if params else spec


def _node() -> dict[str, Any]:
    """The Ray node this trial runs on (a cluster has several)."""
    import ray

    if not ray.is_initialized():
        return {"node_id": None, "node_ip": None}
    return {"node_id": ray.get_runtime_context().get_node_id(),
            "node_ip": ray.util.get_node_ip_address()}


_DATA: dict[str, Any] = {}  # per worker process: a reused actor prepares a corpus once


def run_metadata(spec: RunSpec, cfg, data, **extra: Any) -> dict[str, Any]:
    from ..spec.config import to_flat_dict

    return {"ablation": cfg.name, "seed": cfg.seed, "label": spec.label,
            "spec": spec.to_dict(), "config": to_flat_dict(cfg), "versions": package_versions(),
            "data": data.facts(cfg.total_tokens), "host": platform.node(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "reproduce": " ".join(["python -m tune_ablations.train",
                                   *spec.settled().to_argv()]), **extra}


def run_record(spec: RunSpec, cfg, data, **extra: Any) -> str:
    """The text of a trial's run.json (what reproduces it)."""
    return json.dumps(run_metadata(spec, cfg, data, **extra), indent=2, default=str)


def outcome_record(result: dict[str, Any], trial_id: str) -> str:
    """The text of a trial's outcome.json (its history, samples and throughput)."""
    return json.dumps(result | {"trial_id": trial_id}, indent=2, default=str)


def _finished_outcome(experiment: str | None, trial_name: str) -> dict | None:
    if not experiment:
        return None
    outcome = Experiment(experiment).read_json(trial_name, OUTCOME_FILE)
    done = (Status.COMPLETED, Status.DIVERGED)
    return outcome if outcome and outcome.get("status") in done and outcome.get("history") \
        else None


def run_trial(config: dict[str, Any], *, base: dict, datasets: dict | None = None,
              threads: int = 1, gpu_fraction: float = 0.0, cache_dir: str | None = None,
              experiment: str | None = None, sha: str | None = None,
              argv: list[str] | None = None, choice: dict | None = None) -> dict[str, Any]:
    """Ray Tune function trainable: one training run, reporting at every evaluation, in the
    precision and compilation the sweep decided for all its trials (`choice`)."""
    import torch
    from ray import tune

    from ..training.probes import Choice

    decided = Choice.from_dict(choice) if choice else None
    spec = trial_spec(RunSpec.from_dict(base), config)
    resolver = Resolver(cache_dir, datasets=datasets, memo=_DATA)
    spec = pin_spec(spec, Resolver(prepare=False).config(spec), decided)
    cfg, data = resolver.run(spec)
    torch.set_num_threads(threads)
    if torch.cuda.is_available() and 0 < gpu_fraction < 1:
        # Several trials share a GPU: cap this process so one cannot starve the others.
        torch.cuda.set_per_process_memory_fraction(gpu_fraction)
    context = tune.get_context()
    trial_dir = Path.cwd()  # Ray's trial working directory, synced to storage at each report
    name = Path(context.get_trial_dir()).name
    done = _finished_outcome(experiment, name)
    if done is not None:  # finished before the driver died: report it again, do not retrain
        tune.report({k: v for k, v in done["history"][-1].items() if "window" not in k})
        return {}
    write_atomic(trial_dir / RUN_FILE, run_record(
        spec, cfg, data, trial_id=context.get_trial_id(), git_sha=sha, threads=threads,
        runtime=_runtime(cfg, decided),
        gpu_fraction=gpu_fraction, pid=os.getpid(), argv=[redact(a) for a in (argv or [])],
        **_node()))
    hold = _hold(name)

    def report(metrics: dict[str, Any], save_checkpoint) -> None:
        with tempfile.TemporaryDirectory(prefix="ckpt-") as tmp:
            save_checkpoint(Path(tmp))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
        hold(metrics["step"])

    def on_end(result: dict[str, Any]) -> None:
        write_atomic(trial_dir / OUTCOME_FILE, outcome_record(result, context.get_trial_id()))

    resume_dir = _checkpoint_dir(tune.get_checkpoint())
    try:
        _train_resuming(cfg, report, data, resume_dir, threads, on_end, decided)
    finally:
        if resume_dir is not None:
            shutil.rmtree(resume_dir, ignore_errors=True)
    return {}


def _runtime(cfg, choice) -> dict[str, Any]:
    """The trial's precision and compilation, why, and where the sweep measured that (a node
    unlike the probe's trains in the same setting: one precision per sweep)."""
    from ..training.runtime import machine_id

    why = choice.reasons(cfg) if choice else ("", "")
    return {"precision": cfg.precision, "compile": cfg.compile, "precision_reason": why[0],
            "compile_reason": why[1], "decided_on": choice.machine if choice else None,
            "this_machine": machine_id()}


def _checkpoint_dir(checkpoint) -> Path | None:
    if checkpoint is None:
        return None
    resume_dir = Path(tempfile.mkdtemp(prefix="resume-"))
    checkpoint.to_directory(str(resume_dir))
    return resume_dir


def _hold(name: str):
    """The test-only hold point (see HOLD_ENV); a no-op unless the variable is set."""
    spec = os.environ.get(HOLD_ENV, "")
    at, folder, prefix = (spec.split(":", 2) + [""])[:3] if spec else ("", "", "")
    if not spec or not name.startswith(prefix):
        return lambda step: None
    state = {"held": False}

    def hold(step: int) -> None:
        if state["held"] or step < int(at):
            return
        state["held"] = True
        Path(folder, f"held-{name}").write_text(str(step))
        while not (Path(folder, "release").exists() or Path(folder, f"release-{name}").exists()):
            time.sleep(0.05)

    return hold


def hold_driver() -> None:
    """The driver's test-only hold point (see HOLD_DRIVER_ENV); a no-op unless it is set."""
    folder = os.environ.get(HOLD_DRIVER_ENV)
    if not folder:
        return
    Path(folder, "held-driver").write_text(str(os.getpid()))
    while not Path(folder, "release-driver").exists():
        time.sleep(0.05)


def _train_resuming(cfg, report, data, resume_dir: Path | None, threads: int,
                    on_end, choice=None) -> dict[str, Any]:
    """`train()`, resuming from `resume_dir` when given; a checkpoint that cannot be read
    (truncated, corrupted) is skipped with a warning and the run starts from scratch."""
    if resume_dir is not None:
        try:
            from ..training.step import load_checkpoint

            load_checkpoint(resume_dir)
        except Exception as exc:  # any unreadable checkpoint: the trial must still run
            warnings.warn(f"event=checkpoint_unreadable path={resume_dir} "
                          f"error={type(exc).__name__} action=restart_from_scratch", stacklevel=2)
            print(f"event=checkpoint_unreadable error={type(exc).__name__}: {exc} "
                  "action=restart_from_scratch", file=sys.stderr, flush=True)
            resume_dir = None
    return train(cfg, report=report, data=data, resume_from=resume_dir, threads=threads,
                 log=lambda s: print(s, flush=True), on_end=on_end, choice=choice)


def build_trainable(*, base: RunSpec, datasets: dict, cpus: float, gpus: float,
                    cache_dir: str | None, experiment: str, sha: str | None, argv: list[str],
                    resources: dict[str, float] | None = None, choice: dict | None = None):
    """`run_trial` with its parameters in the object store and its resources declared (custom
    resources place trials on chosen nodes of a cluster)."""
    from ray import tune

    threads = max(1, int(cpus))
    fn = tune.with_parameters(run_trial, base=base.to_dict(), datasets=datasets,
                              threads=threads, gpu_fraction=gpus, cache_dir=cache_dir,
                              experiment=experiment, sha=sha, argv=argv, choice=choice)
    return tune.with_resources(fn, {"cpu": cpus, "gpu": gpus, **(resources or {})})
