"""Statistics with known answers: paired vs Welch, Holm's correction, counts by status."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from tune_ablations.results.stats import compare_to_baseline, equal_budgets, holm, summarize


def _df(rows):
    return pd.DataFrame(rows, columns=["ablation", "seed", "status", "val_loss", "tokens_seen",
                                       "step"])


def test_paired_design_uses_the_paired_test():
    # Seeds shift both arms alike; the arm is consistently 0.05 lower.
    base = [3.00, 3.40, 2.80]
    arm = [2.95, 3.36, 2.74]
    rows = [("baseline", s, "completed", v, 1000, 10) for s, v in enumerate(base)]
    rows += [("low_lr", s, "completed", v, 1000, 10) for s, v in enumerate(arm)]
    c = compare_to_baseline(_df(rows)).set_index("ablation").loc["low_lr"]
    assert c["test"] == "paired" and c["n_pairs"] == 3
    assert c["p"] == pytest.approx(sps.ttest_rel(arm, base).pvalue)
    welch = sps.ttest_ind(arm, base, equal_var=False).pvalue
    assert welch > 0.5 and c["p"] < 0.05  # Welch would call it seed noise
    d = np.subtract(arm, base)
    half = sps.t.ppf(0.975, 2) * d.std(ddof=1) / math.sqrt(3)
    assert (c["ci_low"], c["ci_high"]) == pytest.approx((d.mean() - half, d.mean() + half))
    assert c["effect_size"] == pytest.approx(d.mean() / d.std(ddof=1))
    assert bool(c["exceeds_noise"]) is True


def test_welch_where_arms_share_no_seeds():
    rows = [("baseline", s, "completed", v, 1000, 10) for s, v in enumerate([3.0, 3.1, 3.2])]
    rows += [("x", s + 10, "completed", v, 1000, 10) for s, v in enumerate([2.0, 2.2, 2.1])]
    c = compare_to_baseline(_df(rows)).set_index("ablation").loc["x"]
    assert c["test"] == "welch"
    assert c["p"] == pytest.approx(sps.ttest_ind([2.0, 2.2, 2.1], [3.0, 3.1, 3.2],
                                                 equal_var=False).pvalue)


def test_holm_known_answer():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    got = holm([0.02, math.nan])
    assert got[0] == pytest.approx(0.02) and math.isnan(got[1])


def test_holm_decides_exceeds_noise_across_arms():
    base = [3.0, 3.3, 2.9]
    rows = [("baseline", s, "completed", v, 1000, 10) for s, v in enumerate(base)]
    # Arm a: p about 0.03 alone; with 3 arms compared Holm lifts it above 0.05.
    for name, shift in (("a", [0.10, 0.06, 0.08]), ("b", [0.0, 0.01, -0.01]),
                        ("c", [0.02, -0.03, 0.01])):
        rows += [(name, s, "completed", v + d, 1000, 10) for s, (v, d) in
                 enumerate(zip(base, shift))]
    c = compare_to_baseline(_df(rows)).set_index("ablation")
    assert c.loc["a", "p"] < 0.05 < c.loc["a", "p_holm"]
    assert bool(c.loc["a", "exceeds_noise"]) is False
    assert c["p_holm"].tolist() == pytest.approx(holm(c["p"].tolist()))


def test_lost_seeds_are_counted_not_dropped():
    rows = [("baseline", s, "completed", 3.0 + s / 10, 1000, 10) for s in range(3)]
    rows += [("high_lr", 0, "completed", 2.9, 1000, 10), ("high_lr", 1, "diverged", None, 500, 5),
             ("high_lr", 2, "error", None, 200, 2)]
    df = _df(rows)
    c = compare_to_baseline(df).set_index("ablation").loc["high_lr"]
    assert (c["n"], c["n_completed"], c["n_diverged"], c["n_error"], c["lost_seeds"]) == \
        (3, 1, 1, 1, 2)
    s = summarize(df).set_index("ablation").loc["high_lr"]
    assert (s["n"], s["n_completed"], s["lost_seeds"]) == (3, 1, 2)


def test_status_counts_count_every_status():
    from tune_ablations.results.stats import status_counts
    from tune_ablations.spec.names import Status

    df = _df([("a", i, s.value, 3.0, 100, 1) for i, s in enumerate(Status)])
    counts = status_counts(df)
    assert counts["n"] == len(Status) and counts["n_stopped"] == 1
    assert sum(v for k, v in counts.items() if k != "n") == counts["n"]


def test_equal_budgets():
    same = _df([("a", 0, "completed", 3.0, 1000, 10), ("b", 0, "completed", 3.0, 1050, 7)])
    assert equal_budgets(same)[0] is True  # within one step (150 tokens per step)
    diff = _df([("a", 0, "completed", 3.0, 1000, 10), ("b", 0, "completed", 3.0, 2000, 10)])
    ok, why = equal_budgets(diff)
    assert ok is False and "different budgets (1,000 to 2,000 tokens)" in why


def test_pareto_front():
    from tune_ablations.results.stats import pareto_front

    x = [1.0, 2.0, 3.0, 4.0, 2.5]
    y = [5.0, 4.0, 4.5, 3.0, 3.9]
    assert pareto_front(x, y) == [0, 1, 4, 3]


def _domain_results(rng, arms, main_means, dom_means, seeds=3, windows=40, noise=0.05):
    rows, outcomes = [], {}
    for arm, m, d in zip(arms, main_means, dom_means):
        for s in range(seeds):
            tid = f"{arm}-{s}"
            rows.append((arm, s, "completed", m, 1000, 10))
            outcomes[tid] = {"window_losses": list(m + rng.normal(0, noise, windows)),
                             "domain_window_losses": {"pydoc": list(d + rng.normal(
                                 0, noise, windows))},
                             "domains": {"pydoc": {"corpus": "pydoc", "documents": 30,
                                                   "dropped": 7, "total": 37}}}
    df = _df(rows)
    df["trial_id"] = [f"{a}-{s}" for a, s in zip(df["ablation"], df["seed"])]
    return df, outcomes


def test_rank_agreement_has_a_bootstrap_interval():
    from tune_ablations.results.stats import rank_agreement

    rng = np.random.default_rng(0)
    arms = ["baseline", "a", "b", "c", "d"]
    df, outcomes = _domain_results(rng, arms, [3.0, 3.2, 3.4, 3.6, 3.8],
                                   [4.0, 4.2, 4.4, 4.6, 4.8])
    same = rank_agreement(df, outcomes, "pydoc", n_boot=300)
    assert same["rho"] == pytest.approx(1.0) and same["low"] > 0.8 and same["arms"] == 5
    df, outcomes = _domain_results(rng, arms, [3.0, 3.01, 3.02, 3.03, 3.04],
                                   [4.02, 4.0, 4.03, 4.01, 4.04], noise=0.2)
    noisy = rank_agreement(df, outcomes, "pydoc", n_boot=300)
    assert noisy["low"] < 0 < noisy["high"]  # five close arms: the rank order is not known
    few = rank_agreement(df[df["ablation"].isin(["a", "b"])], outcomes, "pydoc")
    assert math.isnan(few["rho"]) and "3 or more arms" in few["note"]


def test_rank_agreement_pairs_the_windows_every_run_shares():
    """Four arms 0.02 nats apart on every window, windows that differ from each other by 0.5
    nats (hard and easy text), shared by every run: the arms' order is certain, and a
    bootstrap that resamples the windows once for all runs says so. Drawn independently for
    each run (the old way), the window draws alone would scramble the order."""
    from tune_ablations.results.stats import rank_agreement

    rng = np.random.default_rng(3)
    hard_main, hard_dom = rng.normal(0, 0.5, 40), rng.normal(0, 0.5, 40)
    rows, outcomes = [], {}
    for k, arm in enumerate(["baseline", "a", "b", "c"]):
        for seed in range(2):
            rows.append((arm, seed, "completed", 3 + 0.02 * k, 1000, 10))
            outcomes[f"{arm}-{seed}"] = {
                "window_losses": list(3 + 0.02 * k + hard_main + rng.normal(0, 0.002, 40)),
                "domain_window_losses": {"pydoc": list(4 + 0.02 * k + hard_dom
                                                       + rng.normal(0, 0.002, 40))}}
    df = _df(rows)
    df["trial_id"] = [f"{a}-{s}" for a, s in zip(df["ablation"], df["seed"])]
    r = rank_agreement(df, outcomes, "pydoc", n_boot=300)
    assert r["paired"] and r["rho"] == pytest.approx(1.0) and r["low"] >= 0.8


def test_the_report_says_what_each_domain_lost_and_how_sure_its_ranking_is():
    from tune_ablations.results.report import domains_section

    rng = np.random.default_rng(1)
    df, outcomes = _domain_results(rng, ["baseline", "a", "b"], [3.0, 3.2, 3.4],
                                   [4.0, 4.2, 4.4])
    df["val_loss@pydoc"] = df["val_loss"] + 1.0
    text = "\n".join(domains_section(df, outcomes))
    assert "pydoc (pydoc): 30 of 37 documents scored; 7 left out" in text
    assert "Spearman 1.00 (95% bootstrap interval" in text and "over 9 runs" in text
