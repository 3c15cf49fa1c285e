"""Ray Tune's side of a sweep: the progress table, the live view, fitting or restoring a
Tuner (locally or on a storage URI), and Ray's final view of each trial.

Design choices:
- Ray snapshots the experiment state only every >= 10 s by default; `sweep.init_ray` sets 1 s so
  a sweep killed mid-way resumes its trials from their checkpoints rather than from step 0.
- run.json / outcome.json live in each trial's working directory and reach the storage through
  `SyncConfig(sync_artifacts=True)`, from whichever node runs the trial.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .cli import log
from .config import METRIC, TIME_ATTR, TRIALS_FILE
from .storage import download, exists, filesystem, join, upload
from .sweep_args import SweepError


def progress_reporter(parameter_columns: list[str]):
    from ray import tune

    return tune.CLIReporter(
        metric_columns={"step": "step", TIME_ATTR: "tokens", METRIC: METRIC,
                        "val_acc": "acc", "tokens_per_s": "tok/s", "status": "run"},
        parameter_columns=parameter_columns, max_report_frequency=15, sort_by_metric=False)


def live_view(exp: Path, space):
    """A Tune callback that rewrites the results tables (and a search's study.db) whenever a
    trial finishes, at most every 2 s, so dashboards show a running sweep (local storage)."""
    from ray import tune

    class LiveView(tune.Callback):
        def __init__(self):
            self.last = 0.0

        def on_trial_complete(self, iteration, trials, trial, **info):
            if time.time() - self.last < 2.0:
                return
            from .study import refresh

            try:
                refresh(exp, space)
            except Exception as exc:  # a view must never stop the sweep
                log(f"event=live_view_skipped error={type(exc).__name__}")
            self.last = time.time()

    return LiveView()


def run_tuner(trainable, param_space: dict[str, Any] | None, *, exp: Path, resume: bool,
              tune_config, max_failures: int, keep_checkpoints: int,
              parameter_columns: list[str], remote: str | None = None, callbacks=()):
    """Fit a new Tuner, or restore the one in `exp` (errored trials retried). With `remote`
    (a storage URI), Ray persists the experiment there through a pyarrow filesystem."""
    from ray import tune

    fs, root = filesystem(remote.rsplit("/", 1)[0]) if remote else (None, str(exp.parent))
    where = join(root, exp.name)
    if resume:
        if not (exists(join(remote, "tuner.pkl")) if remote else (exp / "tuner.pkl").exists()):
            raise SweepError(f"--resume: {remote or exp} has no Ray state (tuner.pkl): the "
                             "sweep was stopped before Ray started; rerun without --resume "
                             "after removing the folder")
        tuner = tune.Tuner.restore(where, trainable=trainable, resume_errored=True,
                                   storage_filesystem=fs)
    else:
        run_config = tune.RunConfig(
            name=exp.name, storage_path=root, storage_filesystem=fs,
            failure_config=tune.FailureConfig(max_failures=max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=keep_checkpoints),
            # run.json / outcome.json live in the trial's working directory: synced to
            # storage at every report, from whichever node runs the trial.
            sync_config=tune.SyncConfig(sync_artifacts=True),
            progress_reporter=progress_reporter(parameter_columns), verbose=1,
            callbacks=list(callbacks),
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
    tmp = exp / (TRIALS_FILE + ".tmp")
    tmp.write_text(json.dumps(states, indent=2))
    tmp.replace(exp / TRIALS_FILE)
    return states


def finish(exp: Path, results, *, started: float, remote: str | None = None
           ) -> tuple[Any, int]:
    """Write statuses and tables, print the failed trials; returns (results frame, exit code).
    With `remote`, the experiment is mirrored first and the written files uploaded."""
    from .results import load_results, write_tables

    if remote:
        download(remote, exp)
    record_states(exp, results)
    written = write_tables(exp)
    if remote:
        for path in [exp / TRIALS_FILE, *written.values()]:
            upload(path, join(remote, path.name))
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
