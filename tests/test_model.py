import pytest
import torch

from tune_ablations.spec.config import ModelConfig
from tune_ablations.spec.flops import count_params, flops_per_token
from tune_ablations.training.model import TransformerLM, apply_rope, rope_tables

CFG = ModelConfig(d_model=32, n_heads=2, n_layers=2, d_ff=64, max_seq_len=64)


def _model(cfg=CFG, vocab=50, seed=0):
    torch.manual_seed(seed)
    return TransformerLM(cfg, vocab).eval()


def test_shapes_and_tied_output():
    m = _model()
    logits = m(torch.randint(0, 50, (3, 10)))
    assert logits.shape == (3, 10, 50)
    assert m.embed.weight.data_ptr() == next(
        p for n, p in m.named_parameters() if n == "embed.weight").data_ptr()
    assert not any("lm_head" in n for n, _ in m.named_parameters())


def test_causal():
    m = _model()
    x = torch.randint(0, 50, (2, 12))
    y = x.clone()
    y[:, 8:] = (y[:, 8:] + 1) % 50
    a, b = m(x), m(y)
    assert torch.allclose(a[:, :8], b[:, :8], atol=1e-6)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_rope_scores_depend_only_on_offset():
    torch.manual_seed(0)
    cos, sin = rope_tables(64, 16, 10000.0)
    q, k = torch.randn(16), torch.randn(16)

    def score(m: int, n: int) -> float:
        qs = torch.zeros(1, 1, 64, 16)
        ks = torch.zeros(1, 1, 64, 16)
        qs[0, 0, m], ks[0, 0, n] = q, k
        return (apply_rope(qs, cos, sin)[0, 0, m] @ apply_rope(ks, cos, sin)[0, 0, n]).item()

    assert score(10, 7) == pytest.approx(score(40, 37), abs=1e-4)
    assert score(5, 5) == pytest.approx(score(50, 50), abs=1e-4)
    assert score(10, 7) != pytest.approx(score(10, 2), abs=1e-3)


def test_rope_rotates_by_position_not_head():
    """The reference's bug: rotation indexed by head made q.k position-free."""
    cos, sin = rope_tables(8, 4, 10000.0)
    x = torch.randn(4).expand(1, 2, 8, 4).clone()  # (B, H, T, D): one vector everywhere
    r = apply_rope(x, cos, sin)
    assert torch.allclose(r[:, 0], r[:, 1])  # heads rotated alike
    assert not torch.allclose(r[:, :, 0], r[:, :, 3])  # positions rotated differently
    assert torch.allclose(r.norm(dim=-1), x.norm(dim=-1), atol=1e-5)  # a rotation


def test_rope_changes_attention_outputs():
    from tune_ablations.training.model import Attention

    torch.manual_seed(0)
    rope = Attention(CFG)
    none = Attention(ModelConfig(**{**CFG.__dict__, "pos_encoding": "none"}))
    none.load_state_dict(rope.state_dict())
    cos, sin = rope_tables(64, CFG.head_dim, CFG.rope_base)
    x = torch.randn(2, 12, 32)
    a, b = rope(x, cos, sin), none(x, cos, sin)
    assert torch.allclose(a[:, 0], b[:, 0], atol=1e-6)  # position 0: no rotation
    assert not torch.allclose(a[:, 5:], b[:, 5:], atol=1e-3)
    # Without positions, a shuffled prefix leaves the last output unchanged; with RoPE it doesn't.
    perm = torch.cat([torch.tensor([3, 0, 2, 1]), torch.arange(4, 12)])
    assert torch.allclose(none(x, cos, sin)[:, -1], none(x[:, perm], cos, sin)[:, -1], atol=1e-5)
    assert not torch.allclose(rope(x, cos, sin)[:, -1], rope(x[:, perm], cos, sin)[:, -1],
                              atol=1e-4)
    # The whole model differs too.
    m_rope = _model(CFG)
    m_none = TransformerLM(ModelConfig(**{**CFG.__dict__, "pos_encoding": "none"}), 50).eval()
    m_none.load_state_dict(m_rope.state_dict())
    t = torch.randint(0, 50, (2, 12))
    assert not torch.equal(m_rope(t)[:, 5:], m_none(t)[:, 5:])


@pytest.mark.parametrize("ffn", ["silu", "swiglu"])
def test_param_count_formula(ffn):
    cfg = ModelConfig(d_model=48, n_heads=4, n_layers=3, d_ff=96, ffn=ffn)
    m = TransformerLM(cfg, 77)
    counts = count_params(cfg, 77)
    assert counts["params"] == sum(p.numel() for p in m.parameters())
    assert counts["non_embedding_params"] == counts["params"] - 77 * 48


def test_flops_per_token():
    cfg = ModelConfig(d_model=64, n_heads=4, n_layers=2, d_ff=256)
    n = count_params(cfg, 100)["params"]
    assert flops_per_token(cfg, 100, 128) == 6 * n + 12 * 2 * 64 * 128


def test_init_and_embedding_scale():
    m = TransformerLM(ModelConfig(d_model=256, n_heads=4, n_layers=1, d_ff=512), 1000)
    assert m.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert m.embed.weight.std().item() == pytest.approx(0.02, rel=0.05)


def test_too_long_sequence_rejected():
    with pytest.raises(ValueError, match="must be <= max_seq_len=64"):
        _model()(torch.zeros(1, 65, dtype=torch.long))


def test_rms_norm_backward_is_exact():
    from tune_ablations.training.model import RMSNorm, _RMSNormFn

    torch.manual_seed(0)
    norm = RMSNorm(8).double()
    norm.weight.data += 0.1 * torch.randn(8, dtype=torch.float64)
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    # The hand-written backward against finite differences, for the input and the weight.
    assert torch.autograd.gradcheck(lambda a, w: _RMSNormFn.apply(a, w, 1e-6), (x, norm.weight))
    ref = torch.nn.functional.rms_norm(x, (8,), norm.weight, 1e-6)
    assert torch.allclose(norm(x), ref, atol=1e-12)
    g = torch.randn_like(x)
    ours = torch.autograd.grad(norm(x), (x, norm.weight), g)
    theirs = torch.autograd.grad(ref, (x, norm.weight), g)
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(ours, theirs))


@pytest.mark.parametrize("T", [1, 7, 64])
def test_explicit_cpu_attention_equals_sdpa(T):
    from tune_ablations.training.model import causal_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 3, T, 16, requires_grad=True) for _ in range(3))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert torch.equal(causal_attention(q, k, v), ref)  # fp32: the flash kernel itself
    low = [t.detach().bfloat16().requires_grad_() for t in (q, k, v)]
    out = causal_attention(*low)  # bf16 on a CPU: computed explicitly
    assert out.dtype == torch.bfloat16 and torch.allclose(out.float(), ref, atol=2e-2)
    g = torch.randn_like(ref)
    want = torch.autograd.grad(ref, (q, k, v), g)
    got = torch.autograd.grad(out, low, g.bfloat16())
    assert all(torch.allclose(a.float(), b, atol=5e-2) for a, b in zip(got, want))
    assert torch.equal(causal_attention(*low)[:, :, 0], low[2][:, :, 0])  # t=0 sees itself only


def test_rope_of_q_and_k_in_one_pass_equals_apply_rope():
    from tune_ablations.training.model import Attention

    torch.manual_seed(0)
    attn = Attention(CFG)
    cos, sin = rope_tables(64, CFG.head_dim, CFG.rope_base)
    x = torch.randn(2, 12, 32)
    B, T, C = x.shape
    q, k, v = attn.qkv(x).view(B, T, 3, 2, 16).unbind(2)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    y = torch.nn.functional.scaled_dot_product_attention(
        apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, is_causal=True)
    want = attn.proj(y.transpose(1, 2).reshape(B, T, C))
    assert torch.allclose(attn(x, cos, sin), want, atol=1e-6)
