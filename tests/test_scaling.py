"""Scaling fits with known answers: the Chinchilla form recovers a known (E, A, alpha, B, beta)
from synthetic runs; one token budget is named L(N | D) and never extrapolated along compute;
designs that support neither are refused."""

import numpy as np
import pytest

from tune_ablations.results.scaling import chinchilla_loss, fit_runs

TRUE = {"E": 1.7, "A": 400.0, "alpha": 0.34, "B": 2000.0, "beta": 0.28}


def _design(noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    n, d = np.meshgrid(np.geomspace(1e5, 3e7, 5), np.geomspace(2e6, 2e9, 5))
    n, d = n.ravel(), d.ravel()
    return n, d, chinchilla_loss(TRUE, n, d) * np.exp(rng.normal(0, noise, len(n)))


def test_chinchilla_form_recovers_known_parameters():
    n, d, loss = _design(noise=0.002)
    fit = fit_runs(n, d, loss, n_boot=40)
    assert fit["form"].startswith("L(N, D)")
    for key, rel in (("E", 0.05), ("alpha", 0.1), ("beta", 0.1)):
        assert fit[key] == pytest.approx(TRUE[key], rel=rel), key
    lo, hi = fit["alpha_ci95"]
    assert lo <= fit["alpha"] <= hi and hi - lo < 0.1
    assert lo - 0.01 <= TRUE["alpha"] <= hi + 0.01
    assert fit["identified"] and "compute-optimal frontier" in fit["summary"]
    assert fit["predicted_loss"] > TRUE["E"]


def test_an_unidentified_fit_reports_no_extrapolation():
    """Sizes and budgets too close together for E: the fit says so and extrapolates nothing."""
    rng = np.random.default_rng(2)
    n, d = np.meshgrid(np.geomspace(1e5, 2e5, 4), np.geomspace(1e6, 2e6, 4))
    n, d = n.ravel(), d.ravel()
    loss = chinchilla_loss(TRUE, n, d) * np.exp(rng.normal(0, 0.02, len(n)))
    fit = fit_runs(n, d, loss, n_boot=20)
    assert not fit["identified"] and "no extrapolation along compute" in fit["summary"]


def test_one_token_budget_is_a_law_in_size_that_is_not_extrapolated():
    n = np.geomspace(1e5, 3e7, 6)
    d = np.full_like(n, 2.5e5)
    loss = chinchilla_loss(TRUE, n, d)
    fit = fit_runs(n, d, loss, n_boot=20)
    assert fit["form"] == "L(N | D) = E_D + A/N^alpha"
    # At fixed D the B/D^beta term is part of the intercept: E_D = E + B/D^beta.
    assert fit["E"] == pytest.approx(TRUE["E"] + TRUE["B"] / 2.5e5 ** TRUE["beta"], rel=0.05)
    assert fit["alpha"] == pytest.approx(TRUE["alpha"], rel=0.1)
    assert "predicted_loss" not in fit and "no extrapolation along compute" in fit["summary"]


def test_designs_that_support_no_fit_are_refused():
    with pytest.raises(ValueError, match="at least 5 completed runs at 3 or more model sizes"):
        fit_runs([1e5, 2e5, 4e5], [1e6] * 3, [3.0, 2.9, 2.8])
    with pytest.raises(ValueError, match="2 token budgets"):
        fit_runs([1e5, 2e5, 4e5, 1e5, 2e5, 4e5], [1e6] * 3 + [2e6] * 3,
                 [3.0, 2.9, 2.8, 2.9, 2.8, 2.7])
