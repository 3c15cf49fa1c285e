import json
import math
from dataclasses import replace

import numpy as np
import pytest

from tune_ablations.spec.config import with_overrides
from tune_ablations.spec.names import DIVERGED_LOSS, REPORT_KEYS
from tune_ablations.spec.presets import build_ablation
from tune_ablations.train import main
from tune_ablations.training.step import lr_at
from tune_ablations.training.trainer import StopTraining, train

TIMING = {"tokens_per_s", "steps_per_s", "mfu", "train_time_s", "eval_time_s"}


def _strip(history):
    return [{k: v for k, v in h.items() if k not in TIMING} for h in history]


def test_lr_schedule_boundaries():
    cfg = build_ablation("baseline", "seed", warmup_steps=100, max_steps=1000, lr=1e-3)
    assert lr_at(0, cfg) == pytest.approx(1e-5)  # warmup starts at peak / warmup
    assert lr_at(49, cfg) == pytest.approx(0.5e-3)
    assert lr_at(99, cfg) == pytest.approx(1e-3)  # end of warmup: peak
    assert lr_at(100, cfg) == pytest.approx(1e-3)  # cosine starts at peak
    assert lr_at(550, cfg) == pytest.approx(0.55e-3)  # half-way: mean of peak and floor
    assert lr_at(1000, cfg) == pytest.approx(1e-4)  # the floor: 10% of peak
    assert lr_at(5000, cfg) == pytest.approx(1e-4)
    lrs = [lr_at(s, cfg) for s in range(100, 1000)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    ref = replace(cfg, optim=replace(cfg.optim, warmup_steps=0))  # the reference: no warmup
    assert lr_at(0, ref) == pytest.approx(1e-3)


def test_loss_falls_below_unigram_entropy_on_embedded_corpus():
    from tune_ablations.training.data import prepare_data

    cfg = build_ablation("baseline", "tiny", max_steps=400, eval_every=100, d_model=64,
                         n_heads=4, d_ff=128, text_samples=0)
    data = prepare_data(cfg.data, log=lambda s: None)
    counts = np.bincount(np.asarray(data.train), minlength=data.vocab_size).astype(float)
    p = counts[counts > 0] / counts.sum()
    unigram = float(-(p * np.log(p)).sum())
    result = train(cfg, data=data, threads=2)
    assert result["status"] == "completed"
    assert result["final"]["val_loss"] < unigram - 0.5
    losses = [h["val_loss"] for h in result["history"]]
    assert losses[-1] < losses[0]


def test_same_seed_same_numbers(tiny_cfg, tiny_data):
    a = train(tiny_cfg, data=tiny_data)
    b = train(tiny_cfg, data=tiny_data)
    assert _strip(a["history"]) == _strip(b["history"])
    assert a["samples"] == b["samples"] and a["samples"]
    c = train(with_overrides(tiny_cfg, {"seed": 1}), data=tiny_data)
    assert _strip(c["history"]) != _strip(a["history"])


def test_resume_equals_uninterrupted(tiny_cfg, tiny_data, tmp_path):
    full = train(tiny_cfg, data=tiny_data)

    def stop_at_20(metrics, save):
        if metrics["step"] == 20:
            save(tmp_path)
            return True
        return None

    part = train(tiny_cfg, data=tiny_data, report=stop_at_20)
    assert part["status"] == "stopped" and part["steps"] == 20
    resumed = train(tiny_cfg, data=tiny_data, resume_from=tmp_path)
    assert resumed["resumed_from"] == [20]
    assert _strip(resumed["history"]) == _strip(full["history"])
    assert resumed["final"] == full["final"] and resumed["samples"] == full["samples"]


def test_divergence_is_a_status_not_an_exception(tiny_cfg, tiny_data):
    seen = []
    cfg = with_overrides(tiny_cfg, {"lr": 10.0, "warmup_steps": 0, "grad_clip": 0.0})
    result = train(cfg, data=tiny_data, report=lambda m, s: seen.append(m))
    assert result["status"] == "diverged"
    assert result["steps"] < cfg.steps
    last = seen[-1]
    assert last["diverged"] is True and last["val_loss"] == DIVERGED_LOSS
    assert all(math.isfinite(v) for m in seen for v in m.values() if isinstance(v, float))


def test_report_gets_exactly_the_documented_keys(tiny_cfg, tiny_data):
    seen = []
    train(tiny_cfg, data=tiny_data, report=lambda m, s: seen.append(m))
    assert [m["step"] for m in seen] == [10, 20, 30]
    for m in seen:
        assert tuple(m) == REPORT_KEYS
    assert [m["status"] for m in seen] == ["running", "running", "completed"]
    assert [m["tokens_seen"] for m in seen] == [10 * tiny_cfg.tokens_per_step * i
                                                for i in (1, 2, 3)]


def test_stop_signal(tiny_cfg, tiny_data):
    def stop(m, s):
        raise StopTraining

    result = train(tiny_cfg, data=tiny_data, report=stop)
    assert result["status"] == "stopped" and result["steps"] == 10


def test_metrics_are_consistent_and_timing_honest(tiny_cfg, tiny_data):
    r = train(tiny_cfg, data=tiny_data)
    f = r["final"]
    assert f["val_ppl"] == pytest.approx(math.exp(f["val_loss"]))
    assert 0 <= f["val_acc"] <= f["val_top5"] <= 1
    assert 0 < f["val_confidence"] <= 1 and f["val_entropy"] > 0 and f["val_bpb"] > 0
    assert r["train_time_s"] + r["eval_time_s"] <= r["wall_time_s"]
    assert r["tokens_per_s"] == pytest.approx(r["tokens_seen"] / r["train_time_s"])
    assert r["mfu"] == pytest.approx(r["tokens_per_s"] * r["flops_per_token"] / r["peak_flops"])
    assert r["epochs"] == pytest.approx(r["tokens_seen"] / len(tiny_data.train))
    assert r["best"]["val_loss"] <= f["val_loss"]
    assert r["params"] > r["non_embedding_params"] > 0


def test_cli_smoke_and_bad_input(tmp_path, corpus_dir, capsys):
    out = tmp_path / "r.json"
    assert main(["--smoke-test", "--out", str(out), "--set", f"corpus={corpus_dir}",
                 "vocab_size=300"]) == 0
    result = json.loads(out.read_text())
    assert result["status"] == "completed" and len(result["history"]) == 3
    out = capsys.readouterr()
    assert "event=end status=completed" in out.out and "val_loss=" in out.err
    assert main(["--smoke-test", "--set", "lr=-1"]) == 2
    assert "lr=-1 must be > 0" in capsys.readouterr().err


def test_divergence_is_caught_before_nan():
    """Runaway losses are `diverged` while still finite: far above the unigram reference after
    warmup (twice in a row), or far above the run's best."""
    from tune_ablations.training.trainer import TrainState, divergence

    cfg = build_ablation("baseline", "cpu", max_steps=240, warmup_steps=12)
    ref = {"unigram_val_loss": 6.0}
    st = TrainState(step=100, initial_loss=7.0, best_train_loss=5.0)
    assert divergence(cfg, st, 5.5, {**ref, "val_loss": 5.5}) is None
    assert divergence(cfg, st, 6.9, {**ref, "val_loss": 7.2}) is None  # once: not yet
    why = divergence(cfg, st, 6.9, {**ref, "val_loss": 7.3})
    assert why is not None and "unigram" in why
    early = TrainState(step=10, initial_loss=7.0, best_train_loss=7.0)
    for _ in range(3):  # before warmup and a quarter of the run: learning, not diverging
        assert divergence(cfg, early, 7.5, {**ref, "val_loss": 7.5}) is None
    climbing = TrainState(step=150, initial_loss=7.0, best_train_loss=3.0)
    why = divergence(cfg, climbing, 5.2, {**ref, "val_loss": 5.0})
    assert why is not None and "climbed" in why
    assert divergence(cfg, TrainState(initial_loss=7.0), float("nan"), None) == "non-finite loss"
    off = with_overrides(cfg, {"diverge_margin": 0.0, "diverge_climb": 0.0})
    st2 = TrainState(step=150, initial_loss=7.0, best_train_loss=3.0)
    for _ in range(3):
        assert divergence(off, st2, 6.5, {**ref, "val_loss": 7.5}) is None


def test_unigram_reference_known_answer():
    import numpy as np
    import torch

    from tune_ablations.training.evaluation import unigram_reference

    train_tokens = np.array([0, 0, 0, 1], dtype=np.uint16)  # add-half: 3.5, 1.5, 0.5 of 5.5
    windows = torch.tensor([[2, 0, 1]])  # targets 0 and 1
    bytes_ = np.array([1, 2, 3])
    got = unigram_reference(train_tokens, windows, bytes_, vocab_size=3)
    nll = -(math.log(3.5 / 5.5) + math.log(1.5 / 5.5))
    assert got["unigram_val_loss"] == pytest.approx(nll / 2)
    assert got["unigram_val_bpb"] == pytest.approx(nll / math.log(2) / 3)


def test_every_report_carries_eval_noise_and_the_reference(tiny_cfg, tiny_data):
    seen = []
    train(tiny_cfg, data=tiny_data, report=lambda m, s: seen.append(m))
    for m in seen:
        assert m["val_loss_se"] > 0 and m["unigram_val_loss"] > 0 and m["unigram_val_bpb"] > 0
    assert len({m["unigram_val_loss"] for m in seen}) == 1  # the same eval tokens every time


def test_mfu_above_one_is_reported_as_a_wrong_denominator(tiny_cfg, tiny_data):
    r = train(with_overrides(tiny_cfg, {"peak_flops": 1.0}), data=tiny_data)  # absurd peak
    assert math.isnan(r["mfu"]) and "denominator is wrong" in r["mfu_note"]


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant", "wsd"])
def test_every_schedule_at_its_boundaries(schedule):
    cfg = build_ablation("baseline", "cpu", schedule=schedule, max_steps=100, warmup_steps=10,
                         decay_fraction=0.2, min_lr_ratio=0.1, lr=1.0)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)  # the peak right after warmup
    end = {"cosine": 0.1, "linear": 0.1, "constant": 1.0, "wsd": 0.1}[schedule]
    assert lr_at(100, cfg) == pytest.approx(end)
    mid = {"cosine": 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 45 / 90)),
           "linear": 0.1 + 0.9 * (1 - 45 / 90), "constant": 1.0, "wsd": 1.0}[schedule]
    assert lr_at(55, cfg) == pytest.approx(mid)
    if schedule == "wsd":  # stable until 80, then 1 - sqrt over the last 20 steps
        assert lr_at(79, cfg) == 1.0
        assert lr_at(85, cfg) == pytest.approx(0.1 + 0.9 * (1 - math.sqrt(5 / 20)))
        lin = with_overrides(cfg, {"decay_shape": "linear"})
        assert lr_at(90, lin) == pytest.approx(0.1 + 0.9 * 0.5)
    lrs = [lr_at(s, cfg) for s in range(10, 100)]
    assert all(a >= b - 1e-12 for a, b in zip(lrs, lrs[1:]))  # never rises after warmup


def test_cooldown_probe_equals_a_run_of_that_budget(tiny_cfg, tiny_data):
    """A probe branched from the stable phase gives the loss of a wsd run of that budget,
    exactly; the main run is unchanged by it; its compute is counted."""
    wsd = with_overrides(tiny_cfg, {"schedule": "wsd", "decay_fraction": 0.25,
                                    "max_steps": 40, "eval_every": 40, "text_samples": 0})
    budget = 20 * wsd.tokens_per_step
    probed = train(with_overrides(wsd, {"probe_tokens": str(budget)}), data=tiny_data)
    plain = train(wsd, data=tiny_data)
    assert _strip(probed["history"]) == _strip(plain["history"])  # the main run is unchanged
    (p,) = probed["probes"]
    assert (p["budget_tokens"], p["branch_step"], p["cooldown_steps"]) == (budget, 15, 5)
    short = train(with_overrides(wsd, {"max_steps": 20, "eval_every": 20}), data=tiny_data)
    assert p["val_loss"] == pytest.approx(short["final"]["val_loss"], abs=1e-6)
    assert probed["probe_tokens_trained"] == 5 * wsd.tokens_per_step
    assert probed["probe_time_s"] > 0 and probed["train_time_s"] > 0
    with pytest.raises(ValueError, match="needs a schedule that decays .* got 'constant'"):
        with_overrides(tiny_cfg, {"probe_tokens": str(budget), "schedule": "constant"})


def test_a_probe_equals_the_run_that_tokens_b_trains(tmp_path, corpus_dir):
    """Through the command line: the probe at B of a longer wsd run equals what
    `train --tokens B --set schedule=wsd` trains (both warm up over the same tokens)."""
    common = ["--preset", "tiny", "--data", str(corpus_dir), "--set", "vocab_size=300",
              "schedule=wsd", "decay_fraction=0.25", "text_samples=0"]
    budget = 24 * 4 * 32  # 24 steps of the tiny preset
    assert main([*common, "probe_tokens=" + str(budget), "--max-steps", "60",
                 "--out", str(tmp_path / "long.json")]) == 0
    assert main([*common, "--tokens", str(budget), "--out", str(tmp_path / "short.json")]) == 0
    long, short = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("long", "short"))
    assert long["config"]["warmup_steps"] == short["config"]["warmup_steps"] == 3
    (probe,) = long["probes"]
    assert probe["val_loss"] == pytest.approx(short["final"]["val_loss"], abs=1e-6)


def test_a_probe_restores_the_grad_scaler(tiny_cfg, tiny_data, monkeypatch, tmp_path):
    """fp16 runs scale their loss, and the scale moves with every step; a probe's steps must
    not move the main run's scaler. With growth at every step, a probe that forgot to restore
    it would leave the run with a larger scale than a run without probes."""
    import torch

    from tune_ablations.training.step import load_checkpoint

    class Growing(torch.amp.GradScaler):
        def __init__(self, *a, **k):
            super().__init__(*a, **{**k, "growth_interval": 1, "init_scale": 1.0})

    monkeypatch.setattr(torch.amp, "GradScaler", Growing)
    fp16 = with_overrides(tiny_cfg, {  # minuscule: fp16 on a CPU has no fast kernels
        "schedule": "wsd", "decay_fraction": 0.5, "max_steps": 8, "eval_every": 8,
        "warmup_steps": 1, "text_samples": 0, "precision": "fp16", "device": "cpu",
        "d_model": 16, "n_layers": 1, "d_ff": 16, "seq_len": 8, "batch_size": 2,
        "eval_tokens": 64})

    def final_scaler(cfg, name):
        def report(m, save):
            save(tmp_path / name)

        train(cfg, data=tiny_data, report=report)
        return load_checkpoint(tmp_path / name)["scaler"]

    plain = final_scaler(fp16, "plain")
    probed = final_scaler(with_overrides(fp16, {"probe_tokens": str(4 * fp16.tokens_per_step)}),
                          "probed")
    assert plain["scale"] == 2.0 ** 8  # it grew at each of the 8 steps
    assert probed == plain


def test_under_cosine_a_probe_is_a_decay_branch(tiny_cfg, tiny_data, monkeypatch):
    """Cosine: the probe at B branches at B x (1 - decay_fraction), decays from the lr the run
    has there to the floor (sqrt shape), leaves the run unchanged, and is what the rung ranks."""
    from tune_ablations.training import cooldown

    cos = with_overrides(tiny_cfg, {"max_steps": 40, "eval_every": 10, "text_samples": 0})
    assert cos.optim.schedule == "cosine"
    budget = 20 * cos.tokens_per_step
    seen, lrs = [], []
    real = cooldown.train_step
    monkeypatch.setattr(cooldown, "train_step",
                        lambda s, x, y, lr: (lrs.append(lr), real(s, x, y, lr))[1])
    probed = train(with_overrides(cos, {"probe_tokens": str(budget)}), data=tiny_data,
                   report=lambda m, save: seen.append(m))
    (p,) = probed["probes"]
    assert (p["branch_step"], p["cooldown_steps"]) == (16, 4)
    floor = cos.optim.lr * cos.optim.min_lr_ratio
    peak = lr_at(16, cos)
    assert lrs == pytest.approx([floor + (peak - floor) * (1 - math.sqrt(i / 4))
                                 for i in range(4)])
    plain = train(cos, data=tiny_data)
    def without(history):
        return [{k: v for k, v in h.items() if k != "rank_loss"} for h in _strip(history)]

    assert without(probed["history"]) == without(plain["history"])  # the run is unchanged
    by_step = {m["step"]: m for m in seen}
    assert by_step[20]["rank_loss"] == p["val_loss"] != by_step[20]["val_loss"]


def test_rank_loss_is_the_probe_at_its_milestone(tiny_cfg, tiny_data):
    wsd = with_overrides(tiny_cfg, {"schedule": "wsd", "decay_fraction": 0.25,
                                    "max_steps": 40, "eval_every": 10, "text_samples": 0})
    seen = []
    r = train(with_overrides(wsd, {"probe_tokens": str(20 * wsd.tokens_per_step)}),
              data=tiny_data, report=lambda m, s: seen.append(m))
    by_step = {m["step"]: m for m in seen}
    assert by_step[20]["rank_loss"] == r["probes"][0]["val_loss"] != by_step[20]["val_loss"]
    for step in (10, 30, 40):
        assert by_step[step]["rank_loss"] == by_step[step]["val_loss"]


def test_the_last_evaluation_also_scores_the_shorter_contexts(tiny_cfg, tiny_data):
    """`eval_contexts`: at its last evaluation a run is also scored on the windows of each
    listed context up to its own (its own windows for its own seq_len); a run trained on the
    shorter context is scored on exactly those windows as its val_loss."""
    cfg = with_overrides(tiny_cfg, {"eval_contexts": "8,16,32,64", "max_steps": 10,
                                    "eval_every": 5, "text_samples": 0,
                                    "diverge_margin": 0.0})  # seq_len 32; 10 steps learn little
    seen = []
    out = train(cfg, data=tiny_data, report=lambda m, s: seen.append(m))
    assert all("val_loss@ctx8" not in m for m in seen[:-1])
    last = seen[-1]
    assert last["val_loss@ctx32"] == last["val_loss"] and "val_loss@ctx64" not in last
    assert all(0 < last[f"val_loss@ctx{c}"] < 10 for c in (8, 16))
    windows = out["context_window_losses"]
    assert sorted(windows, key=int) == ["8", "16", "32"]
    assert windows["32"] == out["window_losses"]
    assert len(windows["16"]) == cfg.eval.eval_tokens // 16
    short = train(with_overrides(cfg, {"seq_len": 16}), data=tiny_data)
    assert short["final"]["val_loss"] == pytest.approx(
        np.mean(short["context_window_losses"]["16"]))
    assert len(short["context_window_losses"]["16"]) == len(windows["16"])


def test_a_compiled_step_is_not_built_again_inside_the_training_clock(tiny_cfg, tiny_data):
    """The compiled graphs are built before the clock starts (forward and backward, at the
    training shape); training's own batches must reuse them. The warm-up passed one tensor as
    both inputs and targets (dynamo guards on aliasing) and batches were views into the
    (B, T + 1) windows (other strides), so torch.compile built its graphs again at the first
    timed step (a whole train() at d256 ran 0.86x its eager speed)."""
    import torch
    from torch._dynamo.utils import counters

    from tune_ablations.training.data import sample_batch
    from tune_ablations.training.step import build_step, train_step

    s = build_step(tiny_cfg, tiny_data.vocab_size, torch.device("cpu"), amp=None,
                   compiled=True)
    assert s.compiled
    graphs = counters["stats"]["unique_graphs"]
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        x, y = sample_batch(tiny_data.train, tiny_cfg.data.batch_size, tiny_cfg.data.seq_len, gen)
        loss, _ = train_step(s, x, y, 1e-3)
        assert math.isfinite(loss.item())
    assert counters["stats"]["unique_graphs"] == graphs  # no graph built inside the clock
