"""`grid --tune-lr`: known answers from synthetic loss surfaces (a parabola in log-lr per arm with
a known optimum and seed noise) driving the real searcher, the per-arm early stopping, the fit
and the report; and one real tiny run through Ray."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from tune_ablations.results.answer import answer
from tune_ablations.results.frames import Results
from tune_ablations.results.lr_curves import fit_lr_curve, fits, fixed_lr, lr_grid
from tune_ablations.results.report import lr_tuning_section
from tune_ablations.spec.names import LR_SWEEP_SEED
from tune_ablations.sweeps.lr_tuning import ArmHalving, TuneLrSearcher

CURVE = 0.2  # loss rises by 0.2 nats per (ln lr)^2 away from the optimum


def parabola(lr, opt, floor):
    return floor + CURVE * (math.log(lr) - math.log(opt)) ** 2


def test_the_fit_recovers_a_known_optimum_with_an_interval_that_covers_it():
    rng = np.random.default_rng(0)
    lrs = lr_grid(3e-3, 7, 4.0)
    covered, errors = 0, []
    for rep in range(100):
        y = [parabola(lr, 2e-3, 4.0) + rng.normal(0, 0.01) for lr in lrs]
        f = fit_lr_curve("a", lrs, y, sigma=0.01, seed=rep)
        assert not f.refused
        covered += f.opt_lr_ci[0] <= 2e-3 <= f.opt_lr_ci[1]
        errors.append(math.log(f.opt_lr / 2e-3))
    assert covered >= 88  # nominal 95%, 100 repetitions
    assert abs(np.mean(errors)) < 0.05 and np.std(errors) < 0.15
    exact = fit_lr_curve("a", lrs, [parabola(lr, 2e-3, 4.0) for lr in lrs])
    assert exact.opt_lr == pytest.approx(2e-3, rel=1e-6)
    assert exact.opt_loss == pytest.approx(4.0, abs=1e-9)
    assert exact.chosen == pytest.approx(min(lrs, key=lambda v: abs(math.log(v / 2e-3))))


@pytest.mark.parametrize("opt, edge", [(5e-2, "highest"), (2e-4, "lowest")])
def test_an_optimum_at_the_edge_of_the_range_is_refused_and_named(opt, edge):
    lrs = lr_grid(3e-3, 5, 4.0)
    f = fit_lr_curve("a", lrs, [parabola(lr, opt, 4.0) for lr in lrs])
    assert math.isnan(f.opt_lr) and f"the best point is the {edge} lr swept" in f.refused
    assert "widen --lr-span" in f.refused
    assert f.chosen == (max(lrs) if edge == "highest" else min(lrs))


def _run_rungs(halving, arm, trial, losses_by_rung, anchor=False):
    for t, loss in losses_by_rung:
        if halving.stop(arm, trial, t, loss, anchor):
            return t
    return None


def test_no_arm_is_stopped_because_of_another_arms_losses():
    """Arm `worse` is far above arm `good` everywhere. Its stops are exactly those it gets
    alone; one ASHA over both arms (every trial under one key) would stop it wholesale."""
    rng = np.random.default_rng(1)
    good = {f"g{i}": [(100, 4.0 + rng.random()), (300, 3.9 + rng.random())] for i in range(5)}
    worse = {f"w{i}": [(100, 6.0 + rng.random()), (300, 5.9 + rng.random())] for i in range(5)}

    def stops(trials_in_order, key_of):
        h = ArmHalving(milestone=100, max_t=900, eta=3, keep=3)
        return {t: _run_rungs(h, key_of(t), t, r) for t, r in trials_in_order}

    interleaved = [x for pair in zip(good.items(), worse.items()) for x in pair]
    per_arm = stops(interleaved, lambda t: t[0])
    alone = stops(list(worse.items()), lambda t: t[0])
    assert {t: per_arm[t] for t in worse} == alone
    one_bracket = stops(list(good.items()) + list(worse.items()), lambda t: "all")
    assert sum(one_bracket[t] is not None for t in worse) == 5  # what per-arm stopping prevents
    assert sum(per_arm[t] is not None for t in worse) <= 2  # top 3 of the arm always go on


def test_the_top_three_and_the_anchor_always_run_to_the_end():
    h = ArmHalving(milestone=100, max_t=900, eta=3, keep=3)
    assert h.rungs == [100, 300]
    for i, loss in enumerate([5.0, 5.1, 5.2]):
        assert not h.stop("a", f"t{i}", 100, loss, anchor=False)
    assert h.stop("a", "t3", 100, 5.3, anchor=False)  # 4th of 4: outside the top 3
    assert not h.stop("a", "t4", 100, 9.0, anchor=True)  # the configured lr: never
    assert not h.stop("a", "t5", 100, 4.0, anchor=False)  # best so far
    assert h.stop("a", "t6", 100, math.nan, anchor=False)  # a nan loss ranks last


# --- the whole procedure on a synthetic world ----------------------------------------------------

# arm: (configured lr, true optimum, loss at the optimum). large_batch sits off its optimum at
# its configured lr (looks 0.15 nats worse at fixed lr) and is as good as the baseline at its
# own; small_model is worse at any lr.
WORLD = {"baseline": (3e-3, 3e-3, 4.0), "large_batch": (5e-3, 1e-2, 4.0),
         "small_model": (3e-3, 3e-3, 4.3)}
SIGMA = 0.01


def _loss(arm, lr, seed, tokens, rng):
    _, opt, floor = WORLD[arm]
    return parabola(lr, opt, floor) + 2.0 * (900 / tokens - 1) + rng.normal(0, SIGMA)


def _searcher():
    arms = list(WORLD)
    return TuneLrSearcher(arms, centres={a: WORLD[a][0] for a in arms}, k=5, span=4.0,
                          seeds="auto", max_seeds=5, time_budget=0, slots=1, experiment=None)


def simulate(seed=0, restart_at=None, tmp=None):
    """The real searcher and per-arm halving, one trial at a time, on synthetic losses;
    `restart_at`: save the searcher there and go on with a fresh one restored from it (what a
    driver kill and --resume do)."""
    rng = np.random.default_rng(seed)
    searcher = _searcher()
    halving = ArmHalving(milestone=100, max_t=900, eta=3)
    rows = []
    for i in range(200):
        if i == restart_at:
            searcher.save(str(tmp / "searcher.json"))
            searcher = _searcher()
            searcher.restore(str(tmp / "searcher.json"))
        cfg = searcher.suggest(f"t{i}")
        if cfg == searcher.FINISHED:
            break
        arm, s, lr = cfg["ablation"], cfg["seed"], cfg["lr"]
        status, tokens = "completed", 900
        for t in (100, 300, 900):
            loss = _loss(arm, lr, s, t, rng)
            anchor = math.isclose(lr, WORLD[arm][0])
            if s == LR_SWEEP_SEED and t < 900 and halving.stop(arm, f"t{i}", t, loss, anchor):
                status, tokens = "early_stopped", t
                break
        searcher.on_trial_complete(f"t{i}", {"val_loss": loss, "status": status,
                                             "time_total_s": 1.0, "tokens_seen": tokens})
        rows.append({"trial_id": f"t{i}", "ablation": arm, "seed": s, "lr": lr,
                     "status": status, "val_loss": loss, "tokens_seen": tokens, "step": tokens,
                     "flops_per_token": 1.0, "seq_len": 64, "epoch": 0.1, "initial_loss": 7.0})
    return pd.DataFrame(rows), searcher.record()


@pytest.fixture(scope="module")
def world():
    return simulate()


def test_the_sweep_stops_within_arms_and_seeds_each_arm_at_its_chosen_lr(world):
    df, record = world
    sweep = df[df["seed"] == LR_SWEEP_SEED]
    assert len(sweep) == 15 and (sweep["status"] == "early_stopped").any()
    for arm, g in sweep.groupby("ablation"):
        assert (g["status"] == "completed").sum() >= 3, arm
        assert (g[np.isclose(g["lr"], WORLD[arm][0])]["status"] == "completed").all()
    assert record["tune_lr"]["chosen"] == {"baseline": pytest.approx(3e-3),
                                           "large_batch": pytest.approx(1e-2),
                                           "small_model": pytest.approx(3e-3)}
    seeded = df[df["seed"] != LR_SWEEP_SEED]
    for arm, g in seeded.groupby("ablation"):
        assert np.allclose(g["lr"], record["tune_lr"]["chosen"][arm]) and len(g) >= 2


@pytest.mark.parametrize("restart_at", [7, 15, 22])  # in the lr sweep, at its end, seeding
def test_a_restored_searcher_goes_on_where_it_stopped(world, restart_at, tmp_path):
    df, record = simulate(restart_at=restart_at, tmp=tmp_path)
    assert df.drop(columns="trial_id").equals(world[0].drop(columns="trial_id"))
    assert record["tune_lr"]["chosen"] == world[1]["tune_lr"]["chosen"]


def test_the_fit_recovers_each_arms_optimum(world):
    df, _ = world
    for arm, f in fits(df).items():
        _, opt, floor = WORLD[arm]
        assert not f.refused, (arm, f.refused)
        assert f.opt_lr_ci[0] <= opt <= f.opt_lr_ci[1], (arm, f.opt_lr_ci)
        assert abs(math.log(f.opt_lr / opt)) < 0.25 and abs(f.opt_loss - floor) < 0.03


def test_the_report_ranks_arms_at_their_optimum_and_names_the_flipped_conclusion(world):
    df, record = world
    ans = answer(Results(df, pd.DataFrame(), {}), record)
    verdicts = {r.arm: r.verdict for r in ans.arms}
    assert verdicts == {"large_batch": "not resolved", "small_model": "worse"}
    fixed = fixed_lr(df, record["tune_lr"]["centres"], ans.pooled_sd, ans.pooled_df)
    assert fixed["large_batch"].verdict == "worse"  # 0.15 nats off its optimum
    assert fixed["large_batch"].diff == pytest.approx(CURVE * math.log(5 / 10) ** 2, abs=0.05)
    text = "\n".join(lr_tuning_section(df, record, ans))
    changed = text.split("### Conclusions that change")[1]
    assert "- large_batch: at fixed lr it looked worse by" in changed
    assert "not resolved" in changed and "small_model" not in changed
    assert "| large_batch | 0.005 | 5/5" in text or "| large_batch | 0.005 |" in text


@pytest.mark.slow
def test_tune_lr_runs_through_ray_and_reports(ray_session, corpus_dir, tmp_path):
    from tune_ablations import analysis, grid

    code = grid.main(["--preset", "tiny", "--data", str(corpus_dir), "--set", "vocab_size=300",
                      "--ablations", "baseline", "large_batch", "--tune-lr", "3",
                      "--seeds", "2", "--storage", str(tmp_path), "--name", "t"])
    assert code == 0
    exp = tmp_path / "t"
    record = json.loads((exp / "decisions.json").read_text())["tune_lr"]
    df = pd.read_parquet(exp / "results.parquet")
    assert len(df) == 2 * 3 + 2 * 2
    for arm in ("baseline", "large_batch"):
        seeded = df[(df["ablation"] == arm) & (df["seed"] != LR_SWEEP_SEED)]
        assert np.allclose(seeded["lr"], record["chosen"][arm])
        swept = sorted(df[(df["ablation"] == arm) & (df["seed"] == LR_SWEEP_SEED)]["lr"])
        assert np.allclose(swept, lr_grid(record["centres"][arm], 3, 4.0))
    assert analysis.main([str(exp), "--out", str(tmp_path / "r")]) == 0
    text = (tmp_path / "r" / "report.md").read_text()
    assert "## Every arm at its own best learning rate" in text
    assert "### Conclusions that change" in text and (tmp_path / "r" / "lr_curves.png").exists()


def test_the_dry_run_lists_the_lr_sweep_and_says_what_follows(corpus_dir, tmp_path, capsys):
    from tune_ablations import grid

    assert grid.main(["--preset", "tiny", "--data", str(corpus_dir), "--set", "vocab_size=300",
                      "--ablations", "baseline", "large_batch", "--tune-lr", "3", "--storage",
                      str(tmp_path), "--dry-run", "--json"]) == 0
    out = capsys.readouterr()
    rows = [json.loads(line) for line in out.out.splitlines()]
    assert {r["seed"] for r in rows} == {LR_SWEEP_SEED}
    for arm, centre in (("baseline", 3e-3), ("large_batch", 5e-3)):
        assert np.allclose(sorted(r["lr"] for r in rows if r["ablation"] == arm),
                           lr_grid(centre, 3, 4.0))
    assert "then: each arm's chosen lr with seeds 0.." in out.err
    assert len({r["tokens"] for r in rows}) == 1  # equal tokens across arms and lrs
