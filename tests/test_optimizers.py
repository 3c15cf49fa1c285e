"""The optimizer axis: each optimizer's first steps against updates computed by hand on a 2x3
matrix and a bias, Muon's split of the real model, every group's own lr on the schedule, the
grad scaler, schedule-free's averaged weights, resume, and bad values refused before compute."""

import importlib.util
import json
import math

import numpy as np
import pytest
import torch

from tune_ablations.spec.config import RunConfig, with_overrides
from tune_ablations.training.model import TransformerLM
from tune_ablations.training.optimizers import (
    NS_COEFFICIENTS,
    Muon,
    assign,
    build_optimizer,
    check_available,
    orthogonalize,
    set_evaluating,
)
from tune_ablations.training.step import build_step, train_step
from tune_ablations.training.trainer import train

W0 = np.array([[0.5, -0.2, 0.1], [0.3, 0.4, -0.6]])
B0 = np.array([0.1, -0.3])
G1 = np.array([[1.0, -2.0, 0.5], [0.25, 3.0, -1.0]])
G2 = np.array([[-0.5, 1.0, -0.04], [0.5, -0.1, 2.0]])
GB1, GB2 = np.array([0.5, -1.0]), np.array([-0.05, 0.2])
TIMING = {"tokens_per_s", "steps_per_s", "mfu", "train_time_s", "eval_time_s"}


class Tiny(torch.nn.Module):
    """A 2x3 hidden matrix and a bias of 2, named as the model names its block weights."""

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(3, 2)])
        with torch.no_grad():
            self.blocks[0].weight.copy_(torch.tensor(W0))
            self.blocks[0].bias.copy_(torch.tensor(B0))

    def now(self) -> tuple[np.ndarray, np.ndarray]:
        return (self.blocks[0].weight.detach().double().numpy(),
                self.blocks[0].bias.detach().double().numpy())


def _cfg(**optim) -> RunConfig:
    return with_overrides(RunConfig(), optim)


def _step(opt, model: Tiny, gw: np.ndarray, gb: np.ndarray) -> None:
    model.blocks[0].weight.grad = torch.tensor(gw, dtype=torch.float32)
    model.blocks[0].bias.grad = torch.tensor(gb, dtype=torch.float32)
    opt.step()


def _close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


def test_adamw_first_steps_by_hand():
    m = Tiny()
    opt = build_optimizer(m, _cfg(lr=0.01, weight_decay=0.1, beta1=0.9, beta2=0.95))
    _step(opt, m, G1, GB1)
    # Step 1: bias-corrected moments are g and g^2: the update is lr sign(g); the 2-D weight
    # decays by (1 - lr wd) = 0.999 first, the bias not at all.
    w1, b1 = W0 * 0.999 - 0.01 * np.sign(G1), B0 - 0.01 * np.sign(GB1)
    _close(m.now()[0], w1)
    _close(m.now()[1], b1)
    _step(opt, m, G2, GB2)
    for got, p, g1, g2, decay in zip(m.now(), (w1, b1), (G1, GB1), (G2, GB2), (0.999, 1.0)):
        mean = (0.9 * 0.1 * g1 + 0.1 * g2) / (1 - 0.9 ** 2)  # bias-corrected moments
        var = (0.95 * 0.05 * g1 ** 2 + 0.05 * g2 ** 2) / (1 - 0.95 ** 2)
        _close(got, p * decay - 0.01 * mean / (np.sqrt(var) + 1e-8))


def _quintic(s: float, steps: int = 5) -> float:
    a, b, c = NS_COEFFICIENTS
    for _ in range(steps):
        s = a * s + b * s ** 3 + c * s ** 5
    return s


def _ns_by_svd(g: np.ndarray) -> np.ndarray:
    """What Newton-Schulz does to g, computed apart: the quintic on each singular value of
    g / |g|_F, with g's singular vectors."""
    u, s, vt = np.linalg.svd(g, full_matrices=False)
    return u @ np.diag([_quintic(x) for x in s / np.linalg.norm(g)]) @ vt


@pytest.mark.parametrize("adjust, scale", [("match_rms_adamw", 0.2 * math.sqrt(3)),
                                           ("original", 1.0)])
def test_muon_first_steps_by_hand(adjust, scale):
    m = Tiny()
    cfg = _cfg(optimizer="muon", lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=True,
               muon_lr_adjust=adjust, adamw_lr_ratio=0.5)
    opt = build_optimizer(m, cfg)
    g = np.array([[3.0, 0.0, 0.0], [0.0, 4.0, 0.0]])  # singular values 3, 4; |g|_F = 5
    _step(opt, m, g, GB1)
    # The orthogonalised update keeps g's singular vectors and maps 0.6 and 0.8 through the
    # quintic five times (about 0.83 and 0.87, not exactly 1); its rate is lr x `scale` for a
    # (2, 3) matrix; weight decay at the unadjusted lr.
    o = np.array([[_quintic(0.6), 0, 0], [0, _quintic(0.8), 0]])
    assert 0.7 < o[0, 0] < 1.2 and 0.7 < o[1, 1] < 1.2
    w1 = W0 * (1 - 0.02 * 0.1) - 0.02 * scale * o
    _close(m.now()[0], w1)
    _close(m.now()[1], B0 - 0.01 * np.sign(GB1))  # the bias: AdamW at lr x adamw_lr_ratio
    _step(opt, m, G2, GB2)
    buf = 0.95 * (0.05 * g) + 0.05 * G2  # an EMA of the gradients
    update = G2 + 0.95 * (buf - G2)  # Nesterov: the gradient moved toward the EMA
    _close(m.now()[0], w1 * (1 - 0.02 * 0.1) - 0.02 * scale * _ns_by_svd(update))


def test_orthogonalize_handles_tall_matrices_and_matches_the_svd_form():
    g = torch.randn(7, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    np.testing.assert_allclose(orthogonalize(g, torch.float64).numpy(),
                               _ns_by_svd(g.numpy()), atol=1e-10)
    np.testing.assert_allclose(orthogonalize(g.T, torch.float64).numpy(),
                               _ns_by_svd(g.numpy()).T, atol=1e-10)


def test_fused_projections_are_orthogonalised_each_on_its_own():
    """A (6, 3) weight stored as three (2, 3) projections gets what three separate matrices
    would: the update does not depend on the storage layout."""
    gen = torch.Generator().manual_seed(1)
    fused = torch.nn.Parameter(torch.randn(6, 3, generator=gen))
    parts = [torch.nn.Parameter(fused.detach()[i:i + 2].clone()) for i in (0, 2, 4)]
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=True, adjust="match_rms_adamw")
    a, b = Muon([{"params": [fused], "rows": [2, 2, 2]}], **kw), Muon(parts, **kw)
    for _ in range(3):
        g = torch.randn(6, 3, generator=gen)
        fused.grad = g.clone()
        for i, p in enumerate(parts):
            p.grad = g[2 * i:2 * i + 2].clone()
        a.step()
        b.step()
    torch.testing.assert_close(fused.detach(), torch.cat([p.detach() for p in parts]),
                               rtol=0, atol=1e-6)
    g = torch.randn(6, 3, generator=gen)  # orthogonalised as one matrix: another update
    one, three = (torch.nn.Parameter(torch.zeros(6, 3)) for _ in range(2))
    one.grad, three.grad = g.clone(), g.clone()
    Muon([{"params": [one], "rows": [6]}], **kw).step()
    Muon([{"params": [three], "rows": [2, 2, 2]}], **kw).step()
    assert not torch.allclose(one, three, atol=1e-3)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon: torch >= 2.9")
@pytest.mark.parametrize("adjust", ["match_rms_adamw", "original"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_is_torch_optim_muon_step_for_step(adjust, nesterov):
    """In torch's bf16, ours and torch.optim.Muon give the same numbers (torch >= 2.9)."""
    gen = torch.Generator().manual_seed(2)
    ours = [torch.nn.Parameter(torch.randn(s, generator=gen)) for s in ((8, 5), (5, 8))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.9, nesterov=nesterov)
    a = Muon(ours, adjust=adjust, ns_dtype=torch.bfloat16, **kw)
    b = torch.optim.Muon(theirs, adjust_lr_fn=adjust, **kw)
    for _ in range(3):
        for p, q in zip(ours, theirs):
            p.grad = torch.randn(p.shape, generator=gen)
            q.grad = p.grad.clone()
        a.step()
        b.step()
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)


def test_lion_first_steps_by_hand():
    pytest.importorskip("lion_pytorch")
    m = Tiny()
    opt = build_optimizer(m, _cfg(optimizer="lion", lr=1e-3, weight_decay=0.1, beta1=0.9,
                                  beta2=0.99))
    _step(opt, m, G1, GB1)
    w1 = W0 * (1 - 1e-4) - 1e-3 * np.sign(G1)  # no momentum yet: the sign of the gradient
    _close(m.now()[0], w1)
    _step(opt, m, G2, GB2)
    c = 0.9 * (0.01 * G1) + 0.1 * G2  # beta1 interpolates momentum (0.01 g1) and gradient
    assert np.sign(c[0, 2]) != np.sign(G2[0, 2]) and np.sign(c[1, 1]) != np.sign(G2[1, 1])
    _close(m.now()[0], w1 * (1 - 1e-4) - 1e-3 * np.sign(c))


@pytest.mark.parametrize("nesterov", [True, False])
def test_sgd_momentum_first_steps_by_hand(nesterov):
    m = Tiny()
    opt = build_optimizer(m, _cfg(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=nesterov,
                                  weight_decay=0.1))
    _step(opt, m, G1, GB1)
    g = G1 + 0.1 * W0  # L2: wd x w joins the gradient (the bias has no decay)
    buf = g
    w1 = W0 - 0.1 * ((g + 0.9 * buf) if nesterov else buf)
    _close(m.now()[0], w1)
    _close(m.now()[1], B0 - 0.1 * (1.9 if nesterov else 1.0) * GB1)
    _step(opt, m, G2, GB2)
    g = G2 + 0.1 * w1
    buf = 0.9 * buf + g
    _close(m.now()[0], w1 - 0.1 * ((g + 0.9 * buf) if nesterov else buf))


def test_schedule_free_adamw_interpolation_by_hand():
    pytest.importorskip("schedulefree")
    m = Tiny()
    lr = 0.01
    opt = build_optimizer(m, _cfg(optimizer="schedule_free_adamw", lr=lr, weight_decay=0.1,
                                  beta1=0.9, beta2=0.95))
    _step(opt, m, G1, GB1)
    # Step 1 (average weight 1): y = z = x = w0 - lr (sign(g) + wd w0).
    x1 = W0 - lr * (np.sign(G1) + 0.1 * W0)
    _close(m.now()[0], x1)
    _step(opt, m, G2, GB2)
    n = G2 / (np.sqrt((0.95 * 0.05 * G1 ** 2 + 0.05 * G2 ** 2) / (1 - 0.95 ** 2)) + 1e-8)
    n = n + 0.1 * x1  # weight decay at the gradient point y (= x1 here)
    z2 = x1 - lr * n
    x2 = 0.5 * x1 + 0.5 * z2  # x: the running average of z (weights lr^2 and lr^2)
    y2 = 0.1 * z2 + 0.9 * x2  # y: where gradients are taken, (1 - beta1) z + beta1 x
    _close(m.now()[0], y2)
    set_evaluating(opt, True)
    _close(m.now()[0], x2)  # evaluation and checkpoints see the average
    set_evaluating(opt, False)
    _close(m.now()[0], y2)


def _tiny_model_cfg(**extra) -> RunConfig:
    return with_overrides(RunConfig(), {"d_model": 32, "n_heads": 2, "n_layers": 2,
                                        "d_ff": 64, **extra})


def test_muon_takes_the_hidden_matrices_of_the_real_model():
    cfg = _tiny_model_cfg(optimizer="muon", ffn="swiglu", adamw_lr_ratio=0.5, lr=0.01)
    model = TransformerLM(cfg.model, 100)
    roles = {k: [n for n, _ in v] for k, v in assign(model, cfg).items()}
    assert roles["hidden"] == [f"blocks.{i}.{w}.weight" for i in range(2)
                               for w in ("attn.qkv", "attn.proj", "ffn.up", "ffn.down")]
    assert roles["decay"] == ["embed.weight"]  # tied to the output: AdamW, decayed
    assert roles["no_decay"] == [f"blocks.{i}.norm{j}.weight" for i in range(2)
                                 for j in (1, 2)] + ["norm.weight"]
    muon, adamw = build_optimizer(model, cfg).optimizers
    assert muon.ns_dtype == torch.float32  # Newton-Schulz at the run's matmul precision
    assert build_optimizer(model, cfg, torch.bfloat16).optimizers[0].ns_dtype == torch.bfloat16
    rows = {tuple(g["rows"]): len(g["params"]) for g in muon.param_groups}
    assert rows == {(32, 32, 32): 2, (32,): 4, (64, 64): 2}  # q, k, v; proj, down; a, gate
    silu = _tiny_model_cfg(optimizer="muon")
    rows = {tuple(g["rows"]): len(g["params"]) for g in
            build_optimizer(TransformerLM(silu.model, 100), silu).optimizers[0].param_groups}
    assert rows == {(32, 32, 32): 2, (32,): 4, (64,): 2}  # SiLU's up is one matrix
    assert [(g["lr"], g["lr_scale"]) for g in adamw.param_groups] == [(0.005, 0.5)] * 2
    counted = sum(len(g["params"]) for g in build_optimizer(model, cfg).param_groups)
    assert counted == len(list(model.parameters()))
    plain = _tiny_model_cfg()
    assert assign(model, plain)["hidden"] == []  # every other optimizer: no Muon part


def test_the_schedule_and_tune_lr_move_every_groups_own_lr():
    from tune_ablations.spec.resolve import resolve
    from tune_ablations.spec.runspec import RunSpec

    spec = RunSpec(preset="tiny", overrides={"optimizer": "muon", "adamw_lr_ratio": 0.25})
    cfg = resolve(spec.with_params(lr=0.004))  # what --tune-lr's sweep varies: `lr`
    s = build_step(cfg, 100, torch.device("cpu"), amp=None)
    x = torch.randint(0, 100, (2, 8))
    train_step(s, x, x, 0.002)  # the schedule's rate for this step
    lrs = sorted({(g["lr"], g["lr_scale"]) for g in s.opt.param_groups})
    assert lrs == [(0.0005, 0.25), (0.002, 1.0)]


def test_dry_runs_show_the_optimizer_and_tune_its_lr(corpus_dir, tmp_path, capsys):
    """`grid --tune-lr` sweeps Muon's `lr` around its configured value, and `search --space
    lr` samples it, with the optimizer in every planned row."""
    from tune_ablations import grid, search
    from tune_ablations.results.lr_curves import lr_grid
    from tune_ablations.spec.names import LR_SWEEP_SEED

    common = ["--preset", "tiny", "--data", str(corpus_dir), "--set", "vocab_size=300",
              "optimizer=muon", "--storage", str(tmp_path), "--dry-run", "--json"]
    assert grid.main([*common, "--ablations", "baseline", "--tune-lr", "3"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["optimizer"] for r in rows} == {"muon"}
    swept = [r for r in rows if r["seed"] == LR_SWEEP_SEED]  # then the replicates' seed
    assert np.allclose(sorted(r["lr"] for r in swept), lr_grid(3e-3, 3, 4.0))
    assert search.main([*common, "--space", "lr"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert rows and all(r["optimizer"] == "muon" for r in rows)
    assert rows[0]["lr"] == 3e-3 and all(5e-5 <= r["lr"] <= 5e-3 for r in rows)  # lr.toml's


@pytest.mark.parametrize("optimizer", ["adamw", "muon", "lion", "schedule_free_adamw", "sgd"])
def test_the_grad_scaler_unscales_and_skips_for_every_optimizer(optimizer):
    """A scaled loss (fp16's path) steps exactly as the plain one, and a step whose gradients
    overflow is skipped and halves the scale."""
    if optimizer in ("lion", "schedule_free_adamw"):
        check_or_skip(optimizer)
    cfg = _tiny_model_cfg(optimizer=optimizer, lr=0.01)
    plain = build_step(cfg, 100, torch.device("cpu"), amp=None)
    scaled = build_step(cfg, 100, torch.device("cpu"), amp=None)
    scaled.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x = torch.randint(0, 100, (2, 8), generator=gen)
        train_step(plain, x, x, 0.01)
        train_step(scaled, x, x, 0.01)
    for p, q in zip(plain.model.parameters(), scaled.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)
    before = [p.detach().clone() for p in scaled.model.parameters()]
    hook = scaled.model.embed.weight.register_hook(lambda g: g * math.inf)
    train_step(scaled, x, x, 0.01)
    hook.remove()
    assert all(torch.equal(a, b) for a, b in zip(before, scaled.model.parameters()))
    assert scaled.scaler.get_scale() == 2.0 ** 11


def check_or_skip(optimizer: str) -> None:
    try:
        check_available(_cfg(optimizer=optimizer).optim)
    except ValueError as exc:
        pytest.skip(str(exc))


SHORT = {"max_steps": 18, "eval_every": 6, "warmup_steps": 2, "precision": "fp32",
         "diverge_margin": 0}  # 18 tiny steps do not get 1 nat below the unigram loss
OPTIMIZER_RUNS = {"muon": {"lr": 3e-3}, "lion": {"lr": 3e-3, "beta2": 0.99},
                  "schedule_free_adamw": {"lr": 3e-3}, "sgd": {"lr": 0.3}}


@pytest.mark.parametrize("optimizer", list(OPTIMIZER_RUNS))
def test_resume_equals_uninterrupted_for_every_optimizer(optimizer, tiny_cfg, tiny_data,
                                                         tmp_path):
    check_or_skip(optimizer)
    cfg = with_overrides(tiny_cfg, {"optimizer": optimizer, **OPTIMIZER_RUNS[optimizer],
                                    **SHORT})
    full = train(cfg, data=tiny_data)

    def stop_at_12(metrics, save):
        if metrics["step"] == 12:
            save(tmp_path)
            return True
        return None

    assert train(cfg, data=tiny_data, report=stop_at_12)["steps"] == 12
    resumed = train(cfg, data=tiny_data, resume_from=tmp_path)
    strip = [[{k: v for k, v in h.items() if k not in TIMING} for h in r["history"]]
             for r in (full, resumed)]
    assert strip[0] == strip[1] and resumed["resumed_from"] == [12]
    assert resumed["final"] == full["final"] and resumed["samples"] == full["samples"]
    assert full["history"][-1]["val_loss"] < full["history"][0]["val_loss"]  # it learns
    assert full["config"]["optimizer"] == optimizer


def test_schedule_free_checkpoints_hold_the_evaluated_weights(tiny_cfg, tiny_data, tmp_path):
    """Evaluation and checkpoints (and so exports) use the averaged weights x: a checkpoint's
    model scores exactly the reported val_loss; the training point y scores otherwise."""
    from tune_ablations.training.data import val_part, val_windows
    from tune_ablations.training.evaluation import evaluate
    from tune_ablations.training.step import load_checkpoint

    check_or_skip("schedule_free_adamw")
    cfg = with_overrides(tiny_cfg, {"optimizer": "schedule_free_adamw", "lr": 3e-3, **SHORT})
    reported = {}

    def save_at_12(metrics, save):
        reported[metrics["step"]] = metrics["val_loss"]
        if metrics["step"] == 12:
            save(tmp_path)
            return True
        return None

    train(cfg, data=tiny_data, report=save_at_12)
    ck = load_checkpoint(tmp_path)
    windows = val_windows(val_part(tiny_data.val, tiny_data.eos_id), cfg.data.seq_len,
                          cfg.eval.eval_tokens)
    s = build_step(cfg, tiny_data.vocab_size, torch.device("cpu"), amp=None)
    s.model.load_state_dict(ck["model"])
    s.opt.load_state_dict(ck["optimizer"])

    def score() -> float:
        return evaluate(s.model, windows, torch.from_numpy(tiny_data.token_bytes),
                        cfg.data.batch_size, torch.device("cpu"), None)["val_loss"]

    assert score() == pytest.approx(reported[12], abs=1e-6)
    set_evaluating(s.opt, False)  # the training point y
    assert abs(score() - reported[12]) > 1e-3


def test_a_schedule_free_probe_scores_the_averaged_weights(tiny_cfg, tiny_data):
    """A cooldown probe of a schedule-free wsd run equals the run of that budget, which
    evaluates its averaged weights; the main run is unchanged by the probe."""
    check_or_skip("schedule_free_adamw")
    wsd = with_overrides(tiny_cfg, {"optimizer": "schedule_free_adamw", "lr": 3e-3,
                                    "schedule": "wsd", "decay_fraction": 0.25, "max_steps": 24,
                                    "eval_every": 24, "text_samples": 0, "precision": "fp32"})
    budget = 12 * wsd.tokens_per_step
    probed = train(with_overrides(wsd, {"probe_tokens": str(budget)}), data=tiny_data)
    plain = train(wsd, data=tiny_data)
    assert probed["final"] == plain["final"]
    short = train(with_overrides(wsd, {"max_steps": 12, "eval_every": 12}), data=tiny_data)
    assert probed["probes"][0]["val_loss"] == pytest.approx(short["final"]["val_loss"],
                                                            abs=1e-6)


@pytest.mark.parametrize("overrides, message", [
    ({"optimizer": "adam"}, "optimizer='adam' must be one of 'adamw', 'muon', 'lion', "
                            "'schedule_free_adamw', 'sgd'"),
    ({"adamw_lr_ratio": 0}, "adamw_lr_ratio=0 must be > 0"),
    ({"muon_lr_adjust": "moonlight"}, "muon_lr_adjust='moonlight' must be one of "
                                      "'match_rms_adamw', 'original'"),
    ({"momentum": 1.0}, "momentum=1.0 must be in [0, 1)"),
    ({"nesterov": "yes"}, "nesterov='yes' must be true or false"),
    ({"optimizer": "sgd", "momentum": 0}, "nesterov=True needs momentum > 0 for "
                                          "optimizer='sgd' (got momentum=0)"),
    ({"optimizer": "schedule_free_adamw", "beta1": 0.0}, "beta1=0.0 must be > 0 for "
                                                         "optimizer='schedule_free_adamw'"),
])
def test_bad_values_are_rejected_with_their_rule(overrides, message):
    with pytest.raises(ValueError) as err:
        with_overrides(RunConfig(), overrides)
    assert message in str(err.value)


def test_bad_values_and_missing_packages_fail_in_one_line_before_compute(monkeypatch, capsys,
                                                                          corpus_dir, tmp_path):
    from tune_ablations import grid
    from tune_ablations.train import main

    assert main(["--smoke-test", "--set", "optimizer=adam"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "optimizer='adam' must be one of" in err
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in (
        "lion_pytorch", "schedulefree") else real(name, *a))
    cache = tmp_path / "cache"
    monkeypatch.setenv("TUNE_ABLATIONS_CACHE", str(cache))
    assert main(["--smoke-test", "--set", "optimizer=lion"]) == 2
    err = capsys.readouterr().err
    assert err == ("error: optimizer='lion' needs the package 'lion-pytorch', which is not "
                   "installed: pip install 'tune-ablations[optimizers]' (or pip install "
                   "lion-pytorch)\n")
    assert not cache.exists()  # no corpus read, nothing tokenized
    assert grid.main(["--preset", "tiny", "--data", str(corpus_dir), "--set",
                      "optimizer=schedule_free_adamw", "--storage", str(tmp_path / "r"),
                      "--name", "sf", "--cache-dir", str(cache)]) == 2
    assert "needs the package 'schedulefree'" in capsys.readouterr().err
    assert not cache.exists() and not (tmp_path / "r" / "sf").exists()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
@pytest.mark.parametrize("optimizer", ["adamw", "muon", "lion", "schedule_free_adamw", "sgd"])
def test_every_optimizer_trains_on_a_gpu(optimizer, precision, tiny_cfg, tiny_data):
    """On CUDA, under bf16 autocast and under fp16 with its grad scaler: Muon orthogonalises
    in the run's dtype, every optimizer completes and learns."""
    check_or_skip(optimizer)
    cfg = with_overrides(tiny_cfg, {"device": "cuda", "precision": precision,
                                    "optimizer": optimizer, **OPTIMIZER_RUNS.get(optimizer, {}),
                                    **{k: v for k, v in SHORT.items() if k != "precision"}})
    r = train(cfg, data=tiny_data)
    assert r["status"] == "completed" and r["device"].startswith("cuda")
    assert r["history"][-1]["val_loss"] < r["history"][0]["val_loss"]
    if optimizer == "muon":
        amp = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        s = build_step(cfg, 100, torch.device("cuda"), amp=amp)
        assert s.opt.optimizers[0].ns_dtype == amp
