"""The Ray Tune callbacks behind `--tracker`: Ray's own `MLflowLoggerCallback` and
`WandbLoggerCallback` (run on the driver), told what a trial of this project is. Built by
`sweeps.trackers.build_tracker`; this module imports Ray, that one does not.

Design choices:
- One run per trial, named like the trial's folder (`baseline-s0-<id>`). Its params (W&B: its
  config) are the trial's resolved config as flat keys: the names of run.json's `config` and of
  the results DataFrame's columns, resolved on the driver as the trial resolves them (the base
  spec, Ray's varied values, the corpus's real vocabulary). Tags: the arm (`ablation`), seed,
  trial id, sweep name and kind, the experiment's location and the trial's status, kept
  current (running, then completed / early_stopped / diverged / error). W&B has no keyed tags:
  arm, seed and trial id are config, the sweep is the run group, the kind its job type, and
  the status is in the summary and added to the tags at the end.
- Metrics by tokens: every metric the trial reports (the trainer's `REPORT_KEYS`, extra domains
  `val_loss@x`) is logged with step = `tokens_seen`, as every comparison here is made at equal
  tokens. Ray's callbacks step by iteration and also log Ray's bookkeeping (`time_this_iter_s`,
  `pid`, ...), so their result handling is replaced. MLflow's names allow no `@`: `val_loss@x`
  is logged as `val_loss.x`. W&B: `define_metric("*", step_metric="tokens_seen")`.
- Resume: Ray restores these callbacks from `tuner.pkl`. The MLflow run of a trial is found again
  by its trial id and continued (tag `resumed`); the evaluations a resumed trial repeats after
  its checkpoint are not logged twice (the last tokens_seen logged is read back from MLflow).
  W&B: the same run id with `resume="allow"`. A killed driver takes W&B's unflushed records with
  it (offline, the killed run's folder can be empty), so a restored trial's run is first sent
  the evaluations Ray recorded before the stop (its result.json in the experiment), then the
  new ones; an evaluation W&B had already flushed then appears twice, at the same tokens_seen
  with the same values.
- A tracker must never cost the sweep: an error while logging is one line on stderr (the first
  per trial) and the sweep goes on.
"""

from __future__ import annotations

import numbers
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.air.integrations.wandb import WandbLoggerCallback, _QueueItem, _WandbLoggingActor

from ..spec.config import to_flat_dict
from ..spec.io import log, redact
from ..spec.names import HISTORY_NAMES, REPORT_KEYS, TIME_ATTR, Status
from ..spec.resolve import resolve
from ..spec.runspec import RunSpec
from .tuner import trial_dirname, trial_folder

STATUS_ITEM = "status"
"""A W&B logging actor's queue item: the trial's status (Ray's own items are `_QueueItem`s)."""


@dataclass(frozen=True)
class TrialContext:
    """What the driver knows of every trial of a sweep, to describe each one to a tracker."""
    sweep: str
    """The sweep's (experiment's) name."""
    kind: str
    """`grid` or `search`."""
    base: dict
    """The sweep's base RunSpec, as `RunSpec.to_dict()`."""
    vocab: dict
    """data id -> the real vocabulary size of each corpus the driver prepared."""
    results: str
    """The experiment's location, credentials redacted."""
    location: str | None = None
    """The experiment's location to read from (None when it holds credentials, which are never
    kept here: this object is stored in Ray's tuner.pkl)."""
    choice: dict | None = None
    """The sweep's precision and compile decision (`probes.Choice.to_dict()`), which every
    trial pins where its config says `auto`."""

    def config(self, trial_config: dict[str, Any]) -> dict[str, Any]:
        """The trial's resolved config, flat, as its run.json records it (strings redacted)."""
        from ..training.data import data_id
        from ..training.probes import Choice
        from .decide import pin_spec
        from .trainable import trial_spec  # here: W&B's logging actors import this module

        spec = trial_spec(RunSpec.from_dict(self.base), trial_config)
        first = resolve(spec)
        if self.choice:  # as the trial pins it (trainable.run_trial)
            spec = pin_spec(spec, first, Choice.from_dict(self.choice))
        cfg = resolve(spec, vocab_size=self.vocab.get(data_id(first.data)))
        return {k: redact(v) if isinstance(v, str) else v for k, v in to_flat_dict(cfg).items()}

    def tags(self, config: dict[str, Any], trial) -> dict[str, str]:
        return {"sweep": self.sweep, "kind": self.kind, "ablation": str(config["name"]),
                "seed": str(config["seed"]), "trial_id": trial.trial_id,
                "status": Status.RUNNING.value, "results": self.results}


def reported_metrics(result: dict[str, Any]) -> dict[str, float]:
    """The numeric metrics a trial reported (not Ray's bookkeeping), as floats, under the names
    the experiment's history table gives them."""
    return {HISTORY_NAMES.get(k, k): float(v) for k, v in result.items()
            if (k in REPORT_KEYS or "@" in k) and isinstance(v, numbers.Real)}


def final_status(last_result: dict[str, Any] | None, failed: bool) -> str:
    """How a trial that Ray ended ended: an error, else what it last reported; a trial ended
    while still `running` was stopped by the scheduler (results.frames reads it the same way)."""
    if failed:
        return Status.ERROR.value
    status = (last_result or {}).get("status")
    return Status.EARLY_STOPPED.value if status in (None, Status.RUNNING) else str(status)


def mlflow_name(key: str) -> str:
    """A metric name MLflow accepts and its file store can hold beside the others: `@` becomes
    `.` (`val_loss@code` -> `val_loss.code`; a `/` would make `val_loss` a folder), any other
    character outside letters, digits, `_ - .` and spaces becomes `_`."""
    return re.sub(r"[^\w.\- ]", "_", key.replace("@", "."))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return redact(text.splitlines()[0][:300]) if text else ""


class _Guarded:
    """Logging errors become one line per trial; the sweep goes on."""
    tracker = ""

    def _guard(self, trial, fn, *args) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            failed = self.__dict__.setdefault("_failed", set())
            key = getattr(trial, "trial_id", "setup")
            if key not in failed:
                failed.add(key)
                log(f"warning: event=tracker_error tracker={self.tracker} trial={key} "
                    f"error={type(exc).__name__}: {_first_line(exc)} (the sweep goes on; "
                    "further errors of this trial are not shown)")
            return None


class MLflowTracker(_Guarded, MLflowLoggerCallback):
    """One MLflow run per trial: resolved config as params, metrics by tokens, status tags."""
    tracker = "mlflow"

    def __init__(self, *, tracking_uri: str, experiment_name: str, context: TrialContext):
        super().__init__(tracking_uri=tracking_uri, experiment_name=experiment_name)
        self.context = context

    def __getstate__(self) -> dict[str, Any]:  # tuner.pkl: settings only, no live client
        return {k: v for k, v in self.__dict__.items()
                if k not in ("_client", "_trial_runs", "_tokens", "_status", "_failed")}

    def setup(self, *args, **kwargs) -> None:
        from mlflow.tracking import MlflowClient

        self._trial_runs, self._tokens, self._status = {}, {}, {}
        self._guard(None, super().setup, *args, **kwargs)
        self._client = MlflowClient(tracking_uri=self.tracking_uri)

    def log_trial_start(self, trial) -> None:
        if trial not in self._trial_runs:
            self._guard(trial, self._start, trial)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        self._guard(trial, self._result, trial, result)

    def log_trial_end(self, trial, failed: bool = False) -> None:
        self._guard(trial, self._end, trial, failed)

    def _start(self, trial) -> str:
        from mlflow.entities import Param

        config = self.context.config(trial.config)
        run_id = self._existing_run(trial)
        if run_id is None:
            run = self._client.create_run(self.mlflow_util.experiment_id,
                                          run_name=trial_dirname(trial),
                                          tags=self.context.tags(config, trial))
            run_id = run.info.run_id
            params = [Param(k, str(v)) for k, v in config.items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params a batch
                self._client.log_batch(run_id, params=params[i:i + 100])
            self._tokens[run_id] = -1
        self._trial_runs[trial] = run_id
        return run_id

    def _existing_run(self, trial) -> str | None:
        """A resumed sweep's run of this trial (continued), or None."""
        runs = self._client.search_runs([self.mlflow_util.experiment_id],
                                        filter_string=f"tags.trial_id = '{trial.trial_id}'")
        runs = [r for r in runs if r.data.tags.get("sweep") == self.context.sweep]
        if not runs:
            return None
        run_id = runs[0].info.run_id
        seen = self._client.get_metric_history(run_id, TIME_ATTR)
        self._tokens[run_id] = max((int(m.step) for m in seen), default=-1)
        self._client.update_run(run_id, status="RUNNING")
        self._client.set_tag(run_id, "resumed", "true")
        return run_id

    def _result(self, trial, result: dict) -> None:
        from mlflow.entities import Metric

        run_id = self._trial_runs.get(trial) or self._start(trial)
        tokens = result.get(TIME_ATTR)
        if tokens is not None and int(tokens) > self._tokens[run_id]:
            now = int(time.time() * 1000)
            self._client.log_batch(run_id, metrics=[
                Metric(mlflow_name(k), v, now, int(tokens))
                for k, v in reported_metrics(result).items()])
            self._tokens[run_id] = int(tokens)
        self._set_status(run_id, result.get("status"))

    def _set_status(self, run_id: str, status: str | None) -> None:
        if status and self._status.get(run_id) != status:
            self._client.set_tag(run_id, "status", str(status))
            self._status[run_id] = status

    def _end(self, trial, failed: bool) -> None:
        run_id = self._trial_runs.get(trial) or self._start(trial)
        self._set_status(run_id, final_status(trial.last_result, failed))
        self._client.set_terminated(run_id, status="FAILED" if failed else "FINISHED")


class TokensWandbActor(_WandbLoggingActor):
    """Ray's W&B logging actor (one process per trial), logging metrics by tokens: the queue
    carries the reported metrics, the status, and Ray's end marker."""

    def run(self) -> None:
        os.environ["WANDB_START_METHOD"] = "thread"
        os.environ.update(self.kwargs.pop("environment", {}))
        run = self._wandb.init(*self.args, **self.kwargs)
        run.define_metric(TIME_ATTR)
        run.define_metric("*", step_metric=TIME_ATTR)
        while True:
            kind, item = self.queue.get()
            if kind == _QueueItem.END:
                break
            if kind == STATUS_ITEM:
                run.summary["status"] = item
                if item != Status.RUNNING and item not in run.tags:
                    run.tags = (*run.tags, item)
            elif kind == _QueueItem.RESULT:
                run.log(item)
        run.finish()


class WandbTracker(_Guarded, WandbLoggerCallback):
    """One W&B run per trial (id = Ray's trial id): resolved config, metrics by tokens."""
    tracker = "wandb"
    _logger_actor_cls = TokensWandbActor

    def __init__(self, *, project: str, base_url: str | None, context: TrialContext):
        super().__init__(project=project, group=context.sweep, job_type=context.kind)
        self.context = context
        self.base_url = base_url
        self._tokens: dict = {}
        self._status: dict = {}

    def setup(self, *args, **kwargs) -> None:
        self._guard(None, super().setup, *args, **kwargs)

    def log_trial_start(self, trial) -> None:
        self._guard(trial, self._start, trial)

    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        self._guard(trial, self._result, trial, result)

    def log_trial_end(self, trial, failed: bool = False) -> None:
        self._guard(trial, self._end, trial, failed)

    def _start(self, trial) -> None:
        if trial in self._trial_logging_futures:  # a retried trial keeps its actor
            return
        config = self.context.config(trial.config)
        restored = dict(trial.last_result or {})  # a restored trial: Ray's last record of it
        env = {k: v for k, v in (("WANDB_MODE", os.environ.get("WANDB_MODE")),
                                 ("WANDB_BASE_URL", self.base_url)) if v}
        folder = os.path.abspath(os.environ.get("WANDB_DIR") or ".")
        os.makedirs(folder, exist_ok=True)
        self._start_logging_actor(
            trial, [], id=trial.trial_id, name=trial_dirname(trial), project=self.project,
            group=self.context.sweep[:128], job_type=self.context.kind,
            tags=[self.context.kind, self.context.sweep[:64]], resume="allow",
            allow_val_change=True, dir=folder, environment=env,
            config={**config, "ablation": config["name"], "trial_id": trial.trial_id,
                    "sweep": self.context.sweep, "kind": self.context.kind,
                    "results": self.context.results})
        if restored.get(TIME_ATTR) is not None:
            for row in [*self._recorded(trial, int(restored[TIME_ATTR])), restored]:
                self._result(trial, row)

    def _recorded(self, trial, until: int) -> list[dict]:
        """The reports Ray recorded of a restored trial (up to `until` tokens), from its
        result.json in the experiment; none when the location cannot be read here."""
        from ..results.experiment import Experiment
        from ..results.frames import parse_reports
        from ..spec.names import RAY_RESULT_FILE

        if self.context.location is None:
            return []
        try:
            text = Experiment(self.context.location).read_text(trial_folder(trial),
                                                               RAY_RESULT_FILE)
        except FileNotFoundError:
            return []
        return [r for r in parse_reports(text) if int(r.get(TIME_ATTR, until + 1)) <= until]

    def _result(self, trial, result: dict) -> None:
        if trial not in self._trial_logging_actors:
            self._start(trial)
        tokens = result.get(TIME_ATTR)
        if tokens is not None and int(tokens) > self._tokens.get(trial, -1):
            self._tokens[trial] = int(tokens)
            self._trial_queues[trial].put((_QueueItem.RESULT, reported_metrics(result)))
        status = result.get("status")
        if status and self._status.get(trial) != status:
            self._status[trial] = status
            self._trial_queues[trial].put((STATUS_ITEM, str(status)))

    def _end(self, trial, failed: bool) -> None:
        if trial in self._trial_queues:
            self._trial_queues[trial].put((STATUS_ITEM, final_status(trial.last_result, failed)))
            super().log_trial_end(trial, failed)
