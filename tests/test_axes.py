"""The architecture axes (issue 33): known answers for each, and counts against the built
model."""

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from tune_ablations.spec.config import ModelConfig, RunConfig
from tune_ablations.spec.flops import attended_keys, count_params, flops_per_token
from tune_ablations.training.model import (
    Attention,
    FeedForward,
    MoE,
    TransformerLM,
    causal_attention,
    causal_mask,
    load_balance_loss,
    rope_tables,
)

CFG = ModelConfig(d_model=32, n_heads=4, n_layers=2, d_ff=48, max_seq_len=64)
AXES = {
    "gelu": {"ffn": "gelu"}, "relu2": {"ffn": "relu2"}, "swiglu": {"ffn": "swiglu"},
    "geglu": {"ffn": "geglu"}, "layernorm": {"norm": "layernorm"},
    "gqa": {"n_kv_heads": 2}, "mqa": {"n_kv_heads": 1}, "qk_norm": {"qk_norm": True},
    "qk_layernorm": {"qk_norm": True, "norm": "layernorm"}, "window": {"sliding_window": 5},
    "untied": {"tie_embeddings": False}, "z_loss": {"z_loss": 1e-4},
    "moe": {"n_experts": 4, "experts_per_token": 2},
    "moe_top1": {"n_experts": 3, "experts_per_token": 1, "ffn": "swiglu"},
}


def _cfg(**kw) -> ModelConfig:
    return dataclasses.replace(CFG, **kw)


def test_one_expert_top1_equals_the_dense_ffn():
    torch.manual_seed(0)
    for ffn in ("silu", "swiglu"):
        moe = MoE(_cfg(n_experts=1, ffn=ffn))
        dense = FeedForward(_cfg(ffn=ffn))
        dense.load_state_dict(moe.experts[0].state_dict())
        x = torch.randn(3, 7, 32)
        assert torch.allclose(moe(x), dense(x), atol=1e-6, rtol=0)


def test_moe_output_is_the_gate_weighted_sum_of_the_chosen_experts():
    torch.manual_seed(0)
    moe = MoE(_cfg(n_experts=4, experts_per_token=2))
    x = torch.randn(2, 5, 32)
    flat = x.reshape(-1, 32)
    probs = moe.router(flat).softmax(-1)
    want = torch.zeros_like(flat)
    for i in range(len(flat)):  # token by token, the definition
        top = probs[i].topk(2)
        for g, e in zip(top.values / top.values.sum(), top.indices):
            want[i] += g * moe.experts[int(e)](flat[i:i + 1])[0]
    assert torch.allclose(moe(x).reshape(-1, 32), want, atol=1e-5)
    # top-1 keeps its probability as the gate (Switch), so the router learns from the loss
    moe1 = MoE(_cfg(n_experts=4, experts_per_token=1))
    gates, _, logits = moe1.route(flat)
    assert torch.allclose(gates[:, 0], logits.softmax(-1).max(-1).values)


def test_load_balance_loss_is_minimal_for_uniform_routing():
    n, N = 4, 64
    uniform = torch.zeros(N, n)
    chosen = torch.arange(N).remainder(n)[:, None]  # every expert gets N / n tokens
    assert load_balance_loss(uniform, chosen, n).item() == pytest.approx(1.0)
    torch.manual_seed(0)
    for scale in (0.5, 2.0, 8.0):
        logits = scale * torch.randn(N, n) + torch.tensor([1.0, 0.0, 0.0, -1.0])
        top = logits.topk(1).indices
        assert load_balance_loss(logits, top, n).item() > 1.0
    collapsed = torch.tensor([[5.0, 0, 0, 0]]).expand(N, n)
    assert load_balance_loss(collapsed, torch.zeros(N, 1, dtype=torch.long), n).item() == (
        pytest.approx(n * collapsed.softmax(-1)[0, 0].item()))


def test_moe_adds_its_aux_losses_in_training_only():
    torch.manual_seed(0)
    cfg = _cfg(n_experts=4, experts_per_token=2, moe_aux_loss=0.5, router_z_loss=0.25)
    moe = MoE(cfg)
    x = torch.randn(2, 6, 32)
    aux: list = []
    moe(x, aux)
    logits = moe.router(x.reshape(-1, 32))
    chosen = logits.softmax(-1).topk(2).indices
    want = 0.5 * load_balance_loss(logits, chosen, 4) + 0.25 * logits.logsumexp(-1).square().mean()
    assert len(aux) == 1 and aux[0].item() == pytest.approx(want.item(), rel=1e-5)
    moe.eval()
    moe(x, aux)
    assert len(aux) == 1


def test_window_at_least_the_sequence_equals_full_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 8) for _ in range(3))
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    for w in (9, 20):
        assert torch.equal(causal_attention(q, k, v, window=w), full)
    low = [t.bfloat16() for t in (q, k, v)]  # the explicit bf16 path
    assert torch.equal(causal_attention(*low, window=9), causal_attention(*low))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_no_token_attends_beyond_its_window(dtype):
    torch.manual_seed(0)
    w, T = 3, 10
    q, k, v = (torch.randn(1, 2, T, 8, dtype=dtype) for _ in range(3))
    out = causal_attention(q, k, v, window=w)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 4], v2[:, :, 4] = 5.0, -5.0  # perturb position 4
    out2 = causal_attention(q, k2, v2, window=w)
    seen = torch.tensor([4 <= i < 4 + w for i in range(T)])  # queries 4, 5, 6 see key 4
    assert torch.equal(out[:, :, ~seen], out2[:, :, ~seen])
    assert not torch.allclose(out[:, :, seen].float(), out2[:, :, seen].float())
    # Against the definition: softmax over the last w keys only.
    s = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(8)
    s = s.masked_fill(~causal_mask(T, window=w), float("-inf"))
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    assert torch.allclose(out.float(), s.softmax(-1) @ v.float(), atol=tol)


def test_window_in_the_whole_model_hides_tokens_beyond_it():
    torch.manual_seed(0)
    m = TransformerLM(_cfg(sliding_window=3, n_layers=1), 50).eval()
    x = torch.randint(0, 50, (1, 12))
    y = x.clone()
    y[0, 2] = (y[0, 2] + 1) % 50
    a, b = m(x), m(y)
    assert torch.equal(a[:, 5:], b[:, 5:])  # one layer: position 5 sees 3, 4, 5 only
    assert not torch.allclose(a[:, 2:5], b[:, 2:5])


def test_kv_heads_equal_to_heads_is_multi_head_attention():
    torch.manual_seed(0)
    mha, gqa = Attention(CFG), Attention(_cfg(n_kv_heads=4))
    gqa.load_state_dict(mha.state_dict())
    cos, sin = rope_tables(64, 8, 10000.0)
    x = torch.randn(2, 7, 32)
    assert torch.equal(mha(x, cos, sin), gqa(x, cos, sin))


def test_grouped_query_heads_share_keys_and_values():
    """n_kv_heads=2 equals MHA whose k and v heads repeat each of the 2 for 2 query heads."""
    torch.manual_seed(0)
    gqa, mha = Attention(_cfg(n_kv_heads=2)), Attention(CFG)
    q, k, v = gqa.qkv.weight.split([32, 16, 16])
    rep = [t.view(2, 8, 32).repeat_interleave(2, dim=0).reshape(32, 32) for t in (k, v)]
    mha.qkv.weight.data = torch.cat([q, *rep])
    mha.proj.weight.data = gqa.proj.weight.data
    cos, sin = rope_tables(64, 8, 10000.0)
    x = torch.randn(2, 7, 32)
    assert torch.allclose(gqa(x, cos, sin), mha(x, cos, sin), atol=1e-6)


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_norm_types_against_their_formula(norm):
    torch.manual_seed(0)
    m = TransformerLM(_cfg(norm=norm), 50)
    n = m.norm
    with torch.no_grad():
        n.weight.add_(0.1 * torch.randn(32))
        if norm == "layernorm":
            n.bias.add_(0.1 * torch.randn(32))
    x = 3 * torch.randn(4, 32) + 1
    if norm == "rmsnorm":
        want = x / torch.sqrt(x.square().mean(-1, keepdim=True) + 1e-6) * n.weight
    else:
        mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
        want = (x - mu) / torch.sqrt(var + 1e-5) * n.weight + n.bias
    assert torch.allclose(n(x), want, atol=1e-5)


def test_qk_norm_normalises_each_head_before_rope():
    torch.manual_seed(0)
    attn = Attention(_cfg(qk_norm=True))
    with torch.no_grad():
        attn.q_norm.weight.add_(0.1 * torch.randn(8))
        attn.k_norm.weight.add_(0.1 * torch.randn(8))
    cos, sin = rope_tables(64, 8, 10000.0)
    x = torch.randn(2, 7, 32)
    B, T = 2, 7
    q, k, v = attn.qkv(x).view(B, T, 12, 8).split(4, dim=2)

    def rms(t, w):  # the formula, per head over head_dim
        return t / torch.sqrt(t.square().mean(-1, keepdim=True) + 1e-6) * w

    def rope(t):
        t1, t2 = t.chunk(2, -1)
        c, s = cos[:T, None], sin[:T, None]
        return torch.cat((t1 * c - t2 * s, t1 * s + t2 * c), -1)

    q, k = rope(rms(q, attn.q_norm.weight)), rope(rms(k, attn.k_norm.weight))
    y = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=True)
    want = attn.proj(y.transpose(1, 2).reshape(B, T, 32))
    assert torch.allclose(attn(x, cos, sin), want, atol=1e-5)


@pytest.mark.parametrize("ffn", ["gelu", "relu2", "geglu"])
def test_activations_against_their_formula(ffn):
    torch.manual_seed(0)
    f = FeedForward(_cfg(ffn=ffn))
    x = torch.randn(5, 32)
    h = x @ f.up.weight.T
    if ffn == "geglu":
        a, g = h.chunk(2, -1)
        h = a * 0.5 * g * (1 + torch.erf(g / math.sqrt(2)))
    elif ffn == "gelu":
        h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))
    else:
        h = torch.clamp(h, min=0) ** 2
    assert torch.allclose(f(x), h @ f.down.weight.T, atol=1e-6)


def test_untied_output_projection_is_its_own_weight():
    m = TransformerLM(_cfg(tie_embeddings=False), 50)
    assert m.lm_head is not None and m.lm_head.weight.data_ptr() != m.embed.weight.data_ptr()
    x = torch.randint(0, 50, (1, 4))
    with torch.no_grad():
        m.lm_head.weight.zero_()
    assert torch.equal(m(x), torch.zeros(1, 4, 50))


def test_z_loss_is_added_to_the_objective_not_to_the_reported_loss():
    from tune_ablations.training.step import NextTokenLoss

    torch.manual_seed(0)
    m = TransformerLM(_cfg(z_loss=0.5), 50)
    x, y = torch.randint(0, 50, (2, 8)), torch.randint(0, 50, (2, 8))
    objective, ce = NextTokenLoss(m)(x, y)
    logits = m(x)
    assert ce.item() == pytest.approx(F.cross_entropy(logits.view(-1, 50), y.view(-1)).item())
    z = logits.logsumexp(-1).square().mean()
    assert objective.item() == pytest.approx(ce.item() + 0.5 * z.item(), rel=1e-6)


@pytest.mark.parametrize("axis", ["baseline", *AXES])
def test_counts_match_the_built_model(axis):
    cfg = _cfg(**AXES.get(axis, {}))
    m = TransformerLM(cfg, 77)
    c = count_params(cfg, 77)
    assert c["params"] == sum(p.numel() for p in m.parameters())
    embeddings = m.embed.weight.numel() + (0 if m.lm_head is None else m.lm_head.weight.numel())
    assert c["non_embedding_params"] == c["params"] - embeddings
    idle = 0
    if cfg.n_experts:  # a token uses k experts of n
        per_expert = sum(p.numel() for p in m.blocks[0].ffn.experts[0].parameters())
        idle = cfg.n_layers * (cfg.n_experts - cfg.experts_per_token) * per_expert
    assert c["active_params"] == c["params"] - idle
    out = 77 * 32  # the output projection's matmul, tied or not
    attn = 12 * cfg.n_layers * 32 * attended_keys(cfg, 40)
    assert flops_per_token(cfg, 77, 40) == pytest.approx(
        6 * (c["active_params"] - embeddings + out) + attn)


def test_dense_flops_are_unchanged_by_the_axes_code():
    n = count_params(CFG, 100)["params"]
    assert flops_per_token(CFG, 100, 128) == 6 * n + 12 * 2 * 32 * 128


@pytest.mark.parametrize("w", [1, 3, 16, 40, 100])
def test_window_attention_flops_against_a_direct_count(w):
    T = 40
    kept = int(causal_mask(T, window=w if w < T else 0).sum())
    assert attended_keys(_cfg(sliding_window=w), T) == pytest.approx(T * kept / (T * (T + 1) / 2))
    gqa = _cfg(n_kv_heads=1)  # GQA shrinks k and v, not the attention scores
    assert attended_keys(gqa, T) == T


def test_bad_axis_values_are_rejected_with_value_and_rule():
    for kw, msg in [({"n_kv_heads": 3}, "n_kv_heads=3 must divide n_heads=4"),
                    ({"n_kv_heads": -1}, "n_kv_heads=-1 must be >= 0"),
                    ({"sliding_window": -2}, "sliding_window=-2 must be >= 0"),
                    ({"n_experts": 2, "experts_per_token": 3},
                     "experts_per_token=3 must be <= n_experts=2"),
                    ({"experts_per_token": 0}, "experts_per_token=0 must be >= 1"),
                    ({"ffn": "tanh"}, "ffn='tanh' must be one of 'silu', 'gelu'"),
                    ({"norm": "batchnorm"}, "norm='batchnorm' must be one of 'rmsnorm'"),
                    ({"z_loss": -1.0}, "z_loss=-1.0 must be >= 0"),
                    ({"qk_norm": 1}, "qk_norm=1 must be true or false")]:
        with pytest.raises(ValueError, match=msg):
            RunConfig(model=_cfg(**kw))


@pytest.mark.parametrize("axis", list(AXES))
def test_every_axis_is_causal_and_trains_a_step(axis):
    from tune_ablations.training.step import NextTokenLoss

    torch.manual_seed(0)
    m = TransformerLM(_cfg(**AXES[axis]), 50)
    x = torch.randint(0, 50, (2, 12))
    y = x.clone()
    y[:, 8:] = (y[:, 8:] + 1) % 50
    m.eval()
    assert torch.allclose(m(x)[:, :8], m(y)[:, :8], atol=1e-5)
    m.train()
    objective, _ = NextTokenLoss(m)(x, x)
    objective.backward()
    assert all(p.grad is not None for n, p in m.named_parameters()), axis


def test_the_dry_run_shows_each_axis_with_its_parameters_and_flops(corpus_dir, tmp_path, capsys):
    import json

    from tune_ablations import grid

    sets = ["n_experts=4", "experts_per_token=2", "n_kv_heads=1", "sliding_window=16",
            "qk_norm=true", "norm=layernorm", "ffn=geglu", "tie_embeddings=false",
            "z_loss=0.0001"]
    assert grid.main(["--preset", "tiny", "--data", str(corpus_dir), "--set", "vocab_size=300",
                      *sets, "--ablations", "baseline", "--seeds", "1", "--storage",
                      str(tmp_path), "--dry-run", "--json"]) == 0
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = dict(s.split("=") for s in sets)
    for key, value in want.items():
        assert str(row[key]).lower() == value.lower(), key
    cfg = dataclasses.replace(ModelConfig(), **{k: row[k] for k in (
        "d_model", "n_heads", "n_layers", "d_ff", "ffn", "norm", "n_kv_heads", "qk_norm",
        "sliding_window", "tie_embeddings", "n_experts", "experts_per_token")})
    counts = count_params(cfg, row["vocab_size"])
    assert row["params"] == counts["params"] > row["active_params"] == counts["active_params"]
    assert row["flops_per_token"] == flops_per_token(cfg, row["vocab_size"], row["seq_len"])


TRAIN_AXES = {**AXES, "window": {"sliding_window": 4}, "moe_muon": {
    "n_experts": 2, "experts_per_token": 1, "ffn": "swiglu", "optimizer": "muon", "lr": 0.02},
    "gqa_muon": {"n_kv_heads": 2, "optimizer": "muon", "lr": 0.02}}


@pytest.mark.parametrize("axis", list(TRAIN_AXES))
def test_every_axis_trains_and_resumes_as_if_uninterrupted(axis, tiny_cfg, tiny_data, tmp_path):
    from tune_ablations.spec.config import with_overrides
    from tune_ablations.training.trainer import train

    cfg = with_overrides(tiny_cfg, {**TRAIN_AXES[axis], "max_steps": 8, "eval_every": 4,
                                    "warmup_steps": 2, "text_samples": 0,
                                    "precision": "fp32", "diverge_margin": 0.0, "d_model": 32,
                                    "n_heads": 4, "d_ff": 48, "batch_size": 4, "seq_len": 32})
    full = train(cfg, data=tiny_data)
    assert full["status"] == "completed", full.get("diverged_because")
    losses = [h["train_loss"] for h in full["history"]]
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]

    def stop_at_4(metrics, save):
        if metrics["step"] == 4:
            save(tmp_path)
            return True
        return None

    assert train(cfg, data=tiny_data, report=stop_at_4)["steps"] == 4
    resumed = train(cfg, data=tiny_data, resume_from=tmp_path)
    timing = {"tokens_per_s", "steps_per_s", "mfu", "train_time_s", "eval_time_s"}
    strip = [{k: v for k, v in h.items() if k not in timing} for h in full["history"]]
    assert [{k: v for k, v in h.items() if k not in timing} for h in resumed["history"]] == strip
    assert resumed["final"] == full["final"]
    assert full["active_params"] == count_params(cfg.model, tiny_data.vocab_size)["active_params"]


def test_match_active_params_sizes_moe_arms_to_the_dense_active_compute():
    from tune_ablations.spec.resolve import resolve
    from tune_ablations.spec.runspec import RunSpec

    dense = resolve(RunSpec(preset="cpu"))
    moe = resolve(RunSpec(preset="cpu", overrides={"n_experts": 8, "experts_per_token": 2},
                          match_active_params=True))
    assert moe.model.d_ff == dense.model.d_ff // 2
    a, b = (count_params(c.model, 1024) for c in (dense, moe))
    router = dense.model.n_layers * dense.model.d_model * 8
    assert b["active_params"] == a["active_params"] + router
    assert b["params"] > 3 * a["non_embedding_params"]
    gated = resolve(RunSpec(preset="cpu", match_params=True, match_active_params=True,
                            overrides={"n_experts": 4, "experts_per_token": 2, "ffn": "swiglu"}))
    assert gated.model.d_ff == round(round(dense.model.d_ff * 2 / 3) / 2)
    assert resolve(RunSpec(preset="cpu", match_active_params=True)) == dense  # dense: no-op
    assert "match_active_params=true" in " ".join(RunSpec(match_active_params=True).to_argv())


def test_confounds_of_moe_arms_count_active_compute():
    """At equal active parameters an MoE arm lists its larger total only; at equal expert
    width, top-2 also doubles the active parameters and nearly the FLOPs, and says so."""
    import pandas as pd

    from tune_ablations.results.confounds import FOLLOWS, confounds
    from tune_ablations.spec.config import to_flat_dict
    from tune_ablations.spec.resolve import resolve
    from tune_ablations.spec.runspec import RunSpec

    def rows(arm, **kw):
        c = resolve(RunSpec(preset="cpu", **kw), vocab_size=1024)
        n = count_params(c.model, 1024)
        return [{"ablation": arm, "seed": s, "status": "completed", **to_flat_dict(c),
                 "val_loss": 5.0, "tokens_seen": c.total_tokens, "step": c.steps,
                 "epoch": 0.5, "flops_per_token": flops_per_token(c.model, 1024, 128),
                 "params": n["params"], "active_params": n["active_params"]} for s in (0, 1)]

    moe = {"n_experts": 4, "experts_per_token": 2}
    df = pd.DataFrame(rows("baseline") + rows("iso", overrides=moe, match_active_params=True)
                      + rows("wide", overrides=moe))
    own = {"iso": set(moe), "wide": set(moe)}.get
    iso = {c.what: c for c in confounds(df, "iso", own_keys=own)}
    assert iso["parameters"].kind == FOLLOWS and "active parameters" not in iso
    assert "training FLOPs" not in iso  # the router's FLOPs are within 5%
    wide = {c.what: c for c in confounds(df, "wide", own_keys=own)}
    assert wide["active parameters"].kind == FOLLOWS
    assert wide["training FLOPs"].arm.startswith("1.") and wide["training FLOPs"].kind == FOLLOWS


def test_muon_splits_grouped_qkv_and_expert_halves_and_leaves_the_router_to_adamw():
    from tune_ablations.training.optimizers import assign, fused_rows

    cfg = RunConfig(model=_cfg(n_kv_heads=2, n_experts=2, ffn="swiglu", max_seq_len=512))
    cfg = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, optimizer="muon"))
    m = TransformerLM(cfg.model, 50)
    named = dict(m.named_parameters())
    assert fused_rows("blocks.0.attn.qkv.weight", named["blocks.0.attn.qkv.weight"],
                      cfg) == (32, 16, 16)
    up = "blocks.0.ffn.experts.1.up.weight"
    assert fused_rows(up, named[up], cfg) == (48, 48)
    roles = {role: {n for n, _ in ps} for role, ps in assign(m, cfg).items()}
    assert "blocks.0.ffn.router.weight" in roles["decay"] and up in roles["hidden"]


def test_match_active_params_names_d_ff_as_the_arms_own_change():
    from tune_ablations.spec.questions import load_question

    arm = dict((a.name, a) for a in load_question("moe").arms)["moe8_top2"]
    assert arm.config_keys("cpu") == {"n_experts", "experts_per_token", "d_ff"}
