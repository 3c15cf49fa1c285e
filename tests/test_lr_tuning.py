"""`grid --tune-lr`: known answers from synthetic loss surfaces (a parabola in log-lr per arm with
a known optimum and seed noise; curves shaped like benchmarks/RESULTS.md section 5, asymmetric
with lr-dependent, skewed seed noise) driving the real searcher, the per-arm early stopping, the
fit and the report; and one real tiny run through Ray."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from tune_ablations.results.answer import answer
from tune_ablations.results.frames import Results
from tune_ablations.results.lr_curves import (
    fit_lr_curve,
    fits,
    fixed_lr,
    lr_grid,
    replicate_lrs,
)
from tune_ablations.results.report import lr_tuning_section
from tune_ablations.spec.names import LR_REPLICATE_SEED, LR_SWEEP_SEED
from tune_ablations.sweeps.lr_tuning import ArmHalving, TuneLrSearcher

CURVE = 0.2  # loss rises by 0.2 nats per (ln lr)^2 away from the optimum


def parabola(lr, opt, floor):
    return floor + CURVE * (math.log(lr) - math.log(opt)) ** 2


def _tuned(curve, centre, k, span, rng, seeds=2, swept=None):
    """What --tune-lr measures of one arm: the sweep (one seed each), the second seed at the
    centre and the ends, then `seeds` seeds at the lr chosen from those; the report's fit."""
    lrs = lr_grid(centre, k, span)
    points = [(lr, curve(lr, rng)) for lr in lrs]
    points += [(lr, curve(lr, rng)) for lr in replicate_lrs(centre, lrs)]
    swept = swept or {lr: "completed" for lr in lrs}
    chosen = fit_lr_curve("a", *zip(*points), swept=swept).chosen
    points += [(chosen, curve(chosen, rng)) for _ in range(seeds)]
    return fit_lr_curve("a", *zip(*points), swept=swept, seed=int(rng.integers(1 << 30)))


def _covers(fit, truth: float) -> bool:
    lo, hi = fit.opt_lr_ci
    return (math.isnan(lo) or lo <= truth) and (math.isnan(hi) or truth <= hi)


def test_a_symmetric_curve_gets_a_parabola_whose_interval_covers_the_optimum():
    rng = np.random.default_rng(0)

    def curve(lr, rng):
        return parabola(lr, 2e-3, 4.0) + rng.normal(0, 0.01)

    found = [_tuned(curve, 3e-3, 7, 4.0, rng) for _ in range(100)]
    parabolas = [f for f in found if f.kind == "parabola"]
    assert len(parabolas) >= 70  # the model is right: it is reported most of the time
    assert sum(_covers(f, 2e-3) for f in parabolas) >= 0.9 * len(parabolas)
    assert all(_covers(f, 2e-3) for f in found if f.kind == "bracket")
    errors = [math.log(f.opt_lr / 2e-3) for f in parabolas]
    assert abs(np.mean(errors)) < 0.05 and np.std(errors) < 0.15
    exact = _tuned(lambda lr, rng: parabola(lr, 2e-3, 4.0), 3e-3, 7, 4.0, rng)
    assert exact.kind == "parabola" and exact.opt_lr == pytest.approx(2e-3, rel=1e-6)
    assert exact.opt_loss == pytest.approx(4.0, abs=1e-9)
    assert exact.chosen == pytest.approx(min(exact.lrs, key=lambda v: abs(math.log(v / 2e-3))))


# RESULTS.md section 5, as a truth: the seeded means fitted by a curve in x = ln(lr) that rises
# faster on the high side, plus seeds that blow up (+Exp(0.2) nats) with a probability rising
# toward 5e-3 and beyond: seed SDs 0.015, 0.023, 0.06, 0.12, 0.17 at 1.2, 2.4, 3.5, 4.7, 8e-3
# (measured: 0.015, 0.009, 0.133, 0.018, 0.175 from 3 seeds each).
def _section5_mean(x):
    d = x - math.log(2.866e-3)
    return 4.928 + 0.3544 * d * d + 0.0484 * d ** 3


def _blowup(x):
    return 0.5 / (1 + np.exp(-(x - math.log(5e-3)) / 0.15))


def _section5(lr, rng):
    x = math.log(lr)
    return _section5_mean(x) + rng.normal(0, 0.015) + (rng.random() < _blowup(x)) * \
        rng.exponential(0.2)


_GRID = np.linspace(math.log(5e-4), math.log(2e-2), 20001)
SECTION5_OPT = float(math.exp(_GRID[np.argmin(_section5_mean(_GRID) + 0.2 * _blowup(_GRID))]))


def test_section5_curves_get_an_interval_that_covers_or_a_labelled_bracket():
    """The review's failure: on curves like section 5's, the old parabola's interval covered
    the optimum in 8% of sweeps. 400 sweeps (5 lrs over lr/4..lr*4, the configured lr up to
    half a grid step from the optimum either way): every reported parabola interval covers
    the true optimum in at least 90% of the sweeps that report one (here 94.5% of 146;
    97.5% and 96.8% in 1,000 sweeps with other seeds); every other sweep is labelled a
    bracket (or refused at an edge), and the brackets cover it too."""
    rng = np.random.default_rng(7)
    found = [_tuned(_section5, SECTION5_OPT * math.exp(rng.uniform(-0.35, 0.35)), 5, 4.0, rng)
             for _ in range(400)]
    parabolas = [f for f in found if f.kind == "parabola"]
    brackets = [f for f in found if f.kind == "bracket"]
    assert len(parabolas) >= 40 and len(brackets) >= 40
    assert sum(_covers(f, SECTION5_OPT) for f in parabolas) >= 0.9 * len(parabolas)
    assert sum(_covers(f, SECTION5_OPT) for f in brackets) >= 0.95 * len(brackets)
    assert len(parabolas) + len(brackets) >= 0.9 * len(found)  # the rest: refused at an edge
    assert all(f.why_bracket for f in brackets)


def _replicated(lrs, curve):
    """One seed everywhere, a second at the centre and both ends (no noise: SD floor)."""
    pts = [(lr, curve(lr)) for lr in lrs]
    pts += [(lr, curve(lr) + 0.01) for lr in replicate_lrs(lrs[len(lrs) // 2], lrs)]
    return [p[0] for p in pts], [p[1] for p in pts]


@pytest.mark.parametrize("opt, edge, side", [(5e-2, "highest", "above"),
                                              (2e-4, "lowest", "below")])
def test_an_optimum_at_the_edge_of_the_swept_range_is_refused_and_named(opt, edge, side):
    lrs = lr_grid(3e-3, 5, 4.0)
    f = fit_lr_curve("a", *_replicated(lrs, lambda lr: parabola(lr, opt, 4.0)),
                     swept={lr: "completed" for lr in lrs})
    assert f.kind == "" and math.isnan(f.opt_lr)
    assert f"the {edge} lr swept ({(max if edge == 'highest' else min)(lrs):.3g}) cannot " \
        f"be told apart from the best: the optimum may lie {side} the range; widen " \
        "--lr-span" in f.refused
    assert f.chosen == (max(lrs) if edge == "highest" else min(lrs))


def test_the_edge_refusal_speaks_of_the_swept_range_not_the_survivors():
    """The two lowest lrs were stopped early: the lowest full-budget point is not the lowest
    lr swept, and the refusal says so instead of blaming --lr-span."""
    lrs = lr_grid(3e-3, 5, 4.0)
    full = lrs[2:]
    pts = _replicated(full, lambda lr: parabola(lr, 2e-4, 4.0))
    swept = {lrs[0]: "early_stopped", lrs[1]: "early_stopped"} | {lr: "completed" for lr in full}
    f = fit_lr_curve("a", *pts, swept=swept)
    assert f"the lowest lr that ran to the end ({full[0]:.3g})" in f.refused
    assert f"{lrs[0]:.3g} early_stopped" in f.refused and "widen" not in f.refused


@pytest.mark.parametrize("side", ["above", "below"])
def test_a_diverged_lr_beyond_the_points_bounds_the_bracket(side):
    """A diverged lr (exploded, or never beat the unigram reference, as a too-low lr does on
    a short run) is worse than any finite loss, so it bounds the optimum on its side."""
    lrs = lr_grid(3e-3, 5, 4.0)
    full, out, opt = (lrs[:4], lrs[4], 6e-3) if side == "above" else (lrs[1:], lrs[0], 1.5e-3)
    pts = _replicated(full, lambda lr: parabola(lr, opt, 4.0))
    f = fit_lr_curve("a", *pts, swept={lr: "completed" for lr in full} | {out: "diverged"})
    assert not f.refused and f.kind == "bracket" and "diverged" in f.why_bracket
    assert f.opt_lr_ci[1 if side == "above" else 0] == pytest.approx(out)


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


def test_rungs_rank_the_decayed_loss_and_probes_go_where_they_fit():
    """The per-arm scheduler stops by `rank_loss` (the rung's cooldown probe), not by the
    mid-schedule `val_loss`, which here ranks the trials the other way round."""
    from ray.tune.schedulers import TrialScheduler

    from tune_ablations.spec.resolve import resolve
    from tune_ablations.spec.runspec import RunSpec
    from tune_ablations.sweeps.lr_tuning import per_arm_scheduler, rung_probe_tokens

    sched = per_arm_scheduler(100, 900, 3, {"a": 1e-3})

    class Trial:
        def __init__(self, i, lr):
            self.trial_id, self.config = f"t{i}", {"ablation": "a", "seed": LR_SWEEP_SEED,
                                                   "lr": lr}

    decisions = []
    for i, (mid, decayed) in enumerate([(5.0, 5.4), (5.1, 5.3), (5.2, 5.2), (5.3, 5.1)]):
        result = {"tokens_seen": 100, "val_loss": mid, "rank_loss": decayed}
        decisions.append(sched.on_trial_result(None, Trial(i, 2e-3 * (i + 1)), result))
    # the 4th trial is the best by its decayed loss (5.1): it goes on though its val_loss is worst
    assert decisions == [TrialScheduler.CONTINUE] * 4
    result = {"tokens_seen": 100, "val_loss": 4.0, "rank_loss": 5.35}
    assert sched.on_trial_result(None, Trial(9, 9e-3), result) == TrialScheduler.STOP
    cpu = [resolve(RunSpec(ablation=a).with_params(lr=1e-3)) for a in ("baseline", "large_batch")]
    assert rung_probe_tokens([40960], cpu) == "40960"
    assert rung_probe_tokens([4096, 40960], cpu) == "40960"  # 0.2 x 4096 < a 2048-token step
    flat = [resolve(RunSpec().with_params(lr=1e-3, schedule="constant"))]
    assert rung_probe_tokens([40960], flat) == ""


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
    for arm, g in df[df["seed"] == LR_REPLICATE_SEED].groupby("ablation"):
        done = sweep[(sweep["ablation"] == arm) & (sweep["status"] == "completed")]["lr"]
        assert sorted(g["lr"]) == pytest.approx(replicate_lrs(WORLD[arm][0], list(done)))
        assert (g["status"] == "completed").all()  # second seeds are never stopped
    for arm, g in sweep.groupby("ablation"):
        assert (g["status"] == "completed").sum() >= 3, arm
        assert (g[np.isclose(g["lr"], WORLD[arm][0])]["status"] == "completed").all()
    assert record["tune_lr"]["chosen"] == {"baseline": pytest.approx(3e-3),
                                           "large_batch": pytest.approx(1e-2),
                                           "small_model": pytest.approx(3e-3)}
    seeded = df[~df["seed"].isin([LR_SWEEP_SEED, LR_REPLICATE_SEED])]
    for arm, g in seeded.groupby("ablation"):
        assert np.allclose(g["lr"], record["tune_lr"]["chosen"][arm]) and len(g) >= 2


# in the lr sweep, at its end, among the second seeds, seeding
@pytest.mark.parametrize("restart_at", [7, 15, 19, 27])
def test_a_restored_searcher_goes_on_where_it_stopped(world, restart_at, tmp_path):
    df, record = simulate(restart_at=restart_at, tmp=tmp_path)
    assert df.drop(columns="trial_id").equals(world[0].drop(columns="trial_id"))
    assert record["tune_lr"]["chosen"] == world[1]["tune_lr"]["chosen"]


def test_the_fit_recovers_each_arms_optimum(world):
    df, _ = world
    for arm, f in fits(df).items():
        _, opt, floor = WORLD[arm]
        assert not f.refused, (arm, f.refused)
        assert _covers(f, opt), (arm, f.kind, f.opt_lr_ci)
        assert f.noise  # measured where an lr has 2 runs
        if f.kind == "parabola":
            assert abs(math.log(f.opt_lr / opt)) < 0.25 and abs(f.opt_loss - floor) < 0.03
        else:  # 2 of its 5 lrs were stopped early: 3 points cannot test a parabola
            assert len(f.lrs) == 3 and "3 full-budget lrs" in f.why_bracket


def test_the_report_ranks_arms_at_their_optimum_and_names_the_flipped_conclusion(world):
    df, record = world
    ans = answer(Results(df, pd.DataFrame(), {}), record)
    verdicts = {r.arm: r.verdict for r in ans.arms}
    assert verdicts == {"large_batch": "not resolved", "small_model": "worse"}
    fixed = fixed_lr(df, record["tune_lr"]["centres"])
    assert fixed["large_batch"].verdict == "worse"  # 0.1 nats off its optimum
    assert fixed["large_batch"].diff == pytest.approx(CURVE * math.log(5 / 10) ** 2, abs=0.03)
    assert fixed["large_batch"].n == 2 and fixed["large_batch"].dof == 2  # 2 arms x (2 - 1)
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
    sweep = df[df["seed"] == LR_SWEEP_SEED]
    for arm in ("baseline", "large_batch"):  # second seeds: centre and completed extremes
        done = sweep[(sweep["ablation"] == arm) & (sweep["status"] == "completed")]["lr"]
        second = df[(df["ablation"] == arm) & (df["seed"] == LR_REPLICATE_SEED)]["lr"]
        assert sorted(second) == pytest.approx(replicate_lrs(record["centres"][arm],
                                                             list(done)))
    assert len(sweep) == 2 * 3 and len(df[df["seed"] < LR_SWEEP_SEED]) == 2 * 2
    for arm in ("baseline", "large_batch"):
        seeded = df[(df["ablation"] == arm) & (df["seed"] < LR_SWEEP_SEED)]
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
    assert {r["seed"] for r in rows} == {LR_SWEEP_SEED, LR_REPLICATE_SEED}
    for arm, centre in (("baseline", 3e-3), ("large_batch", 5e-3)):
        for seed, lrs in ((LR_SWEEP_SEED, lr_grid(centre, 3, 4.0)),
                          (LR_REPLICATE_SEED, replicate_lrs(centre, lr_grid(centre, 3, 4.0)))):
            assert np.allclose(sorted(r["lr"] for r in rows if r["ablation"] == arm
                                      and r["seed"] == seed), lrs)
    # the sweep's rungs get a cooldown probe (a decayed loss to rank by); second seeds none
    assert all(r["probe_tokens"] > 0 for r in rows if r["seed"] == LR_SWEEP_SEED)
    assert all(r["probe_tokens"] == 0 for r in rows if r["seed"] == LR_REPLICATE_SEED)
    assert "then: each arm's chosen lr with seeds 0.." in out.err
    assert len({r["tokens"] for r in rows}) == 1  # equal tokens across arms and lrs
