"""A compact decoder-only Transformer LM: the reference architecture, with RoPE that works.

Design choices:
- Token embedding scaled by sqrt(d_model); pre-norm blocks with RMSNorm; causal attention through
  `F.scaled_dot_product_attention(is_causal=True)`; SiLU FFN (or SwiGLU); final RMSNorm; output
  projection tied to the embedding; every weight initialised normal(0, 0.02), as the reference
  (`parametrization="mup"` changes the init, the two multipliers and the hidden layers' rates
  by width: `parametrization.py`).
- RoPE rotates by *position*. The reference indexed (B, H, T, D) tensors as (B, T, H, D) and so
  rotated by head index, identically for q and k: q.k was unchanged and its model had no
  positional information. `pos_encoding="none"` reproduces that effective model as an ablation.
- Rotary helpers are pure functions so the relative-position property is testable directly.
- Speed on CPUs (profiles in benchmarks/RESULTS.md, section 1), with the same numbers up to
  rounding: RoPE rotates q and k in one pass; RMSNorm has a hand-written backward on CPUs (8
  element-wise ops where autograd's composite used about 14; GPUs keep the fused kernel); and
  in bf16/fp16 on a CPU, attention over short sequences is computed explicitly (one batched
  matmul with the causal mask added, softmax, one batched matmul), which measured up to 1.5x
  faster per step than the CPU flash-attention kernel's backward at these sizes. GPUs, fp32
  and long sequences keep `F.scaled_dot_product_attention`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..spec.config import ModelConfig
from .parametrization import init_weights, input_multiplier, output_multiplier


def rope_tables(seq_len: int, head_dim: int, base: float,
                device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables, each (seq_len, head_dim // 2), float32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim))
    angles = torch.outer(torch.arange(seq_len, device=device).float(), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., :D/2], x[..., D/2:]) of x (B, H, T, D) by angle position * freq."""
    T = x.shape[-2]
    return _rotate(x, cos[:T], sin[:T])  # (T, D/2), broadcast over B, H


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (..., D) rotated by tables that broadcast against x[..., :D/2]."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class _RMSNormFn(torch.autograd.Function):
    """y = x / rms(x) * w over the last dimension, with a short backward:
    dx = (g*w - xhat * mean(g*w * xhat)) / rms(x), dw = sum(g * xhat)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
        rstd = torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
        xhat = x * rstd
        ctx.save_for_backward(xhat, rstd, w)
        return xhat * w

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        xhat, rstd, w = ctx.saved_tensors
        gw = g * w
        dw = (g * xhat).reshape(-1, xhat.shape[-1]).sum(0)
        dx = (gw - xhat * (gw * xhat).mean(-1, keepdim=True)) * rstd
        return dx, dw, None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != self.weight.dtype:  # GPUs: a fused kernel
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)
        return _RMSNormFn.apply(x, self.weight, self.eps)


EXPLICIT_ATTENTION_MAX = 1 << 24
"""Score elements (B x heads x T x T) up to which bf16/fp16 attention on a CPU is computed
explicitly (32 MiB of bf16 scores per layer kept for the backward); beyond, the memory of the
scores outweighs the speed and the flash kernel runs."""


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal softmax attention of q, k, v (B, H, T, D) -> (B, H, T, D)."""
    B, H, T, D = q.shape
    explicit = (q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16)
                and B * H * T * T <= EXPLICIT_ATTENTION_MAX)
    if not explicit:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    mask = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu_(1)
    scores = torch.baddbmm(mask, q.reshape(B * H, T, D), k.reshape(B * H, T, D).transpose(1, 2),
                           alpha=D ** -0.5)  # (B * H, T, T), masked above the diagonal
    return torch.bmm(scores.softmax(-1), v.reshape(B * H, T, D)).view(B, H, T, D)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.rope = cfg.pos_encoding == "rope"

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim)
        if self.rope:  # q and k in one pass: tables (T, 1, 1, D/2) broadcast over B, (q, k), H
            qk = _rotate(qkv[:, :, :2], cos[:T, None, None], sin[:T, None, None])
            (q, k), v = qk.unbind(2), qkv[:, :, 2]
        else:
            q, k, v = qkv.unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        y = causal_attention(q, k, v)  # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gated = cfg.ffn == "swiglu"
        self.up = nn.Linear(cfg.d_model, (2 if self.gated else 1) * cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.gated:
            a, g = h.chunk(2, dim=-1)
            return self.down(F.silu(g) * a)
        return self.down(F.silu(h))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1, self.attn = RMSNorm(cfg.d_model), Attention(cfg)
        self.norm2, self.ffn = RMSNorm(cfg.d_model), FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)  # on each branch before the residual add

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), cos, sin))
        return x + self.drop(self.ffn(self.norm2(x)))


class TransformerLM(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        cos, sin = rope_tables(cfg.max_seq_len, cfg.head_dim, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        # Width rules (standard or muP): initialisation and the two multipliers.
        self.input_mult, self.output_mult = input_multiplier(cfg), output_multiplier(cfg)
        init_weights(self, cfg)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, vocab_size)."""
        T = idx.shape[1]
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {T} must be <= max_seq_len={self.cfg.max_seq_len}")
        x = self.drop(self.embed(idx) * self.input_mult)  # (B, T, C)
        for block in self.blocks:
            x = block(x, self.rope_cos, self.rope_sin)
        logits = F.linear(self.norm(x), self.embed.weight)  # tied output projection
        return logits if self.output_mult == 1.0 else logits * self.output_mult

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, *, temperature: float = 0.8,
                 top_k: int = 50, generator: torch.Generator | None = None,
                 greedy: bool = False) -> torch.Tensor:
        """Sample (or, `greedy`, take the most likely) continuations of idx (B, T); returns
        (B, T + max_new_tokens)."""
        for _ in range(max_new_tokens):
            logits = self(idx[:, -self.cfg.max_seq_len:])[:, -1, :].float()
            if greedy:
                idx = torch.cat([idx, logits.argmax(-1, keepdim=True)], dim=1)
                continue
            logits = logits / temperature
            if top_k:
                kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)
            idx = torch.cat([idx, nxt], dim=1)
        return idx
