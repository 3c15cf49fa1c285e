"""Ray Tune's side of a sweep: the progress table, readable trial folders, the callbacks that
keep statuses honest, tables live and checkpoints pruned safely, fitting or restoring the
Tuner, and Ray's final view of each trial.

Design choices:
- The live table goes to stderr with the other logs (stdout carries results and JSON only, so
  `grid --json` pipes into jq); its `run` column is our status; a trial the scheduler stopped
  is marked `early_stopped` the moment it is stopped, so the live table and the final tables
  agree.
- The table's head speaks of the sweep, not of Ray's open-ended trial count ("4/infinite"):
  a grid's arms and seeds (the current look, trials planned, running and done), a search's
  samples of the planned number. A grid shows no "current best trial" (arms are compared by
  the answer at the end, not ranked by one trial).
- Trial folders are named `<ablation>-s<seed>[-<varied values>]-<id>`.
- Checkpoints are pruned by us, not by Ray: Ray's `num_to_keep` deletes checkpoints that its
  last persisted experiment snapshot may still name, and a driver killed then cannot resume
  that trial. We keep the newest `keep` checkpoints of a trial plus every one the newest
  persisted snapshot names, so every unfinished trial can resume.
- run.json / outcome.json live in each trial's working directory and reach storage through
  `SyncConfig(sync_artifacts=True)`, from whichever node runs the trial.
"""

from __future__ import annotations

import re
import sys
import time
from typing import Any

from ..results.experiment import Experiment
from ..results.frames import load, write_tables
from ..spec.io import log
from ..spec.names import METRIC, RAY_ERROR, RAY_TERMINATED, TIME_ATTR, TRIALS_FILE, Status


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def trial_dirname(trial) -> str:
    """`baseline-s0-<id>`; a search's trial adds its values (`lr1e-3-batch_size8`)."""
    cfg = dict(trial.config)
    head = f"{cfg.pop('ablation', 'trial')}-s{cfg.pop('seed', 0)}"
    extra = "-".join(f"{k}{_short(v)}" for k, v in sorted(cfg.items()))
    name = f"{head}-{extra}" if extra else head
    return re.sub(r"[^\w.=+-]", "_", f"{name}-{trial.trial_id}")[:120]


def rewrite_progress(text: str, exp: Experiment, summary: str | None, best: bool) -> str:
    """Ray's progress text with our results location, our summary line in place of its trial
    count, and its "current best trial" only where one means something."""
    out = []
    for line in text.splitlines():
        if line.startswith("Result logdir"):
            line = f"Results: {exp}"
        elif line.startswith("Number of trials:") and summary:
            line = summary
        elif line.startswith("Current best trial:") and not best:
            continue
        out.append(line)
    return "\n".join(out)


def _counts(trials) -> str:
    """Trials by our status: running, done (completed, early-stopped, diverged), errored,
    pending."""
    from collections import Counter

    by = Counter()
    for t in trials:
        ray_status = str(t.status)
        ours = (t.last_result or {}).get("status")
        if ray_status == "TERMINATED":
            by[str(ours) if ours in (Status.EARLY_STOPPED, Status.DIVERGED) else "done"] += 1
        else:
            by[{"RUNNING": "running", "ERROR": "errored"}.get(ray_status, "pending")] += 1
    order = ("running", "done", Status.EARLY_STOPPED.value, Status.DIVERGED.value, "errored",
             "pending")
    return ", ".join(f"{by[k]} {k.replace('_', '-')}" for k in order if by[k])


def arms_progress(arms: list[str], seeds: int | str, max_seeds: int, lr_sweep: int = 0):
    """A grid's summary line: arms and seeds, the current look (seeds so far, up to how many),
    the lr sweep's trials with --tune-lr, trials by status and the most planned."""
    from ..spec.names import LR_SWEEP_SEED

    auto = seeds == "auto"
    most = len(arms) * (max_seeds if auto else int(seeds)) + lr_sweep

    def summary(trials) -> str:
        sweep = [t for t in trials if (t.config or {}).get("seed") == LR_SWEEP_SEED]
        seeded = [t for t in trials if t not in sweep]
        look = 1 + max((int(t.config.get("seed", 0)) for t in seeded), default=-1)
        parts = [f"{len(arms)} arms"]
        if lr_sweep:
            swept = sum(str(t.status) == "TERMINATED" for t in sweep)
            parts.append(f"lr sweep: {swept} of {lr_sweep} trials done")
        if auto:
            parts.append(f"seeds: look at {look} of up to {max_seeds} per arm" if seeded
                         else "seeds: none yet")
        else:
            parts.append(f"{seeds} seeds per arm")
        parts.append(f"trials: {_counts(trials) or 'none yet'}")
        parts.append(f"{len(trials)} so far, {'up to ' if auto else ''}{most} planned")
        return "Grid: " + " | ".join(parts)

    return summary


def samples_progress(samples: int):
    """A search's summary line: samples drawn of those planned, trials by status."""

    def summary(trials) -> str:
        return (f"Search: {len(trials)} of {samples} samples | trials: "
                f"{_counts(trials) or 'none yet'}")

    return summary


def progress_reporter(parameter_columns: list[str], exp: Experiment, summary=None,
                      best: bool = True):
    from ray import tune

    class Reporter(tune.CLIReporter):
        def _print(self, msg: str) -> None:  # a log: stdout carries results and JSON only
            print(msg, file=sys.stderr, flush=True)

        def _progress_str(self, trials, done, *sys_info, **kw):
            text = super()._progress_str(trials, done, *sys_info, **kw)
            return rewrite_progress(text, exp, summary(trials) if summary else None, best)

    return Reporter(
        metric_columns={"step": "step", TIME_ATTR: "tokens", METRIC: METRIC, "val_acc": "acc",
                        "tokens_per_s": "tok/s", "status": "run"},
        parameter_columns=parameter_columns, max_report_frequency=15, sort_by_metric=False)


def callbacks(exp: Experiment, keep: int, *, live: bool):
    """Honest statuses, safe checkpoint pruning and (optionally) live result tables."""
    from ray import tune

    class Statuses(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            if result.get("done") and result.get("status") == Status.RUNNING:
                result["status"] = Status.EARLY_STOPPED.value  # stopped by the scheduler

    class Pruner(tune.Callback):
        def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
            try:
                prune_checkpoints(exp, trial_folder(trial), keep)
            except OSError as exc:  # pruning must never stop the sweep
                log(f"event=prune_skipped error={type(exc).__name__}")

    class LiveTables(tune.Callback):
        def __init__(self):
            self.last = 0.0

        def on_trial_complete(self, iteration, trials, trial, **info):
            if time.time() - self.last < (5.0 if exp.remote else 2.0):
                return
            try:
                write_tables(load(exp), exp)
            except Exception as exc:  # a view must never stop the sweep
                log(f"event=live_view_skipped error={type(exc).__name__}")
            self.last = time.time()

    return [Statuses(), Pruner(), *([LiveTables()] if live else [])]


def trial_folder(trial) -> str:
    return str(trial.path).rstrip("/").rsplit("/", 1)[-1]


def snapshot_checkpoints(exp: Experiment, folder: str) -> list[str]:
    """Checkpoint folders of trial `folder` that the newest persisted experiment snapshot names,
    oldest first. Ray stores each trial's checkpoint manager cloudpickled as hex inside the
    snapshot's JSON; the paths are read out of those bytes (nothing is unpickled). With every
    checkpoint registered (no `num_to_keep`), the newest one named is what a restore uses."""
    states = exp.ray_states()
    if not states:
        return []
    text = exp.read_text(states[-1])
    pattern = re.compile(rf"{re.escape(folder)}/(checkpoint_\d+)")
    found = set(pattern.findall(text))
    for blob in re.findall(r"[0-9a-f]{64,}", text):  # the hex blobs, however escaped
        found |= set(pattern.findall(bytes.fromhex(blob).decode("latin-1")))
    return sorted(found)


def prune_checkpoints(exp: Experiment, folder: str, keep: int) -> list[str]:
    """Delete a trial's checkpoints except the newest `keep` and the newest one the persisted
    snapshot names (what a restore after a driver kill would load)."""
    names = exp.checkpoints(folder)
    if len(names) <= keep:
        return []
    named = snapshot_checkpoints(exp, folder)
    protected = set(names[-keep:]) | set(named[-1:])
    gone = [n for n in names if n not in protected]
    for n in gone:
        exp.delete(folder, n)
    return gone


def run_tuner(trainable, *, exp: Experiment, resume: bool, tune_config, max_failures: int,
              keep_checkpoints: int, parameter_columns: list[str],
              param_space: dict | None = None, extra_callbacks: list | None = None,
              summary=None, best: bool = True):
    """Fit a new Tuner, or restore the one in `exp` (errored trials retried; its callbacks,
    `extra_callbacks` such as a tracker's included, come back from Ray's tuner.pkl)."""
    from ray import tune

    from .options import SweepError

    storage_path, fs = exp.ray_storage()
    if resume:
        if not exp.has_ray_state():
            raise SweepError(f"--resume: {exp} has no Ray state (tuner.pkl): the sweep was "
                             "stopped before Ray started; rerun without --resume after removing "
                             "the folder")
        tuner = tune.Tuner.restore(exp.root, trainable=trainable,
                                   resume_errored=True, storage_filesystem=fs)
    else:
        run_config = tune.RunConfig(
            name=exp.name, storage_path=storage_path, storage_filesystem=fs,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),  # we prune (see above)
            sync_config=_sync_config(),
            progress_reporter=progress_reporter(parameter_columns, exp, summary, best),
            verbose=1,
            callbacks=[*callbacks(exp, keep_checkpoints, live=True), *(extra_callbacks or [])],
            log_to_file=True)
        tuner = tune.Tuner(trainable, param_space=param_space or {}, tune_config=tune_config,
                           run_config=run_config)
    return tuner.fit()


def _sync_config():
    """Artifacts (run.json, outcome.json) synced from every node: `ray.tune.SyncConfig` where
    Tune has its own (newer Ray); on older Ray (2.41) that name is a stub that raises, and the
    class is `ray.train.SyncConfig`, which Tune's RunConfig accepts there."""
    from ray import tune

    try:
        return tune.SyncConfig(sync_artifacts=True)
    except DeprecationWarning:
        from ray.train import SyncConfig

        return SyncConfig(sync_artifacts=True)


def record_states(exp: Experiment, results) -> dict[str, dict]:
    """Ray's final view of each trial into `trials.json` (analysis needs no Ray after this)."""
    states: dict[str, dict] = {}
    for r in results:
        trial_id = (r.metrics or {}).get("trial_id") or str(r.path).rsplit("/", 1)[-1]
        states[trial_id] = {
            "status": RAY_ERROR if r.error else RAY_TERMINATED, "path": str(r.path),
            "error": f"{type(r.error).__name__}: {str(r.error)[:500]}" if r.error else None}
    exp.write_json(states, TRIALS_FILE)
    return states
