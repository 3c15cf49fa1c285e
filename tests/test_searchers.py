"""OptunaSearcher's tell path without Ray or training: a diverged trial reaches the sampler as
PRUNED at its last finite value, and TPE then samples the diverging region far less than when
it was told FAIL (which every sampler ignores)."""

import math

import optuna
import pytest

from tune_ablations.spec.names import METRIC
from tune_ablations.sweeps import searchers
from tune_ablations.sweeps.searchers import OptunaSearcher

DIVERGES_ABOVE = 1e-2  # the synthetic objective's instability: every lr above it diverges


def _searcher(seed: int, n: int) -> OptunaSearcher:
    s = OptunaSearcher({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)},
                       storage=optuna.storages.InMemoryStorage(), study_name="s",
                       sampler="tpe", sampler_seed=seed, num_samples=n)
    return s


def _search(seed: int, n: int = 30) -> tuple[int, OptunaSearcher]:
    """A search over lr on a known surface: loss 4 + 0.5 (log10 lr/3e-3)^2 at the end (plus a
    decaying excess at earlier reports), and divergence at the second report above 1e-2.
    Returns how many samples after TPE's 4 startup trials landed in the diverging region."""
    s = _searcher(seed, n)
    diverging = 0
    for i in range(n):
        lr = s.suggest(f"t{i}")["lr"]
        final = 4.0 + 0.5 * (math.log10(lr / 3e-3)) ** 2
        s.on_trial_result(f"t{i}", {METRIC: final + 1.0, "tokens_seen": 1000,
                                    "status": "running"})
        if lr > DIVERGES_ABOVE:
            s.on_trial_complete(f"t{i}", {METRIC: 1e4, "tokens_seen": 2000, "diverged": True,
                                          "status": "diverged"})
        else:
            s.on_trial_result(f"t{i}", {METRIC: final + 0.5, "tokens_seen": 2000,
                                        "status": "running"})
            s.on_trial_complete(f"t{i}", {METRIC: final, "tokens_seen": 3000,
                                          "status": "completed"})
        diverging += i >= 4 and lr > DIVERGES_ABOVE
    return diverging, s


def test_a_diverged_trial_is_pruned_at_its_last_finite_value():
    s = _searcher(0, 3)
    s.suggest("t0")
    s.on_trial_result("t0", {METRIC: 6.0, "tokens_seen": 1000, "status": "running"})
    s.on_trial_result("t0", {METRIC: 1e4, "tokens_seen": 2000, "diverged": True,
                             "status": "diverged"})
    s.on_trial_complete("t0", {METRIC: 1e4, "tokens_seen": 2000, "diverged": True,
                               "status": "diverged"})
    (t,) = s.study.trials
    assert t.state == optuna.trial.TrialState.PRUNED
    assert t.intermediate_values == {1000: 6.0}  # the sentinel never reaches the sampler
    assert t.user_attrs["status"] == "diverged"
    s.suggest("t1")
    s.on_trial_complete("t1", None, error=True)  # an error says nothing about the sample
    assert s.study.trials[1].state == optuna.trial.TrialState.FAIL


def test_tpe_samples_fewer_diverging_lrs_than_when_divergence_was_a_failure(monkeypatch):
    """Same seeds, same objective: told FAIL (the old tell path), TPE never sees the failures
    and keeps sampling the diverging third of the range (it looks unexplored); told PRUNED, it
    ranks them with the bad trials and moves away."""
    pruned = [_search(seed)[0] for seed in range(3)]
    old = searchers.tell_state

    def as_fail(status, value):
        if status == "diverged":
            return optuna.trial.TrialState.FAIL, None
        return old(status, value)

    monkeypatch.setattr(searchers, "tell_state", as_fail)
    failed = [_search(seed)[0] for seed in range(3)]
    assert all(p < f for p, f in zip(pruned, failed)), (pruned, failed)
    assert sum(pruned) <= sum(failed) / 3, (pruned, failed)  # measured 16 against 75 of 78


@pytest.mark.parametrize("n_diverged", [0, 3])
def test_importances_say_which_trials_they_cover(n_diverged):
    from tune_ablations.sweeps.study import importances

    study = optuna.create_study()
    dist = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}
    for i in range(8):
        study.add_trial(optuna.trial.create_trial(params={"lr": 1e-3 * (i + 1)},
                                                  distributions=dist, value=4.0 + i / 10))
    for _ in range(n_diverged):
        study.add_trial(optuna.trial.create_trial(
            params={"lr": 0.05}, distributions=dist, state=optuna.trial.TrialState.PRUNED,
            intermediate_values={1000: 6.0}, user_attrs={"status": "diverged"}))
    study.add_trial(optuna.trial.create_trial(
        params={"lr": 1e-4}, distributions=dist, state=optuna.trial.TrialState.PRUNED,
        intermediate_values={1000: 7.0}, user_attrs={"status": "early_stopped"}))
    imp = importances(study, ["lr"])
    assert imp["covers"].startswith(f"over the 8 full-budget completed trials of {9 + n_diverged}")
    assert imp["left_out"] == {"early_stopped": 1} | ({"diverged": 3} if n_diverged else {})
    assert "not covered: " + (f"{n_diverged} diverged, " if n_diverged else "") + \
        "1 early_stopped" in imp["covers"]
