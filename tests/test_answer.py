"""The answer with known answers: the report replays exactly the decisions the sweep made (the
real searcher driven by synthetic losses, with diverged seeds and an arm that loses every seed);
the line shows every seed that ran beside the look that decided; confounds come from the
resolved configs of the real presets, classed and with known directions; arms with different
contexts are compared on the same windows too."""

import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from tune_ablations.results import sequential as Q
from tune_ablations.results.answer import answer, answer_lines, final_losses
from tune_ablations.results.confounds import ALSO, FOLLOWS, OWN, confounds
from tune_ablations.results.frames import Results
from tune_ablations.spec.config import to_flat_dict
from tune_ablations.spec.flops import count_params, flops_per_token
from tune_ablations.spec.names import context_metric
from tune_ablations.spec.resolve import resolve, with_eval_contexts
from tune_ablations.spec.runspec import RunSpec
from tune_ablations.sweeps.searchers import ArmsSearcher

ABLATIONS = RunSpec().arm_names  # the reference question: baseline and its five arms

VOCAB = 1024


def cpu_row(arm: str, seed: int, loss: float, status: str = "completed",
            precision: str = "fp32", extra: dict | None = None) -> dict:
    """One trial's results row as frames builds it, from the arm's real resolved config."""
    c = resolve(RunSpec(ablation=arm, preset="cpu", seed=seed), vocab_size=VOCAB)
    return {"trial_id": f"{arm}-{seed}", "ablation": arm, "seed": seed, "status": status,
            **to_flat_dict(c), "val_loss": loss if status == "completed" else math.nan,
            "tokens_seen": c.total_tokens, "step": c.steps,
            "epoch": c.total_tokens / 500_000,
            "flops_per_token": flops_per_token(c.model, VOCAB, c.data.seq_len),
            "params": count_params(c.model, VOCAB)["params"], "run_precision": precision,
            **(extra or {})}


# --- the report replays the sweep ------------------------------------------------------------

WORLD = {  # arm: (true difference, seed SD, seeds that diverge)
    "baseline": (0.0, 0.01, ()), "high_lr": (0.0, 0.2, (1,)), "low_lr": (0.4, 0.01, ()),
    "large_batch": (0.3, 0.02, (0,)), "short_seq": (-0.25, 0.03, ()),
    "small_model": (0.4, 0.01, (0, 1, 2, 3, 4)),
}


def drive(seed: int = 0):
    """The real ArmsSearcher, trial by trial, on synthetic losses; the results frame the
    report would read."""
    rng = np.random.default_rng(seed)
    arms = list(WORLD)
    s = ArmsSearcher(arms, seeds="auto", max_seeds=5, time_budget=0, slots=2, experiment=None)
    rows = []
    for i in range(100):
        cfg = s.suggest(f"t{i}")
        if cfg == s.FINISHED or cfg is None:
            break
        arm, seed_ = cfg["ablation"], cfg["seed"]
        effect, sd, diverges = WORLD[arm]
        status = "diverged" if seed_ in diverges else "completed"
        loss = 5.0 + effect + rng.normal(0, sd)
        s.on_trial_complete(f"t{i}", {"val_loss": 100.0 if status == "diverged" else loss,
                                      "status": status, "time_total_s": 1.0})
        rows.append(cpu_row(arm, seed_, loss, status))
    return pd.DataFrame(rows), s.record()


def test_the_report_decides_exactly_what_the_sweep_decided():
    df, record = drive()
    ans = answer(Results(df, pd.DataFrame(), {}), record)
    got = {r.arm: r for r in ans.arms}
    assert record["finished"] and ans.mismatch == ""
    for arm, verdict in record["verdicts"].items():
        shown = got[arm].verdict
        assert {"diverged": "not resolved"}.get(shown, shown) == verdict, arm
        assert got[arm].decided_at == record["decided_at"].get(arm), arm
    assert set(record["verdicts"]) == set(WORLD) - {"baseline"}  # the whole family
    assert got["small_model"].verdict == "diverged"
    assert "every seed (3 of 3) diverged" in got["small_model"].note  # no seeds after that
    assert got["low_lr"].verdict == "worse" and got["short_seq"].verdict == "better"
    line = next(x for x in answer_lines(ans) if x.startswith("large_batch"))
    assert "1 of " in line and "seeds diverged or failed" in line


def test_an_arm_that_lost_every_seed_still_counts_in_holm():
    """The corrected p-value of a decided arm is computed over the sweep's five hypotheses,
    not the four that have data."""
    df, record = drive()
    ans = answer(Results(df, pd.DataFrame(), {}), record)
    losses = final_losses(df)
    family = [a for a in WORLD if a != "baseline"]
    four = [a for a in family if a != "small_model"]
    p = {r.arm: r.p_adj for r in ans.arms}
    looks, m = record["looks"], record["max_seeds"]
    assert p["low_lr"] == pytest.approx(Q.adjusted_p(losses, family, looks, "low_lr",
                                                     max_seeds=m))
    assert p["low_lr"] > Q.adjusted_p(losses, four, looks, "low_lr", max_seeds=m)


def test_a_replay_that_differs_from_the_sweep_says_so():
    df, record = drive()
    record = {**record, "verdicts": {**record["verdicts"], "low_lr": "better"}}
    lines = answer_lines(answer(Results(df, pd.DataFrame(), {}), record))
    assert any(x.startswith("warning: replaying") and "low_lr (sweep: better, replay: worse)"
               in x for x in lines)


def _decided_before_its_last_look():
    """A sweep (found by simulation, fixed seed) where an arm was decided at look 0 by a level
    recycled at look 1: it ran 4 seeds, and was decided at 3."""
    rng = np.random.default_rng(0)
    y = rng.normal(size=(5000, 3, 5)) * 0.01 + np.array([0.0, 0.04, 0.02])[None, :, None]
    out = Q.decide_batch(y, [3, 4, 5], max_seeds=5)
    hit = np.flatnonzero((out.look[:, 1] == 0) & (out.last[:, 1] == 1))
    assert len(hit), "no such sweep"
    return y[hit[0]]


def test_the_line_shows_every_seed_that_ran_and_the_deciding_look_apart():
    y = _decided_before_its_last_look()
    rows = [cpu_row(arm, s, 5.0 + y[g, s]) for g, arm in enumerate(["baseline", "low_lr",
                                                                      "high_lr"])
            for s in range(5) if not (arm == "high_lr" and s == 4)]
    record = {"looks": [3, 4], "max_seeds": 5, "arms": ["baseline", "low_lr", "high_lr"]}
    df = pd.DataFrame(rows)
    ans = answer(Results(df, pd.DataFrame(), {}), record)
    r = next(r for r in ans.arms if r.arm == "high_lr")
    d = [y[2, s] - y[0, s] for s in range(4)]
    assert (r.n, r.decided_at) == (4, 3) and r.diff == pytest.approx(np.mean(d))
    assert r.ci[0] <= r.diff <= r.ci[1]
    assert r.decision_ci[0] > 0 or r.decision_ci[1] < 0  # the deciding test excludes 0
    line = next(x for x in answer_lines(ans) if x.startswith("high_lr"))
    assert "95% interval" in line and "n=4 seeds, decided at 3 (decision interval" in line


# --- confounds from the resolved configs -------------------------------------------------------

@pytest.fixture(scope="module")
def cpu_grid():
    precision = {"small_model": "bf16"}
    return pd.DataFrame([cpu_row(a, s, 5.0, precision=precision.get(a, "fp32"))
                         for a in ABLATIONS for s in range(3)])


def _by_what(found):
    return {c.what: c for c in found}


def test_short_seq_names_its_steps_and_the_direction_of_its_context(cpu_grid):
    c = _by_what(confounds(cpu_grid, "short_seq"))
    assert (c["optimizer steps"].arm, c["optimizer steps"].baseline) == ("160", "120")
    assert c["optimizer steps"].kind == FOLLOWS and "can favour the arm" in c[
        "optimizer steps"].direction
    assert (c["tokens per step"].arm, c["tokens per step"].baseline) == ("768", "1,024")
    assert (c["warmup steps"].arm, c["warmup steps"].baseline) == ("16", "12")
    assert c["context"].kind == OWN and "favours the baseline" in c["context"].direction
    assert c["batch_size"].kind == OWN and "tokens" not in c  # equal tokens


def test_each_arm_lists_what_differs_and_nothing_else(cpu_grid):
    high = confounds(cpu_grid, "high_lr")
    assert [(c.what, c.kind) for c in high] == [("lr", OWN)]
    big = _by_what(confounds(cpu_grid, "large_batch"))
    assert big["optimizer steps"].arm == "60" and "favour the baseline" in big[
        "optimizer steps"].direction
    assert {big["lr"].kind, big["batch_size"].kind} == {OWN}
    small = _by_what(confounds(cpu_grid, "small_model"))
    assert small["training FLOPs"].kind == FOLLOWS and small["training FLOPs"].arm == "0.35x"
    assert "fewer FLOPs favour the baseline" == small["training FLOPs"].direction
    assert small["parameters"].kind == FOLLOWS and small["d_model"].kind == OWN
    assert small["precision"].kind == ALSO and small["precision"].direction == ""
    assert small["optimizer steps"].arm == "80"


def test_an_unexplained_difference_is_listed_as_such(cpu_grid):
    """A setting that changes training is listed; one that cannot change the loss (MFU's
    denominator, which follows the precision) is not."""
    df = cpu_grid.copy()
    df.loc[df["ablation"] == "high_lr", "weight_decay"] = 0.0
    df.loc[df["ablation"] == "high_lr", "peak_flops"] = 5.8e11
    c = _by_what(confounds(df, "high_lr"))
    assert c["weight_decay"].kind == ALSO and c["lr"].kind == OWN and "peak_flops" not in c


def test_the_grid_scores_every_arm_on_the_shorter_contexts():
    spec = RunSpec(preset="cpu")
    assert dict(with_eval_contexts(spec, list(ABLATIONS)).overrides)["eval_contexts"] == "64"
    assert with_eval_contexts(spec, ["baseline", "high_lr"]) == spec
    mine = replace(spec, overrides=(("eval_contexts", "32"),))
    assert with_eval_contexts(mine, list(ABLATIONS)) == mine


def test_arms_with_other_contexts_are_also_compared_on_the_same_windows():
    rows = []
    for s in range(3):
        rows.append(cpu_row("baseline", s, 4.9 + 0.01 * s,
                            extra={context_metric(64): 5.30 + 0.01 * s}))
        rows.append(cpu_row("short_seq", s, 4.7 + 0.012 * s,
                            extra={context_metric(64): 5.20 + 0.012 * s}))
    ans = answer(Results(pd.DataFrame(rows), pd.DataFrame(), {}), None)
    r = ans.arms[0]
    assert r.same_windows.context == 64 and r.same_windows.n == 3
    assert r.same_windows.diff == pytest.approx(-0.1 + 0.002, abs=1e-9)
    text = "\n".join(answer_lines(ans))
    assert "on the same 64-token windows: -0.098 nats, 95% interval" in text
    assert "optimizer steps 160 vs 120" in text
