"""The search: ASHA on tokens (synthetic results and a real tiny run), the exported study, the
best-config file, and diverging samples."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tune_ablations import search
from tune_ablations.spec.names import DIVERGED_LOSS, METRIC, MODE

SPACES = Path(__file__).parent.parent / "tune_ablations" / "search_spaces"


def test_asha_on_tokens_with_synthetic_results():
    """Trials that report at different token counts (different batch sizes) meet the same
    rungs; the worse one at a rung is stopped, and a finite diverged sentinel is ranked last."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    asha = ASHAScheduler(time_attr="tokens_seen", metric=METRIC, mode=MODE, max_t=10_000,
                         grace_period=1_000, reduction_factor=2)
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(4)]
    for t in trials:
        asha.on_trial_add(None, t)
    decisions = {}
    # t0 (batch 8) and t1 (batch 16) reach the 1000-token rung at different steps.
    decisions["t0"] = asha.on_trial_result(None, trials[0], {"tokens_seen": 1024, METRIC: 5.0})
    decisions["t1"] = asha.on_trial_result(None, trials[1], {"tokens_seen": 2048, METRIC: 4.0})
    decisions["t2"] = asha.on_trial_result(None, trials[2], {"tokens_seen": 1024, METRIC: 6.0})
    decisions["t3"] = asha.on_trial_result(None, trials[3], {"tokens_seen": 1024,
                                                             METRIC: DIVERGED_LOSS})
    assert decisions["t1"] == TrialScheduler.CONTINUE
    assert decisions["t2"] == TrialScheduler.STOP
    assert decisions["t3"] == TrialScheduler.STOP
    assert asha.on_trial_result(None, trials[1], {"tokens_seen": 10_000, METRIC: 3.0}) == \
        TrialScheduler.STOP  # max_t reached


@pytest.fixture(scope="module")
def searched(ray_session, corpus_dir, tmp_path_factory):
    from tune_ablations import search

    root = tmp_path_factory.mktemp("search")
    code = search.main(["--space", str(SPACES / "lr.toml"), "--preset", "tiny", "--data",
                        str(corpus_dir), "--set", "vocab_size=300", "text_samples=0",
                        "max_steps=60", "eval_every=10", "--num-samples", "6",
                        "--reduction-factor", "2",
                        "--max-concurrent", "2", "--storage", str(root), "--name", "s"])
    assert code == 0
    return root / "s"


pytestmark = pytest.mark.slow


def test_search_stops_some_trials_early(searched):
    import pandas as pd

    df = pd.read_parquet(searched / "results.parquet")
    assert len(df) == 6
    statuses = df["status"].astype(str)
    assert (statuses == "early_stopped").sum() >= 1
    assert (statuses == "completed").sum() >= 1
    stopped = df[statuses == "early_stopped"]
    assert (stopped["tokens_seen"] < df["tokens_seen"].max()).all()
    first = df.sort_values("trial_id")
    assert (df["lr"] == 3e-3).any()  # the baseline point was enqueued
    assert first["lr"].nunique() > 1
    assert (searched / "space.toml").read_text() == (SPACES / "lr.toml").read_text()


def test_the_study_holds_every_trial_with_its_true_state(searched):
    import optuna

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{searched / 'study.db'}")
    assert len(study.trials) == 6
    assert all(t.value is not None for t in study.trials
               if t.state == optuna.trial.TrialState.COMPLETE)
    assert study.best_value < DIVERGED_LOSS
    assert study.metric_names == [METRIC]
    by_status = {t.user_attrs["status"]: t for t in study.trials}
    pruned = by_status["early_stopped"]
    assert pruned.state == optuna.trial.TrialState.PRUNED
    assert max(pruned.intermediate_values) == pruned.user_attrs["tokens_seen"]  # by tokens
    assert {"status", "tokens_seen", "ray_trial_id"} <= set(pruned.user_attrs)
    imp = json.loads((searched / "importances.json").read_text())
    assert imp["evaluator"] == "ped_anova"
    completed = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert imp["n_trials"] == completed
    assert imp["skipped"].startswith("insufficient")  # 6 trials: no top quantile of 5


def test_the_report_shows_optunas_own_views(searched, tmp_path):
    """Optuna's matplotlib views sit next to ours; a view Optuna says means nothing (importances
    from 6 trials "will be equal") is named with the reason instead of drawn."""
    from tune_ablations import analysis

    assert analysis.main([str(searched), "--out", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    for view in ("optimization_history", "intermediate_values"):  # every trial counts
        assert f"![optuna_{view}.png](optuna_{view}.png)" in text, view
        assert (tmp_path / f"optuna_{view}.png").stat().st_size > 5000
    for view in ("parallel_coordinate", "slice"):  # completed trials only: drawn or said why
        drawn = (tmp_path / f"optuna_{view}.png").exists()
        assert drawn == (f"![optuna_{view}.png]" in text)
        assert drawn or f"Optuna {view}: not drawn (" in text, view
    # Importances from a handful of trials: Optuna draws them or warns that they are too few,
    # depending on how many trials ASHA let finish (the order results arrive in); either way
    # the report says which, never both, never neither.
    drawn = (tmp_path / "optuna_param_importances.png").exists()
    assert drawn == ("![optuna_param_importances.png]" in text)
    assert drawn or "Optuna param_importances: not drawn (The number of trials is too small" \
        in text


def test_best_config_file_reruns(searched, tmp_path, corpus_dir):
    from tune_ablations.spec.runspec import load_spec_file
    from tune_ablations.train import main

    best = searched / "best.toml"
    spec, _ = load_spec_file(best)
    lr = dict(spec.overrides)["lr"]
    assert spec.ablation == "baseline" and spec.budget == "iso_tokens"
    out = tmp_path / "rerun.json"
    assert main(["--config", str(best), "--max-steps", "20", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["status"] == "completed" and result["config"]["lr"] == lr


def test_diverging_samples_do_not_hang_the_search(ray_session, corpus_dir, tmp_path):
    import optuna
    import pandas as pd

    from tune_ablations import search

    space = tmp_path / "wild.toml"
    space.write_text('ablation = "baseline"\n[fixed]\nwarmup_steps = 0\ngrad_clip = 0.0\n'
                     '[params.lr]\ndistribution = "loguniform"\nlow = 3.0\nhigh = 30.0\n')
    code = search.main(["--space", str(space), "--preset", "tiny", "--data", str(corpus_dir),
                        "--set", "vocab_size=300", "text_samples=0", "--num-samples", "3",
                        "--storage", str(tmp_path), "--name", "wild"])
    assert code == 0
    df = pd.read_parquet(tmp_path / "wild" / "results.parquet")
    assert len(df) == 3 and set(df["status"].astype(str)) == {"diverged"}
    study = optuna.load_study(study_name="wild",
                              storage=f"sqlite:///{tmp_path / 'wild' / 'study.db'}")
    # pruned at their last finite value, which TPE learns from (tests/test_searchers.py)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.PRUNED] * 3
    assert all(t.user_attrs["status"] == "diverged" for t in study.trials)
    assert all(v < 1e3 for t in study.trials for v in t.intermediate_values.values())


@pytest.mark.extended  # also: tests/test_study_resume.py, and across hosts in test_hosts.py
def test_killed_search_resumes_with_a_consistent_study(ray_session, corpus_dir, tmp_path):
    """Kill a search when its trials hold at a step and Ray's snapshot names their checkpoints
    (a state, not a sleep); --resume finishes it with every sample, and the study holds each
    trial once: none duplicated, none lost."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import optuna
    import pandas as pd

    from tune_ablations.results.experiment import Experiment
    from tune_ablations.sweeps.tuner import snapshot_checkpoints

    args = ["--space", str(SPACES / "lr.toml"), "--preset", "tiny", "--data", str(corpus_dir),
            "--set", "vocab_size=300", "text_samples=0", "max_steps=300", "eval_every=50",
            "--num-samples", "4", "--max-concurrent", "2", "--scheduler", "none",
            "--storage", str(tmp_path), "--name", "rs"]
    exp, hold = tmp_path / "rs", tmp_path / "hold"
    hold.mkdir()
    env = {**os.environ, "TUNE_ABLATIONS_TEST_HOLD": f"100:{hold}"}
    proc = subprocess.Popen([sys.executable, "-m", "tune_ablations.search", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)

    def both_held_and_snapshotted():
        held = [h.name.removeprefix("held-") for h in hold.glob("held-*")]
        return len(held) == 2 and all(snapshot_checkpoints(Experiment(exp), f)[-1:] ==
                                      ["checkpoint_000001"] for f in held)

    try:
        deadline = time.time() + 240
        while not both_held_and_snapshotted():
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        (hold / "release").write_text("")
    assert search.main(["--storage", str(tmp_path), "--name", "rs", "--resume"]) == 0
    df = pd.read_parquet(exp / "results.parquet")
    assert len(df) == 4 and set(df["status"].astype(str)) == {"completed"}
    study = optuna.load_study(study_name="rs", storage=f"sqlite:///{exp / 'study.db'}")
    assert len(study.trials) == 4
    assert {t.state for t in study.trials} == {optuna.trial.TrialState.COMPLETE}
    assert sorted(t.user_attrs["ray_trial_id"] for t in study.trials) == sorted(
        df["trial_id"].astype(str))


def test_study_is_readable_while_the_search_runs(corpus_dir, tmp_path):
    """The live view: the searcher writes the study as trials report and the tables are
    rewritten as trials finish, so a dashboard (here: optuna.load_study) follows a running
    search. Decided by state, not by timing: one trial at a time, each holding mid-way; the
    first is released, and while the second holds the study shows the first COMPLETE and the
    second RUNNING with its reports."""
    import os
    import subprocess
    import sys
    import time

    import optuna

    args = ["--space", "lr", "--preset", "tiny", "--data", str(corpus_dir), "--set",
            "vocab_size=300", "text_samples=0", "max_steps=200", "--num-samples", "3",
            "--max-concurrent", "1", "--scheduler", "none", "--storage", str(tmp_path),
            "--name", "live"]
    hold = tmp_path / "hold"
    hold.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "tune_ablations.search", *args],
                            env={**os.environ, "TUNE_ABLATIONS_TEST_HOLD": f"100:{hold}"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def held(n: int) -> list[str]:
        deadline = time.time() + 300
        while len(names := sorted(h.name[len("held-"):] for h in hold.glob("held-*"))) < n:
            assert proc.poll() is None and time.time() < deadline, "no trial held"
            time.sleep(0.1)
        return names

    try:
        first = held(1)[0]
        (hold / f"release-{first}").touch()
        held(2)  # the second trial holds: the first has finished and was told
        study = optuna.load_study(study_name="live",
                                  storage=f"sqlite:///{tmp_path / 'live' / 'study.db'}")
        states = [t.state for t in study.trials]
        assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING]
        assert study.trials[1].intermediate_values  # its reports, live
        assert study.trials[0].user_attrs["ray_trial_id"] in first
    finally:
        (hold / "release").touch()
        assert proc.wait(timeout=600) == 0
    assert (tmp_path / "live" / "results.parquet").exists()


def test_importances_rank_the_parameter_that_matters():
    """Sixty full-budget trials where lr decides the loss and batch_size is noise: lr is the
    more important, with its bootstrap spread; the evaluator is named and needs no optional
    dependency; too few trials in the top quantile are called insufficient."""
    import numpy as np
    import optuna

    from tune_ablations.sweeps.study import importances

    study = optuna.create_study()
    rng = np.random.default_rng(0)
    dists = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
             "batch_size": optuna.distributions.CategoricalDistribution([4, 8])}
    for i in range(60):
        lr = float(10 ** rng.uniform(-4, -2))
        study.add_trial(optuna.trial.create_trial(
            params={"lr": lr, "batch_size": [4, 8][i % 2]}, distributions=dists,
            value=(np.log10(lr) + 3) ** 2 + 0.001 * rng.normal()))
    imp = importances(study, ["lr", "batch_size"], n_boot=10)
    assert imp["evaluator"] == "ped_anova" and imp["n_trials"] == 60 and "skipped" not in imp
    assert imp["top_trials"] == 6
    assert imp["importances"]["lr"] > imp["importances"]["batch_size"]
    lo, hi = imp["bootstrap"]["lr"]["p5"], imp["bootstrap"]["lr"]["p95"]
    assert 0 <= lo <= hi <= 1 and lo > imp["bootstrap"]["batch_size"]["p95"]
    few = optuna.create_study()
    few.add_trials(study.trials[:40])
    assert importances(few, ["lr", "batch_size"])["skipped"].startswith(
        "insufficient: 40 full-budget completed trials put 4 in PED-ANOVA's top 10%")


def test_a_pruned_trial_reaches_the_sampler_as_pruned(tmp_path):
    """The searcher tells Optuna the truth: a trial ASHA stopped is PRUNED with its
    intermediate values, and the next sample is drawn by a sampler that sees it so."""
    import optuna

    from tune_ablations.sweeps.searchers import OptunaSearcher

    seen = []

    class Recording(optuna.samplers.RandomSampler):
        def infer_relative_search_space(self, study, trial):
            seen.append({t.number: t.state for t in study.get_trials(deepcopy=False)})
            return super().infer_relative_search_space(study, trial)

    searcher = OptunaSearcher(
        {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)},
        storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="s", sampler="random",
        sampler_seed=0, num_samples=3)
    searcher._study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}",
                                          study_name="s", sampler=Recording(seed=0))
    assert set(searcher.suggest("t0")) == {"lr"}
    searcher.on_trial_result("t0", {METRIC: 5.0, "tokens_seen": 1000, "status": "running"})
    searcher.on_trial_complete("t0", {METRIC: 4.5, "tokens_seen": 3000,
                                      "status": "early_stopped"})
    searcher.suggest("t1")
    frozen = searcher.study.trials[0]
    assert frozen.state == optuna.trial.TrialState.PRUNED
    assert frozen.intermediate_values == {1000: 5.0, 3000: 4.5}
    assert seen[-1][0] == optuna.trial.TrialState.PRUNED  # what the sampler saw
    searcher.on_trial_complete("t1", {METRIC: 4.0, "tokens_seen": 9000, "status": "completed"})
    assert searcher.study.trials[1].state == optuna.trial.TrialState.COMPLETE
    assert searcher.study.trials[1].value == 4.0


@pytest.mark.parametrize("seq_len, expect", [(32, "gap"), (512, "skipped")])
def test_the_holdout_check_uses_other_documents_or_refuses(corpus_dir, tmp_path, seq_len,
                                                           expect):
    """The best trial is re-scored on validation documents no evaluation scored; a split whose
    held-out documents hold too few windows is refused, not silently reused."""
    from tune_ablations.results.experiment import Experiment
    from tune_ablations.results.frames import load
    from tune_ablations.spec.resolve import resolve
    from tune_ablations.spec.runspec import RunSpec
    from tune_ablations.sweeps.study import holdout_check
    from tune_ablations.sweeps.trainable import run_metadata
    from tune_ablations.training.data import data_id, prepare_data
    from tune_ablations.training.trainer import train

    spec = RunSpec(preset="tiny", data=str(corpus_dir), budget="steps", overrides={
        "vocab_size": 300, "seq_len": seq_len, "max_steps": 4, "eval_every": 4,
        "eval_tokens": 16 * seq_len, "text_samples": 0, "warmup_steps": 1})
    cfg = resolve(spec)
    data = prepare_data(cfg.data, log=lambda s: None)
    exp = Experiment(tmp_path / "e")

    def report(m, save):
        save(Path(exp.path("t", "checkpoint_000000")))

    result = train(cfg, data=data, report=report)
    exp.write_json(run_metadata(spec, cfg, data, trial_id="t"), "t", "run.json")
    exp.write_json(result | {"trial_id": "t"}, "t", "outcome.json")
    hold = holdout_check(exp, load(exp).trials, {data_id(cfg.data): data})
    assert expect in hold, hold
    if expect == "gap":
        assert hold["holdout_windows"] == hold["select_windows"] == 16
    else:
        assert "too small for a held-out check" in hold["skipped"]
