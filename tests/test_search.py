"""The search: ASHA on tokens (synthetic results and a real tiny run), the exported study, the
best-config file, and diverging samples."""

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from tune_ablations import search
from tune_ablations.config import DIVERGED_LOSS, METRIC, MODE

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


def test_exported_study_opens_with_optuna(searched):
    import optuna

    study = optuna.load_study(study_name="s", storage=f"sqlite:///{searched / 'study.db'}")
    assert len(study.trials) == 6
    assert all(t.value is not None for t in study.trials
               if t.state == optuna.trial.TrialState.COMPLETE)
    assert study.best_value < DIVERGED_LOSS
    assert study.metric_names == [METRIC]
    by_status = {t.user_attrs["status"]: t for t in study.trials}
    pruned = by_status["early_stopped"]
    assert pruned.state == optuna.trial.TrialState.PRUNED and pruned.value is None
    assert max(pruned.intermediate_values) == pruned.user_attrs["tokens_seen"]  # keyed by tokens
    assert {"ablation", "status", "tokens_seen", "trial_folder"} <= set(pruned.user_attrs)
    imp = json.loads((searched / "importances.json").read_text())
    assert imp["evaluator"] == "ped_anova"
    completed = sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert imp["n_trials"] == completed
    assert "skipped" in imp and "need at least 8" in imp["skipped"]  # 6 trials: too few


def test_best_config_file_reruns(searched, tmp_path, corpus_dir):
    from tune_ablations.overrides import load_config_file
    from tune_ablations.train import main

    best = searched / "best.toml"
    flat = load_config_file(best)
    assert flat["ablation"] == "baseline" and "lr" in flat
    out = tmp_path / "rerun.json"
    assert main(["--config", str(best), "--set", "max_steps=20", "eval_every=10",
                 "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["status"] == "completed" and result["config"]["lr"] == flat["lr"]


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
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.FAIL] * 3
    assert all(t.user_attrs["status"] == "diverged" for t in study.trials)


def test_killed_search_resumes(ray_session, corpus_dir, tmp_path):
    """Kill a search mid-way; --resume finishes it with every sample and exports the study."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import optuna
    import pandas as pd

    args = ["--space", str(SPACES / "lr.toml"), "--preset", "tiny", "--data", str(corpus_dir),
            "--set", "vocab_size=300", "text_samples=0", "max_steps=300", "eval_every=50",
            "--num-samples", "4", "--scheduler", "none", "--storage", str(tmp_path),
            "--name", "rs"]
    proc = subprocess.Popen([sys.executable, "-m", "tune_ablations.search", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    exp = tmp_path / "rs"
    deadline = time.time() + 180
    try:
        while time.time() < deadline:
            if len(list(exp.glob("*/outcome.json"))) >= 1:
                break
            assert proc.poll() is None
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(1)
    assert search.main(["--storage", str(tmp_path), "--name", "rs", "--resume"]) == 0
    df = pd.read_parquet(exp / "results.parquet")
    assert len(df) == 4 and set(df["status"].astype(str)) == {"completed"}
    study = optuna.load_study(study_name="rs", storage=f"sqlite:///{exp / 'study.db'}")
    assert len(study.trials) == 4


def test_study_is_readable_while_the_search_runs(corpus_dir, tmp_path):
    """The live view: study.db and the tables are rewritten as trials finish, so a dashboard
    (here: optuna.load_study) sees a running search."""
    import subprocess
    import sys
    import time

    import optuna

    args = ["--space", "lr", "--preset", "tiny", "--data", str(corpus_dir), "--set",
            "vocab_size=300", "text_samples=0", "max_steps=200", "--num-samples", "4",
            "--max-concurrent", "1", "--scheduler", "none", "--storage", str(tmp_path),
            "--name", "live"]
    proc = subprocess.Popen([sys.executable, "-m", "tune_ablations.search", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = tmp_path / "live" / "study.db"
    seen = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if db.exists():
                try:
                    study = optuna.load_study(study_name="live", storage=f"sqlite:///{db}")
                except Exception:  # replaced while opening: try again
                    continue
                if study.trials and proc.poll() is None:
                    seen = len(study.trials)
                    break
            time.sleep(0.3)
        assert seen is not None and 1 <= seen < 4, "no study while the search ran"
        assert (tmp_path / "live" / "results.parquet").exists()
    finally:
        assert proc.wait(timeout=600) == 0


def test_importances_rank_the_parameter_that_matters(tmp_path):
    """Ten full-budget trials where lr decides the loss and batch_size is noise: lr is the
    more important, the evaluator is named, and no optional dependency is needed."""
    import numpy as np
    import optuna

    from tune_ablations.search_space import load_space
    from tune_ablations.study import importances

    space_file = tmp_path / "s.toml"
    space_file.write_text('[params.lr]\ndistribution = "loguniform"\nlow = 1e-4\nhigh = 1e-2\n'
                          '[params.batch_size]\ndistribution = "choice"\nvalues = [4, 8]\n')
    space = load_space(space_file)
    study = optuna.create_study()
    rng = np.random.default_rng(0)
    dists = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
             "batch_size": optuna.distributions.CategoricalDistribution([4, 8])}
    for i in range(20):
        lr = float(10 ** rng.uniform(-4, -2))
        study.add_trial(optuna.trial.create_trial(
            params={"lr": lr, "batch_size": [4, 8][i % 2]}, distributions=dists,
            value=(np.log10(lr) + 3) ** 2 + 0.001 * rng.normal()))
    imp = importances(study, space)
    assert imp["evaluator"] == "ped_anova" and imp["n_trials"] == 20 and "skipped" not in imp
    assert imp["importances"]["lr"] > imp["importances"]["batch_size"]
