"""The seeds procedure with known answers: its boundaries spend exactly alpha, and by
simulation the familywise false-positive rate stays at or below alpha with no true
differences (also when some arms truly differ), while a true difference of 2 seed-SDs is
detected in most sweeps. A seed-SD is the SD of one arm's final loss across seeds."""

import math

import numpy as np
import pytest

from tune_ablations.results.sequential import ALPHA, boundaries, decide, look_tests, spent

ARMS = [f"arm{i}" for i in range(5)]


def simulate(effects, sims: int, *, max_seeds: int = 5, seed: int = 0, block: float = 0.0):
    """Familywise error (a null arm decided) and detection (a true effect decided in its
    direction) over `sims` simulated sweeps; loss = effect + seed block + noise(SD 1)."""
    rng = np.random.default_rng(seed)
    errors, found = 0, np.zeros(len(effects))
    for _ in range(sims):
        blk = rng.normal(0, block, max_seeds)
        losses = {"baseline": dict(enumerate(blk + rng.normal(size=max_seeds)))}
        for arm, e in zip(ARMS, effects):
            losses[arm] = dict(enumerate(e + blk + rng.normal(size=max_seeds)))
        # Every look at once: an arm decided early keeps its seeds, as in a real sweep.
        out = decide(losses, ARMS[:len(effects)], list(range(2, max_seeds + 1)),
                     max_seeds=max_seeds)
        verdicts = [out.decisions[a].verdict for a in ARMS[:len(effects)]]
        errors += any(v != "not resolved" and e == 0 for v, e in zip(verdicts, effects))
        found += [v == ("better" if e < 0 else "worse") and e != 0
                  for v, e in zip(verdicts, effects)]
    return errors / sims, found / sims


def _limit(sims: int) -> float:
    """Alpha plus two simulation standard errors."""
    return ALPHA + 2 * math.sqrt(ALPHA * (1 - ALPHA) / sims)


def test_boundaries_spend_exactly_alpha():
    assert boundaries(0.05, (1.0,))[0] == pytest.approx(1.959964, abs=1e-3)
    fractions = (0.4, 0.6, 0.8, 1.0)
    c = np.array(boundaries(0.05, fractions))
    assert list(c) == sorted(c, reverse=True)  # O'Brien-Fleming: strict early, loose late
    rng = np.random.default_rng(0)
    steps = rng.normal(size=(200_000, 4)) * np.sqrt(np.diff((0, *fractions)))
    z = steps.cumsum(axis=1) / np.sqrt(fractions)
    assert (np.abs(z) >= c).any(axis=1).mean() == pytest.approx(0.05, abs=0.003)
    assert spent(0.4, 0.05) < 0.005 and spent(1.0, 0.05) == pytest.approx(0.05)


def test_block_model_t_is_the_paired_t_when_balanced():
    """With every arm on the same seeds the contrast is the mean paired difference."""
    rng = np.random.default_rng(1)
    losses = {a: dict(enumerate(rng.normal(size=3))) for a in ["baseline", *ARMS[:2]]}
    tests = look_tests(losses, {a: 3 for a in ARMS[:2]})
    d = np.array([losses["arm0"][s] - losses["baseline"][s] for s in range(3)])
    assert tests["arm0"].diff == pytest.approx(d.mean())
    assert tests["arm0"].df == (3 - 1) * (3 - 1)  # (groups - 1) x (seeds - 1)


@pytest.mark.parametrize("effects, block", [([0.0] * 5, 0.0), ([0.0] * 5, 1.0),
                                            ([-6.0, 6.0, 0.0, 0.0, 0.0], 0.0)],
                         ids=["global-null", "global-null-shared-seed-effects", "partial-null"])
def test_familywise_error_stays_at_alpha(effects, block):
    rate, _ = simulate(effects, 1500, seed=7, block=block)
    assert rate <= _limit(1500), rate


def test_familywise_error_with_three_arms_and_four_seeds():
    rate, _ = simulate([0.0] * 3, 1500, max_seeds=4, seed=11)
    assert rate <= _limit(1500), rate


def test_a_difference_of_two_seed_sds_is_detected_in_most_sweeps():
    rate, found = simulate([-2.0, 0.0, 0.0, 0.0, 0.0], 800, seed=3)
    assert found[0] > 0.5, found
    assert rate <= _limit(800)
    _, found = simulate([-2.0, 2.0, -2.0, 2.0, -2.0], 300, seed=5)
    assert found.mean() > 0.6, found
