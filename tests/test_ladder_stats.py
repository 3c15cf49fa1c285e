"""The ladder's statistics against known truths: the trend's 95% interval covers a known linear
trend about 95% of the time with few, unequally noisy seeds per rung (Monte-Carlo error
stated); the fit is refused with its reason for two rungs, a curved relation and a far target;
verdict transitions; Kendall tau and its seed bootstrap on known orderings."""

import math

import numpy as np
import pytest

from tune_ablations.results.answer import Answer, ArmAnswer
from tune_ablations.results.ladder import (
    RungResult,
    fit_trend,
    ladder_lines,
    lr_width_lines,
    rank_agreement,
    transition,
    trend,
)

X = np.array([13.0, 13.6, 14.2, 14.8])  # log10 compute: 4 rungs, 4x apart
TARGET = 15.4  # the next rung


def _simulate(a: float, b: float, sds, ns, rng, curve: float = 0.0, skew: bool = False):
    """(means, variances, dfs) of per-rung mean paired differences drawn around a + b x
    (`skew`: centred exponential seeds, one long tail, instead of normal ones)."""
    means, variances = [], []
    for x, sd, n in zip(X, sds, ns):
        noise = rng.exponential(sd, n) - sd if skew else rng.normal(0, sd, n)
        seeds = a + b * (x - X[0]) + curve * (x - X[0]) ** 2 + noise
        means.append(seeds.mean())
        variances.append(seeds.var(ddof=1) / n)
    return np.array(means), np.array(variances), np.array(ns, dtype=float) - 1


@pytest.mark.parametrize("sds, ns, skew, slack", [
    ((0.02, 0.02, 0.02, 0.02), (3, 3, 3, 3), False, 0.0),  # equal noise, the first look
    ((0.01, 0.02, 0.04, 0.08), (5, 3, 3, 4), False, 0.0),  # unequal noise and seeds
    ((0.02, 0.02, 0.02, 0.02), (3, 3, 3, 3), True, 0.0),   # skewed seeds
    # skewed and unequal: measured 0.87 (slope) and 0.90 (prediction) over 4000 ladders, the
    # known shortfall of a t interval from 3 seeds of a skewed distribution
    ((0.01, 0.02, 0.04, 0.08), (5, 3, 3, 4), True, 0.08),
])
def test_prediction_interval_covers_a_known_trend(sds, ns, skew, slack):
    rng = np.random.default_rng(1)
    a, b, sims = -0.05, 0.03, 2000
    truth = a + b * (TARGET - X[0])
    cover = slope_cover = predicted = 0
    for _ in range(sims):
        t = fit_trend(X, *_simulate(a, b, sds, ns, rng, skew=skew), TARGET)
        lo, hi = t.predicted_ci if not t.refused else (math.nan, math.nan)
        if not t.refused:
            predicted += 1
            cover += lo <= truth <= hi
        slope_cover += t.slope_ci[0] <= b <= t.slope_ci[1]
    mc = math.sqrt(0.95 * 0.05 / sims)  # Monte-Carlo SE of a 95% coverage: about 0.005
    assert abs(slope_cover / sims - 0.95) < 4 * mc + 0.01 + slack, slope_cover / sims
    # predictions are made when the line fits (about 95% of ladders on a true line)
    assert predicted / sims > 0.9
    assert abs(cover / predicted - 0.95) < 4 * mc + 0.015 + slack, cover / predicted


def test_refused_for_two_rungs_a_curve_and_a_far_target():
    rng = np.random.default_rng(2)
    t = fit_trend(X[:2], np.array([0.0, 0.01]), np.array([1e-4, 1e-4]), np.array([2.0, 2.0]),
                  TARGET)
    assert "a line needs 3" in t.refused and math.isnan(t.predicted)
    curved = sum("depart from a line" in fit_trend(
        X, *_simulate(0.0, 0.0, (0.002,) * 4, (5,) * 4, rng, curve=0.2), TARGET).refused
        for _ in range(50))
    assert curved >= 48  # a strong curve with little noise is (almost) always caught
    m, v, d = _simulate(0.0, 0.02, (0.01,) * 4, (4,) * 4, rng)
    far = fit_trend(X, m, v, d, X[-1] + 2.5)  # the ladder spans 1.8 decades
    assert "beyond the largest rung" in far.refused and math.isnan(far.predicted)
    assert not fit_trend(X, m, v, d, X[-1] + 1.0).refused or "depart" in far.refused


@pytest.mark.parametrize("small, large, want", [
    ("better", "better", "holds"), ("better", "worse", "flips"),
    ("worse", "not resolved", "unresolved"), ("not resolved", "worse", "resolves worse"),
    ("not resolved", "not resolved", "still unresolved")])
def test_transitions(small, large, want):
    assert transition(small, large) == want


def _rung(index: int, compute: float, diffs: dict[str, dict[int, float]],
          verdicts: dict[str, str]) -> RungResult:
    arms = [ArmAnswer(a, verdicts[a], n=len(d), diff=float(np.mean(list(d.values()))),
                      ci=(-1.0, 1.0)) for a, d in diffs.items()]
    return RungResult(index, 2.0 ** index, {}, compute, 1e6 * 2 ** index,
                      Answer(arms, "test", 4.0, 0.01), diffs)


def test_rank_agreement_and_its_bootstrap():
    rng = np.random.default_rng(3)
    means = {"a": -0.10, "b": -0.05, "c": 0.05, "d": 0.10}

    def rung(i, means, sd):
        return _rung(i, 1e13 * 4 ** i, {a: {s: m + rng.normal(0, sd) for s in range(5)}
                                        for a, m in means.items()},
                     dict.fromkeys(means, "better"))

    same = rank_agreement(rung(0, means, 0.001), rung(1, means, 0.001), draws=200)
    assert same["tau"] == pytest.approx(1.0) and same["arms"] == 5
    assert same["ci"][0] == pytest.approx(1.0)
    flipped = {a: -m for a, m in means.items()}
    opposite = rank_agreement(rung(0, means, 0.001), rung(1, flipped, 0.001), draws=200)
    assert opposite["tau"] == pytest.approx(-1.0)
    noisy = rank_agreement(rung(0, means, 0.2), rung(1, means, 0.2), draws=200)
    assert noisy["ci"][1] - noisy["ci"][0] > 0.5  # seed noise shows as a wide interval
    few = rank_agreement(rung(0, {"a": 0.1}, 0.01), rung(1, {"a": 0.1}, 0.01), draws=10)
    assert math.isnan(few["tau"])


def test_lines_show_every_rung_the_trend_and_the_agreement():
    rng = np.random.default_rng(4)
    rungs = [_rung(i, 10 ** x, {"wide": {s: 0.02 * i - 0.05 + rng.normal(0, 0.002)
                                         for s in range(4)},
                                "deep": {s: -0.03 + rng.normal(0, 0.002) for s in range(4)}},
                   {"wide": "better" if i < 2 else "not resolved", "deep": "better"})
             for i, x in enumerate(X[:3])]
    text = "\n".join(ladder_lines(rungs))
    assert "wide:" in text and "unresolved" in text and "holds, holds" in text
    t = trend(rungs, "wide", 10 ** 14.8)
    assert t.slope == pytest.approx(0.02 / 0.6, rel=0.15) and not t.refused
    assert "rung 0 vs rung 2 (3 arms" in text


def test_chosen_lr_against_width_beside_mups_prediction():
    rungs = []
    for i, d in enumerate((64, 128, 256)):
        r = _rung(i, 1e13 * 4 ** i, {"a": {0: 0.0, 1: 0.0}}, {"a": "not resolved"})
        r.sets = {"d_model": d}
        # baseline follows muP's 1/width exactly; arm "a" keeps its lr
        r.chosen_lr = {"baseline": 4e-3 * 64 / d, "a": 2e-3}
        rungs.append(r)
    text = "\n".join(lr_width_lines(rungs))
    assert "| baseline | 2 | 256 | 0.001 | 0.001 | 0.004 |" in text
    assert "| a | 2 | 256 | 0.002 | 0.0005 | 0.002 |" in text
    assert "baseline -1.00" in text and "a +0.00" in text
    assert lr_width_lines(rungs[:1]) == []  # one tuned rung: nothing to compare


def test_rank_bootstrap_covers_the_true_tau():
    """Two rungs whose true orderings differ by one swap (true tau 0.4), 3 seeds each: the
    95% seed-bootstrap interval holds the true tau (measured 0.97 at this noise over 300
    ladders; asserted over 100, Monte-Carlo SE about 0.017)."""
    from scipy import stats

    rng = np.random.default_rng(5)
    small = {"a": -0.10, "b": -0.05, "c": 0.03, "d": 0.08}
    large = {"a": -0.08, "b": 0.02, "c": -0.02, "d": 0.10}
    truth = stats.kendalltau([0, *small.values()], [0, *large.values()]).statistic

    def rung(i, means):
        return _rung(i, 1e13, {a: {s: m + rng.normal(0, 0.03) for s in range(3)}
                               for a, m in means.items()}, dict.fromkeys(means, "better"))

    sims, cover = 100, 0
    for k in range(sims):
        ra = rank_agreement(rung(0, small), rung(1, large), draws=150, seed=k)
        cover += ra["ci"][0] <= truth <= ra["ci"][1]
    assert cover / sims >= 0.9, cover / sims
