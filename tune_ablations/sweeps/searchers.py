"""The searchers that decide which trial runs next: `ArmsSearcher` for grids (seeds shared by
arms, fixed or decided by the data) and `OptunaSearcher` for searches (Optuna's ask/tell).

Design choices:
- Both are Ray Tune `Searcher`s, so one Tuner runs the whole sweep and `--resume` restores
  them with Ray's experiment (their state is saved, as JSON, with every experiment snapshot).
- `ArmsSearcher` with `seeds="auto"` runs looks: three seeds for every arm (`FIRST_LOOK`), then
  one more seed for the baseline and the arms whose comparison is still undecided
  (`results.sequential`), until every arm is decided, `max_seeds` is reached, or the next look
  would not fit the time budget; it says which arms stayed undecided and why. Within a look the
  costliest arms start first. The family is every arm, also one whose every seed diverged
  (which gets no more seeds: divergence is its outcome).
  Every look and decision is recorded in decisions.json, which the report replays.
- `OptunaSearcher` tells the sampler the truth: a trial ASHA stopped is PRUNED with its
  intermediate values keyed by tokens seen (Ray's OptunaSearch reports it COMPLETE with its
  partial-budget loss); a diverged one PRUNED at its last finite value, so TPE counts it among
  the bad trials and samples fewer diverging values (a FAIL it would ignore); an errored one
  FAIL. The study lives in an Optuna storage
  (SQLite in the experiment, or a shared database such as PostgreSQL), written as trials
  report, so optuna-dashboard follows a running search. After a driver kill, trials the study
  holds as RUNNING but Ray never scheduled are handed out again, so no trial is lost or
  duplicated.
- Resuming from any host: the searcher's state, saved by Ray with every experiment snapshot,
  holds each trial's record (params, reports, end) as told to the study. A restored searcher
  checks the study it finds against those records: a study that is ahead (a shared database,
  or this host's own file, written after the snapshot) is kept; one that is behind or holds
  other trials (another host's local file, or none) is rebuilt from the records, so the study
  and Ray's trials agree whichever host resumes. The default SQLite file is found on the host
  that runs the driver, not at the path of the host that started the search.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ..results.experiment import Experiment
from ..results.sequential import ALPHA, FIRST_LOOK, decide, describe
from ..spec.names import DECISIONS_FILE, METRIC, MODE, STUDY_FILE, TIME_ATTR, Status


def _searcher_base():
    from ray.tune.search import Searcher

    return Searcher


class ArmsSearcher(_searcher_base()):
    """A grid's arms x seeds, seed by seed."""

    def __init__(self, arms: list[str], *, seeds: int | str, max_seeds: int,
                 time_budget: float | None, slots: int, experiment: str | None,
                 alpha: float = ALPHA):
        super().__init__(metric=METRIC, mode=MODE)
        self.arms, self.auto, self.alpha = list(arms), seeds == "auto", alpha
        self.max_seeds = max_seeds if self.auto else int(seeds)
        self.time_budget, self.slots, self.experiment = time_budget or 0.0, slots, experiment
        first = FIRST_LOOK if self.auto else int(seeds)
        self.looks = [first]
        self.queue: list[tuple[str, int]] = [(a, s) for s in range(first) for a in self.arms]
        self.live: dict[str, tuple[str, int]] = {}
        self.results: dict[str, dict[str, Any]] = {}
        self.verdicts: dict[str, str] = {}
        self.decided_at: dict[str, int] = {}  # seeds at the deciding look
        self.stopped_because, self.finished = "", False
        self.spent, self.session = 0.0, time.time()

    # --- Ray's Searcher interface ---------------------------------------------------------

    def suggest(self, trial_id: str) -> dict | str | None:
        if not self.queue and not self.live and not self.finished:
            self._next_look()
        if self.queue:
            arm, seed = self.queue.pop(0)
            self.live[trial_id] = (arm, seed)
            return {"ablation": arm, "seed": seed}
        return self.FINISHED if self.finished and not self.live else None

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        if trial_id not in self.live:
            return
        arm, seed = self.live.pop(trial_id)
        result = result or {}
        status = Status.ERROR.value if error else str(result.get("status", "error"))
        self.results[f"{arm}/{seed}"] = {"arm": arm, "seed": seed, "status": status,
                                         "loss": result.get(METRIC),
                                         "seconds": result.get("time_total_s")}

    _STATE = ("arms", "auto", "alpha", "max_seeds", "time_budget", "slots", "experiment",
              "looks", "queue", "live", "results", "verdicts", "decided_at", "stopped_because",
              "finished")

    def save(self, checkpoint_path: str) -> None:
        state = {k: getattr(self, k) for k in self._STATE} | {"spent": self.elapsed()}
        Path(checkpoint_path).write_text(json.dumps(state))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        state["queue"] = [tuple(q) for q in state["queue"]]
        state["live"] = {k: tuple(v) for k, v in state["live"].items()}
        self.__dict__.update(state)
        self.session = time.time()
        # Restoring, Ray copies the experiment's *.json into its staging folder (beside this
        # checkpoint) and uploads that folder with every snapshot and at the end: its copy of
        # decisions.json would overwrite the one write_record keeps current in the experiment.
        Path(checkpoint_path).with_name(DECISIONS_FILE).unlink(missing_ok=True)
        self.write_record()

    # --- the procedure ----------------------------------------------------------------------

    def elapsed(self) -> float:
        return self.spent + time.time() - self.session

    def losses(self) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {}
        for r in self.results.values():
            if r["status"] == Status.COMPLETED and r["loss"] is not None:
                out.setdefault(r["arm"], {})[r["seed"]] = float(r["loss"])
        return out

    def _next_look(self) -> None:
        others = [a for a in self.arms if a != "baseline"]
        undecided = others
        if self.auto:
            outcome = decide(self.losses(), others, self.looks, max_seeds=self.max_seeds,
                             alpha=self.alpha)
            self.verdicts = {a: d.verdict for a, d in outcome.decisions.items()}
            self.decided_at = {a: self.looks[d.look] for a, d in outcome.decisions.items()
                               if d.look is not None}
            alive = self.losses()  # an arm that lost every seed gets no more: that is its outcome
            undecided = [a for a in outcome.undecided if a in alive]
        n = self.looks[-1]
        why = self._stop_reason(undecided, n)
        if why is not None:
            self.finished, self.stopped_because = True, why
        else:
            self.queue = [(a, n) for a in self.arms if a == "baseline" or a in undecided]
            self.looks.append(n + 1)
        self.write_record()

    def _stop_reason(self, undecided: list[str], n: int) -> str | None:
        if not self.auto:
            return ""
        if not undecided:
            return ""
        if n >= self.max_seeds:
            return f"--max-seeds {self.max_seeds} reached"
        done = [r["seconds"] for r in self.results.values() if r["seconds"]]
        if self.time_budget and done:
            trials = len(undecided) + 1
            estimate = math.ceil(trials / max(1, self.slots)) * (sum(done) / len(done))
            if self.elapsed() + estimate > self.time_budget:
                return (f"time budget: another look ({trials} trials, about {estimate:.0f} s) "
                        f"would end past --time-budget {self.time_budget:g} s")
        return None

    def record(self) -> dict[str, Any]:
        """What decisions.json holds (the report replays the procedure from it)."""
        looks = self.looks if not self.queue else self.looks[:-1]
        looks = self.looks if self.finished else looks
        return {"procedure": describe(looks, self.alpha), "auto": self.auto,
                "looks": looks, "max_seeds": self.max_seeds, "alpha": self.alpha,
                "arms": self.arms, "verdicts": self.verdicts, "decided_at": self.decided_at,
                "finished": self.finished,
                "stopped_because": self.stopped_because, "seconds": round(self.elapsed(), 1),
                "trials": len(self.results) + len(self.live) + len(self.queue)}

    def write_record(self) -> None:
        if self.experiment:
            Experiment(self.experiment).write_json(self.record(), DECISIONS_FILE)


class OptunaSearcher(_searcher_base()):
    """Optuna's ask/tell, with honest trial states, in a persistent study."""

    def __init__(self, distributions: dict[str, Any], *, storage: str | None, study_name: str,
                 sampler: str, sampler_seed: int, num_samples: int,
                 first_point: dict[str, Any] | None = None, experiment: str | None = None):
        super().__init__(metric=METRIC, mode=MODE)
        # storage None: the experiment's default study, located on the host running the driver
        self.distributions, self.storage, self.study_name = distributions, storage, study_name
        self.sampler_kind, self.sampler_seed = sampler, sampler_seed
        self.num_samples, self.first_point = num_samples, first_point
        self.experiment = experiment
        self.numbers: dict[str, int] = {}  # Ray trial id -> Optuna trial number
        self.storage_ids: dict[int, int] = {}  # Optuna trial number -> its id in the storage
        self.records: dict[int, dict[str, Any]] = {}  # number -> what the study was told
        self.asked, self.told = 0, set()
        self._study, self._check = None, False

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_study"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._study = None

    @property
    def storage_url(self) -> str:
        """The study's storage as seen from this host."""
        if self.storage is not None:
            return self.storage
        return study_location(Experiment(self.experiment), None)[0]

    @property
    def study(self):
        if self._study is None:
            self._study = open_study(self.storage_url, self.study_name,
                                     make_sampler(self.sampler_kind, self.sampler_seed))
            if self._check:
                self._check = False
                self._reconcile()
            if not self._study.trials and self.first_point:
                self._study.enqueue_trial(self.first_point)  # where the reference stood
        return self._study

    def suggest(self, trial_id: str) -> dict | str | None:
        import optuna

        orphan = self._orphan()
        if orphan is not None:  # asked before a driver kill, never scheduled by Ray
            self._map(trial_id, orphan.number, orphan._trial_id)
            return dict(orphan.params)
        self.asked = max(self.asked, self._asked_in_study())
        if self.asked >= self.num_samples:
            return self.FINISHED if len(self.told) >= len(self.numbers) else None
        with _quiet(optuna):
            trial = self.study.ask(self.distributions)
        self.asked += 1
        # Optuna's public Trial(study, trial_id) needs the storage's id of the trial.
        self._map(trial_id, trial.number, trial._trial_id)
        return dict(trial.params)

    def _map(self, trial_id: str, number: int, storage_id: int) -> None:
        self.numbers[trial_id] = number
        self.storage_ids[number] = storage_id
        params = self.study.get_trials(deepcopy=False)[number].params
        self.records.setdefault(number, {"params": dict(params), "state": "RUNNING",
                                         "value": None, "intermediate": {}, "attrs": {}})

    def _trial(self, number: int):
        import optuna

        return optuna.trial.Trial(self.study, self.storage_ids[number])

    def _orphan(self):
        from optuna.trial import TrialState

        mapped = set(self.numbers.values())
        return next((t for t in self.study.get_trials(deepcopy=False, states=(
            TrialState.RUNNING,)) if t.number not in mapped and t.params), None)

    def _asked_in_study(self) -> int:
        """Samples the study has handed out (all but an enqueued, not yet asked point): after
        a driver kill the study knows trials asked after Ray's last snapshot."""
        from optuna.trial import TrialState

        return sum(t.state != TrialState.WAITING for t in self.study.get_trials(deepcopy=False))

    def _finished_in_study(self, number: int) -> bool:
        """True when the study already holds the trial's end (told before a driver kill that
        Ray's last snapshot predates): it is not told twice."""
        trial = self.study.get_trials(deepcopy=False)[number]
        if trial.state.is_finished():
            self.told.add(number)
            if number in self.records:  # the record follows what the study holds
                self.records[number].update(
                    state=trial.state.name, value=trial.value, attrs=dict(trial.user_attrs),
                    intermediate=dict(trial.intermediate_values))
            return True
        return False

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        import optuna

        number, value = self.numbers.get(trial_id), result.get(METRIC)
        if number is None or number in self.told or value is None or result.get("diverged"):
            return
        if self._finished_in_study(number):
            return
        step = int(result.get(TIME_ATTR, 0))
        with _quiet(optuna):
            self._trial(number).report(float(value), step=step)
        if number in self.records:  # (a sweep started before records were kept has none)
            self.records[number]["intermediate"].setdefault(step, float(value))

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        number = self.numbers.get(trial_id)
        if number is None or number in self.told or self._finished_in_study(number):
            return
        if result and not error and result.get("status") in (Status.RUNNING,
                                                              Status.EARLY_STOPPED):
            self.on_trial_result(trial_id, result)  # the rung it was stopped at (Ray skips it)
        self.told.add(number)
        status = None if error or result is None else result.get("status")
        state, value = tell_state(status, (result or {}).get(METRIC))
        trial = self._trial(number)
        attrs = {"status": _final_status(status, error), "ray_trial_id": trial_id,
                 TIME_ATTR: int((result or {}).get(TIME_ATTR) or 0)}
        for key, v in attrs.items():
            trial.set_user_attr(key, v)
        self.study.tell(number, value, state=state, skip_if_finished=True)
        if number in self.records:
            self.records[number].update(state=state.name, value=value, attrs=attrs)

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_text(json.dumps({
            "numbers": self.numbers, "storage_ids": self.storage_ids, "asked": self.asked,
            "told": sorted(self.told), "records": self.records}))

    def restore(self, checkpoint_path: str) -> None:
        state = json.loads(Path(checkpoint_path).read_text())
        self.numbers, self.asked = state["numbers"], state["asked"]
        self.storage_ids = {int(k): v for k, v in state["storage_ids"].items()}
        self.told = set(state["told"])
        self.records = _records(state)
        self._study, self._check = None, True  # checked against the records at first use

    def _reconcile(self) -> None:
        """After a restore: the study made consistent with the records (see the module's
        design notes); the storage ids follow a rebuilt study."""
        self._study, rebuilt = consistent_study(
            self.storage_url, self.study_name, self.records, self.distributions,
            make_sampler(self.sampler_kind, self.sampler_seed), study=self._study)
        if rebuilt:
            self.storage_ids = {t.number: t._trial_id for t in self._study.get_trials(
                deepcopy=False)}


SEARCHER_STATE_PREFIX = "searcher-state-"  # Ray's Searcher.CKPT_FILE_TMPL, one per session


def _records(state: dict) -> dict[int, dict[str, Any]]:
    return {int(n): r | {"intermediate": {int(k): v for k, v in r["intermediate"].items()}}
            for n, r in state.get("records", {}).items()}


def saved_records(exp: Experiment) -> dict[int, dict[str, Any]]:
    """The trial records of the newest searcher state Ray saved with the experiment (sessions
    are named by their start time), or none."""
    names = sorted(n for n, is_dir in exp.listdir()
                   if not is_dir and n.startswith(SEARCHER_STATE_PREFIX))
    if not names:
        return {}
    try:
        return _records(json.loads(exp.read_bytes(names[-1])))
    except (ValueError, KeyError, AttributeError):  # not an OptunaSearcher's state
        return {}


def consistent_study(storage: str, name: str, records: dict[int, dict[str, Any]],
                     distributions: dict[str, Any], sampler=None, study=None):
    """(the study, whether it was rebuilt): kept when it holds every recorded trial at least
    as far as the records go (it may be ahead: written after Ray's last snapshot), else
    rebuilt from the records (it lagged behind, or holds other trials)."""
    import optuna

    study = study or open_study(storage, name, sampler)
    trials = study.get_trials(deepcopy=False)
    if all(n < len(trials) and _covers(trials[n], r) for n, r in records.items()):
        return study, False
    optuna.delete_study(study_name=name, storage=storage)
    study = open_study(storage, name, sampler)
    with _quiet(optuna):
        for n in sorted(records):
            study.add_trial(_from_record(records[n], distributions))
    from ..spec.io import log

    log(f"event=study_rebuilt trials={len(records)} storage={storage} (it lagged behind the "
        "restored search)")
    return study, True


def _covers(trial, record: dict[str, Any]) -> bool:
    """The study's trial is the recorded one, at least as far along."""
    if trial.params != record["params"]:
        return False
    if trial.state.is_finished():
        return True
    return record["state"] == "RUNNING" and \
        set(record["intermediate"]) <= set(trial.intermediate_values)


def _from_record(record: dict[str, Any], distributions: dict[str, Any]):
    """A trial as the searcher told it to the study."""
    from optuna.trial import TrialState, create_trial

    return create_trial(state=TrialState[record["state"]], value=record["value"],
                        params=record["params"], distributions=distributions,
                        intermediate_values=record["intermediate"],
                        user_attrs=record["attrs"])


def _final_status(status: str | None, error: bool) -> str:
    if error or status is None:
        return Status.ERROR.value
    return Status.EARLY_STOPPED.value if status == Status.RUNNING else str(status)


def tell_state(status: str | None, value: float | None):
    """(Optuna state, value) for a trial's last status: completed -> COMPLETE with its final
    loss; stopped by the scheduler (last status still running) or by its caller -> PRUNED;
    diverged -> PRUNED at its last finite value (its intermediate values stop there), which
    TPE ranks with the bad trials and learns to avoid, where a FAIL is ignored by every
    sampler; errored or lost -> FAIL (they say nothing about the sampled values)."""
    from optuna.trial import TrialState

    if status == Status.COMPLETED and value is not None and math.isfinite(value):
        return TrialState.COMPLETE, float(value)
    if status in (Status.RUNNING, Status.STOPPED, Status.EARLY_STOPPED, Status.DIVERGED):
        return TrialState.PRUNED, None
    return TrialState.FAIL, None


def make_sampler(kind: str, seed: int):
    import optuna

    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)


class _quiet:
    """Optuna's info logs and experimental warnings off for a block."""

    def __init__(self, optuna):
        self.optuna = optuna

    def __enter__(self):
        import warnings

        self.level = self.optuna.logging.get_verbosity()
        self.optuna.logging.set_verbosity(self.optuna.logging.WARNING)
        self.catch = warnings.catch_warnings()
        self.catch.__enter__()
        warnings.simplefilter("ignore", self.optuna.exceptions.ExperimentalWarning)

    def __exit__(self, *exc):
        self.catch.__exit__(*exc)
        self.optuna.logging.set_verbosity(self.level)


def study_location(exp: Experiment, url: str | None) -> tuple[str, Path | None]:
    """(Optuna storage URL, local SQLite file to upload at the end, if any)."""
    if url:
        return url, None
    if exp.local_dir is not None:
        exp.local_dir.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{exp.path(STUDY_FILE)}", None
    import hashlib

    from ..training.runtime import cache_root

    digest = hashlib.sha256(str(exp).encode()).hexdigest()[:12]
    local = cache_root() / "studies" / f"{exp.name}-{digest}.db"
    local.parent.mkdir(parents=True, exist_ok=True)
    if not local.exists() and exp.exists(STUDY_FILE):  # resuming from another machine
        local.write_bytes(exp.read_bytes(STUDY_FILE))
    return f"sqlite:///{local}", local


def open_study(storage: str, name: str, sampler=None):
    """The search's study (created once, then loaded), its metric named."""
    import optuna

    with _quiet(optuna):
        study = optuna.create_study(storage=storage, study_name=name, load_if_exists=True,
                                    sampler=sampler,
                                    direction="minimize" if MODE == "min" else "maximize")
        if not study.metric_names:
            study.set_metric_names([METRIC])
    return study
