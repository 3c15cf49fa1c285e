"""A search resumed on another host: Ray restores the searcher pickled in tuner.pkl plus its
saved state, and the study it finds there (another host's SQLite file, or none) lags behind.
The study is rebuilt from the searcher's records, so every trial Ray restores is told to the
study that holds it, none twice, none lost; a study that is ahead (the same host's file, a
shared database) is kept, and its orphans are handed out again. A restored grid keeps its
decisions.json current against the stale copy Ray's restore takes. (The two-host bed runs the
real commands: test_hosts.py.)"""

from __future__ import annotations

import optuna
import pytest
from ray import cloudpickle

from tune_ablations.spec.names import METRIC
from tune_ablations.sweeps.searchers import OptunaSearcher

DISTS = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}


def _searcher(db) -> OptunaSearcher:
    return OptunaSearcher(DISTS, storage=f"sqlite:///{db}", study_name="s", sampler="random",
                          sampler_seed=0, num_samples=4, first_point={"lr": 3e-3})


def _report(s, trial_id, tokens, loss, status="running"):
    s.on_trial_result(trial_id, {METRIC: loss, "tokens_seen": tokens, "status": status})


def _run_until_snapshot(tmp_path):
    """Host A: two trials, one finished, then Ray's snapshot; after it A goes on (the study is
    ahead of the snapshot: t1 finished, t2 asked) and dies."""
    a = _searcher(tmp_path / "a.db")
    pickled = cloudpickle.dumps(a)  # what tuner.pkl holds
    first = [a.suggest("t0"), a.suggest("t1")]
    _report(a, "t0", 100, 5.0)
    _report(a, "t1", 100, 5.5)
    a.on_trial_complete("t0", {METRIC: 4.0, "tokens_seen": 300, "status": "completed"})
    state = tmp_path / "searcher-state.json"
    a.save(str(state))
    a.on_trial_complete("t1", {METRIC: 4.5, "tokens_seen": 300, "status": "completed"})
    orphan = a.suggest("t2")
    return pickled, state, first, orphan


def _restored(pickled, state, db):
    s = cloudpickle.loads(pickled)
    s.storage = f"sqlite:///{db}"
    s.restore(str(state))
    return s


def _finish(s, start: int) -> list[str]:
    """Ray's side after a restore: t1 resumed from its checkpoint, then new samples."""
    _report(s, "t1", 200, 5.0)
    s.on_trial_complete("t1", {METRIC: 4.2, "tokens_seen": 300, "status": "completed"})
    ids, i = [], start
    while True:
        got = s.suggest(f"t{i}")
        if got is None or got == s.FINISHED:
            return ids
        ids.append(f"t{i}")
        s.on_trial_complete(f"t{i}", {METRIC: 3.0 + i / 10, "tokens_seen": 300,
                                      "status": "completed"})
        i += 1


@pytest.mark.parametrize("study_file", ["none", "stale"])
def test_resumed_on_another_host_the_study_is_rebuilt(tmp_path, capsys, study_file):
    pickled, state, first, _ = _run_until_snapshot(tmp_path)
    db = tmp_path / "b.db"
    if study_file == "stale":  # another host's older file: a different trial at number 1
        other = _searcher(db)
        other.suggest("x0")
        other.suggest("x1")
    b = _restored(pickled, state, db)
    new = _finish(b, start=2)
    assert "event=study_rebuilt trials=2" in capsys.readouterr().err
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{db}").trials
    assert len(trials) == 4 and new == ["t2", "t3"]
    assert [t.params for t in trials[:2]] == first
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4
    assert [t.user_attrs["ray_trial_id"] for t in trials] == ["t0", "t1", "t2", "t3"]
    assert trials[0].value == 4.0 and trials[1].value == 4.2
    assert trials[1].intermediate_values == {100: 5.5, 200: 5.0}


def test_resumed_on_the_same_host_the_study_ahead_is_kept(tmp_path, capsys):
    """The study is ahead of the snapshot: kept, t1 (already finished there) is not told
    twice, and t2, asked but never run by Ray, is handed out again."""
    pickled, state, first, orphan = _run_until_snapshot(tmp_path)
    a = _restored(pickled, state, tmp_path / "a.db")
    assert a.suggest("t2") == orphan
    a.on_trial_complete("t2", {METRIC: 3.9, "tokens_seen": 300, "status": "completed"})
    _finish(a, start=3)
    assert "study_rebuilt" not in capsys.readouterr().err
    trials = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 'a.db'}").trials
    assert len(trials) == 4 and [t.params for t in trials[:2]] == first
    assert trials[1].value == 4.5  # told once, before the kill
    assert [t.state.name for t in trials] == ["COMPLETE"] * 4


def test_after_the_last_trial_the_saved_records_rebuild_the_study(tmp_path):
    """Resumed on another host after every trial ended, Ray never asks the searcher again; the
    search's end reads the newest searcher state Ray saved with the experiment instead."""
    from tune_ablations.results.experiment import Experiment
    from tune_ablations.sweeps.searchers import consistent_study, saved_records

    a = _searcher(tmp_path / "a.db")
    for i in range(2):
        a.suggest(f"t{i}")
        a.on_trial_complete(f"t{i}", {METRIC: 4.0 + i, "tokens_seen": 300,
                                      "status": "completed"})
    exp = Experiment(tmp_path / "exp")
    (tmp_path / "exp").mkdir()
    a.save(str(tmp_path / "exp" / "searcher-state-2026-01-01_00-00-00.pkl"))
    (tmp_path / "exp" / "searcher-state-2025-12-31_00-00-00.pkl").write_text("{}")  # older
    records = saved_records(exp)
    assert sorted(records) == [0, 1]
    study, rebuilt = consistent_study(f"sqlite:///{tmp_path / 'b.db'}", "s", records, DISTS)
    assert rebuilt and [t.value for t in study.trials] == [4.0, 5.0]
    again, rebuilt = consistent_study(f"sqlite:///{tmp_path / 'b.db'}", "s", records, DISTS)
    assert not rebuilt and len(again.trials) == 2


def test_a_restored_grid_keeps_its_decisions_current(tmp_path):
    """Ray restores by copying the experiment's *.json into its staging folder, then uploads
    that folder with every snapshot: the stale decisions.json it copied must not survive there
    (it overwrote a resumed --tune-lr grid's record, and so its answer)."""
    import json

    from tune_ablations.spec.names import LR_REPLICATE_SEED
    from tune_ablations.sweeps.lr_tuning import TuneLrSearcher

    exp, staging = tmp_path / "exp", tmp_path / "staging"
    exp.mkdir(), staging.mkdir()
    s = TuneLrSearcher(["baseline", "high_lr"], centres={"baseline": 3e-3, "high_lr": 1e-2},
                       k=3, span=4.0, seeds=1, max_seeds=5, time_budget=0, slots=2,
                       experiment=str(exp))
    for i in range(6):
        s.suggest(f"t{i}")
    s.save(str(staging / "searcher-state-1.pkl"))
    (staging / "decisions.json").write_text('{"stale": true}')  # Ray's downloaded copy
    restored = TuneLrSearcher(["baseline", "high_lr"], centres={"baseline": 3e-3,
                                                                "high_lr": 1e-2},
                              k=3, span=4.0, seeds=1, max_seeds=5, time_budget=0, slots=2,
                              experiment=str(exp))
    restored.restore(str(staging / "searcher-state-1.pkl"))
    assert not (staging / "decisions.json").exists()
    for i in range(6):
        restored.on_trial_complete(f"t{i}", {METRIC: 4.0 + i / 10, "tokens_seen": 300,
                                             "status": "completed"})
    i = 6  # the replicates (a second seed at each arm's centre and ends), then the seeds
    while (got := restored.suggest(f"t{i}"))["seed"] == LR_REPLICATE_SEED:
        restored.on_trial_complete(f"t{i}", {METRIC: 4.0, "tokens_seen": 300,
                                             "status": "completed"})
        i += 1
    assert i == 12 and got["seed"] == 0  # the seeds at each arm's chosen lr
    record = json.loads((exp / "decisions.json").read_text())
    assert record["tune_lr"]["phase"] == "seeds" and set(record["tune_lr"]["chosen"]) == {
        "baseline", "high_lr"}
