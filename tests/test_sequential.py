"""The seeds procedure with known answers: its boundaries spend exactly alpha for the t-statistic
it uses; one sweep's test matches a hand computation; and by simulation, 10,000 sweeps per
scenario with the noise this project measures (unequal per-arm SDs, one noisy arm, seed effects
shared only by some arms, one arm, skewed and bimodal seeds), the familywise error stays at or
below alpha within its Monte-Carlo interval, the printed 95% interval covers the truth, a real
difference is found, and the estimate's bias at a verdict is what RESULTS reports."""

import math

import numpy as np
import pytest
from scipy.stats import t as student

from tune_ablations.results import sequential as Q
from tune_ablations.results.simulation import LIMITS, SCENARIOS, Scenario, simulate

SWEEPS = 10_000
Z = 1.96  # the Monte-Carlo interval's half-width in standard errors


def _error_limit(sweeps: int = SWEEPS) -> float:
    return Q.ALPHA + Z * math.sqrt(Q.ALPHA * (1 - Q.ALPHA) / sweeps)


def _coverage_limit(sweeps: int = SWEEPS) -> float:
    return 0.95 - Z * math.sqrt(0.95 * 0.05 / sweeps)


def test_z_boundaries_spend_exactly_alpha():
    assert Q.boundaries(0.05, (1.0,))[0] == pytest.approx(1.959964, abs=1e-3)
    fractions = (0.4, 0.6, 0.8, 1.0)
    c = np.array(Q.boundaries(0.05, fractions))
    assert list(c) == sorted(c, reverse=True)  # O'Brien-Fleming: strict early, loose late
    rng = np.random.default_rng(0)
    steps = rng.normal(size=(200_000, 4)) * np.sqrt(np.diff((0, *fractions)))
    z = steps.cumsum(axis=1) / np.sqrt(fractions)
    assert (np.abs(z) >= c).any(axis=1).mean() == pytest.approx(0.05, abs=0.003)
    assert Q.spent(0.4, 0.05) < 0.005 and Q.spent(1.0, 0.05) == pytest.approx(0.05)


def _paired_t_paths(paths: int, seeds=(3, 4, 5), seed: int = 99) -> np.ndarray:
    z = np.random.default_rng(seed).standard_normal((paths, max(seeds)))
    out = []
    for n in seeds:
        x = z[:, :n]
        out.append(np.abs(x.mean(axis=1)) / (x.std(axis=1, ddof=1) / math.sqrt(n)))
    return np.stack(out, axis=1)


def _crossing_rate(t: np.ndarray, nominal, seeds=(3, 4, 5)) -> float:
    crit = [student.isf(p / 2, n - 1) for p, n in zip(nominal, seeds)]
    return float((t >= np.array(crit)).any(axis=1).mean())


def test_t_boundaries_spend_exactly_alpha_where_z_boundaries_overshoot():
    """On null paths independent of the ones that calibrated it, the plain paired t crosses its
    t-boundaries with probability alpha; converted z-boundaries (the old way) cross more often."""
    t = _paired_t_paths(400_000)
    se = math.sqrt(0.05 * 0.95 / len(t))
    assert _crossing_rate(t, Q.t_nominal_levels(0.05, (3, 4, 5), 5, 0.0)) == pytest.approx(
        0.05, abs=3 * se + 0.001)
    assert _crossing_rate(t, Q.z_levels(0.05, (3, 4, 5), 5, 0.0)) > 0.05 + 5 * se


def test_t_boundaries_become_the_z_boundaries_with_many_degrees_of_freedom():
    t = Q.t_nominal_levels(0.05, (3, 4, 5), 5, 1e7)
    z = Q.z_levels(0.05, (3, 4, 5), 5, 0.0)
    assert t == pytest.approx(z, rel=0.05)
    assert Q.t_nominal_levels(0.05, (3, 4, 5), 5, 1.0) == Q.t_nominal_levels(
        0.05, (3, 4, 5), 5, 1.0)  # deterministic: the sweep and the report agree


def test_levels_at_every_alpha_the_corrected_p_value_may_ask_for():
    for alpha in (1e-4, 0.01, 0.5, 0.999):
        levels = Q.t_nominal_levels(alpha, (3, 4, 5), 5, Q.PRIOR_DF)
        assert all(0 <= v <= 1 for v in levels) and levels[-1] > 0
    # Below the Monte-Carlo resolution (1 in 200,000 paths) nothing crosses: never rejects.
    assert Q.t_nominal_levels(1e-6, (3, 4, 5), 5, Q.PRIOR_DF) == (0.0, 0.0, 0.0)
    assert Q.t_nominal_levels(0.05, (1, 2), 2, 0.0)[0] == 0.0  # one seed, no prior: no test


def test_one_look_by_hand():
    """Three arms, three seeds, one look: the moderated t against a hand computation. Arm a is
    rejected first (pooled over all three arms); b and c are then tested again with the
    variance pooled over the two still open."""
    base = [5.0, 5.2, 4.9]
    d = {"a": [-0.30, -0.20, -0.25], "b": [0.10, -0.10, 0.05], "c": [0.4, 0.0, 0.2]}
    losses = {"baseline": dict(enumerate(base))}
    losses |= {arm: {s: base[s] + v for s, v in enumerate(x)} for arm, x in d.items()}
    out = Q.decide(losses, list(d), [3], max_seeds=3)
    ss = {a: float(((np.array(x) - np.mean(x)) ** 2).sum()) for a, x in d.items()}
    pooled = {"a": sum(ss.values()) / 6, "b": (ss["b"] + ss["c"]) / 4}  # 2 df per arm
    pooled["c"] = pooled["b"]
    for arm, x in d.items():
        t = out.tests[0][arm]
        var = (Q.PRIOR_DF * pooled[arm] + ss[arm]) / (Q.PRIOR_DF + 2)
        assert t.diff == pytest.approx(np.mean(x))
        assert t.own_sd == pytest.approx(np.std(x, ddof=1))
        assert t.prior_sd == pytest.approx(math.sqrt(pooled[arm]))
        assert (t.df, t.n) == (Q.PRIOR_DF + 2, 3)
        assert t.se == pytest.approx(math.sqrt(var / 3))
        assert t.p == pytest.approx(2 * student.sf(abs(np.mean(x)) / t.se, t.df))
    first = Q.t_nominal_levels(0.05 / 3, (3,), 3, Q.PRIOR_DF)[0]
    second = Q.t_nominal_levels(0.05 / 2, (3,), 3, Q.PRIOR_DF)[0]
    assert out.decisions["a"].verdict == "better"
    assert out.decisions["a"].nominal == pytest.approx(first)
    assert out.tests[0]["a"].p <= first
    for arm in "bc":  # tested again at alpha / 2 after a's rejection
        rejected = out.tests[0][arm].p <= second
        assert out.decisions[arm].verdict == ("not resolved" if not rejected else
                                              "worse" if np.mean(d[arm]) > 0 else "better")
        assert out.decisions[arm].level == pytest.approx(0.05 / 2 if not rejected else 0.05)


def test_an_arm_without_a_seed_stays_in_the_family():
    """Holm's level counts every arm of the sweep, one that lost every seed included."""
    rng = np.random.default_rng(3)
    losses = {"baseline": dict(enumerate(rng.normal(size=3))),
              "a": dict(enumerate(rng.normal(size=3)))}
    out = Q.decide(losses, ["a", "lost"], [3], max_seeds=5)
    assert out.decisions["lost"].verdict == "not resolved"
    assert out.tests[0]["lost"].n == 0 and math.isnan(out.tests[0]["lost"].p)
    assert out.decisions["a"].level == pytest.approx(0.05 / 2)


def test_a_decided_arm_keeps_its_seeds_and_diverged_seeds_are_not_paired():
    """An arm decided at the first look is not given more seeds; a seed that diverged
    (missing) pairs with nothing."""
    base = {s: 5.0 + 0.01 * s for s in range(5)}
    losses = {"baseline": base,
              "far": {s: v + 3.0 + 0.001 * s for s, v in base.items()},
              "near": {0: 5.02, 1: 4.99, 3: 5.04, 4: 5.0}}  # seed 2 diverged
    out = Q.decide(losses, ["far", "near"], [3, 4, 5], max_seeds=5)
    far = out.decisions["far"]
    assert far.verdict == "worse" and far.look == 0 and far.final.n == 3
    assert [look["near"].n for look in out.tests] == [2, 3, 4]


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_familywise_error_and_interval_coverage_hold_in_every_scenario(name):
    sc = SCENARIOS[name]
    r = simulate(sc, SWEEPS, seed=11)
    assert r.fwer <= _error_limit(), (name, r.fwer)
    if sc.interval_holds:
        assert r.coverage.min() >= _coverage_limit(), (name, r.coverage)


def test_pooling_over_decided_arms_would_break_the_error_rate():
    """The default grid's shape: four quiet arms truly differ and are decided first; the noisy
    null arm left with the whole alpha must be tested on its own variance (pooled over the
    open arms only). Pooling over every arm instead declares it in about 9% of sweeps."""
    sc = SCENARIOS["partial_measured"]
    test = Q.moderated_t()

    def pool_everything(y, counts, members):
        return test(y, counts, np.ones_like(members))

    wrong = simulate(sc, SWEEPS, seed=11, test=pool_everything)
    right = simulate(sc, SWEEPS, seed=11)
    assert wrong.fwer > 0.07 and right.fwer <= _error_limit()


def test_power_at_one_and_two_sds_of_a_paired_difference():
    """One arm differs by k SDs of a paired difference (equal noise, SD 1 per run, so a paired
    difference has SD sqrt 2): found in ~12% of sweeps at 1 SD and ~60% at 2 SD; the moderation
    gains over the plain paired t. Its printed estimate is then inflated ~1.1x at 2 SD (1.5x at
    1 SD), as RESULTS reports."""
    sd = math.sqrt(2)
    one, two = (Scenario(name=f"{k}sd", sds=(1.0,) * 5, baseline_sd=1.0,
                         effects=(k * sd, 0.0, 0.0, 0.0, 0.0)) for k in (1, 2))
    r1, r2 = simulate(one, SWEEPS, seed=5), simulate(two, SWEEPS, seed=5)
    plain = simulate(two, SWEEPS, seed=5, test=Q.moderated_t(0.0))
    assert 0.09 < r1.power[0] < 0.15 and 0.56 < r2.power[0] < 0.64
    assert r2.power[0] > plain.power[0] + 0.08
    assert 1.3 < r1.bias[0] < 1.8 and 1.05 < r2.bias[0] < 1.15
    assert r1.coverage.min() >= _coverage_limit() and r2.coverage.min() >= _coverage_limit()


@pytest.mark.extended
@pytest.mark.parametrize("name", list(LIMITS))
def test_the_known_limits_are_what_results_reports(name):
    """Bimodal seeds with a rare large jump: the seeds that missed it look consistently better,
    and no test of 3-5 seeds controls that; RESULTS section 14 reports the numbers."""
    r = simulate(LIMITS[name], SWEEPS, seed=11)
    assert 0.10 < r.fwer < 0.16 and r.coverage.min() < 0.9
