"""A compact decoder-only Transformer LM: the reference architecture, with RoPE that works, and
the architecture axes an ablation varies.

Design choices:
- Token embedding scaled by sqrt(d_model); pre-norm blocks; causal attention through
  `F.scaled_dot_product_attention(is_causal=True)`; a feed-forward network; a final norm; output
  projection tied to the embedding; every weight initialised normal(0, 0.02), as the reference.
- The axes (spec/config.py's ModelConfig): `norm` RMSNorm or LayerNorm; `ffn` silu, gelu, relu2
  (ReLU squared, So et al. 2021) or the gated swiglu / geglu (Shazeer 2020); `n_kv_heads`
  grouped-query attention (Ainslie et al. 2023; one fused projection holds q's n_heads and k's
  and v's n_kv_heads); `qk_norm` on each head's query and key before RoPE (Dehghani et al. 2023,
  as Qwen3 and OLMo 2); `sliding_window` local attention (each token attends to itself and the
  window - 1 tokens before it, as Mistral); `tie_embeddings`; and a Mixture of Experts FFN
  (`n_experts`, `experts_per_token`): a linear router, softmax gates, top-k experts per token,
  the gates renormalised over the chosen experts when k > 1 (Mixtral) and the chosen gate itself
  when k = 1 (Switch, so the router learns from the language-model loss). Routing is dropless
  (MegaBlocks, Gale et al. 2022): tokens are sorted by expert and every expert runs once on its
  own rows; no token is dropped. Each MoE layer adds its load-balancing loss (Switch, Fedus et
  al. 2021: n_experts x sum_e f_e P_e, 1 at uniform routing) and router z-loss (ST-MoE, Zoph et
  al. 2022: mean logsumexp(router logits)^2), times their coefficients, to the `aux` list the
  training loss sums.
- RoPE rotates by *position*. The reference indexed (B, H, T, D) tensors as (B, T, H, D) and so
  rotated by head index, identically for q and k: q.k was unchanged and its model had no
  positional information. `pos_encoding="none"` reproduces that effective model as an ablation.
- Rotary helpers are pure functions so the relative-position property is testable directly.
- This module imports only torch (the config is a type hint): the exported remote-code model is
  generated from this source text (results/hf_remote_code.py), so there is one model. `forward`
  takes optional rotary tables for given positions, a boolean attention mask and a key-value
  cache (any object with `update(k, v, layer)`) for that use; training passes none of them.
- Speed on CPUs (profiles in benchmarks/RESULTS.md, section 1), with the same numbers up to
  rounding: RoPE rotates q and k in one pass; RMSNorm has a hand-written backward on CPUs (8
  element-wise ops where autograd's composite used about 14; GPUs keep the fused kernel); and
  in bf16/fp16 on a CPU, attention over short sequences is computed explicitly (one batched
  matmul with the causal mask added, softmax, one batched matmul), which measured up to 1.5x
  faster per step than the CPU flash-attention kernel's backward at these sizes. GPUs, fp32
  and long sequences keep `F.scaled_dot_product_attention`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

if TYPE_CHECKING:
    from ..spec.config import ModelConfig


def rope_at(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, ...]:
    """cos, sin tables for integer `positions` (any shape P): each (*P, head_dim // 2),
    float32."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device).float()
                               / head_dim))
    angles = positions.float()[..., None] * inv_freq
    return angles.cos(), angles.sin()


def rope_tables(seq_len: int, head_dim: int, base: float,
                device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables, each (seq_len, head_dim // 2), float32."""
    return rope_at(torch.arange(seq_len, device=device), head_dim, base)


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


LAYER_NORM_EPS = 1e-5
"""LayerNorm's epsilon (torch's and GPT-2's default); RMSNorm's is 1e-6."""


def build_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    """The config's norm over `dim` features: RMSNorm (gain) or LayerNorm (gain and bias)."""
    return RMSNorm(dim) if cfg.norm == "rmsnorm" else nn.LayerNorm(dim, eps=LAYER_NORM_EPS)


EXPLICIT_ATTENTION_MAX = 1 << 24
"""Score elements (B x heads x T x T) up to which bf16/fp16 attention on a CPU is computed
explicitly (32 MiB of bf16 scores per layer kept for the backward); beyond, the memory of the
scores outweighs the speed and the flash kernel runs."""


def causal_mask(T: int, past: int = 0, window: int = 0,
                device: torch.device | None = None) -> torch.Tensor:
    """(T, past + T) True where query i (at position past + i) may attend to key j: j at or
    before it and, with a `window` > 0, fewer than `window` positions back."""
    q = torch.arange(past, past + T, device=device)[:, None]
    k = torch.arange(past + T, device=device)[None, :]
    allowed = k <= q
    return allowed & (k > q - window) if window > 0 else allowed


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, window: int = 0,
                     mask: torch.Tensor | None = None) -> torch.Tensor:
    """Causal softmax attention of q (B, H, T, D) over k, v (B, H_kv, S, D) -> (B, H, T, D).
    H_kv divides H (grouped-query: each key-value head serves H / H_kv query heads). `window`
    > 0 limits each query to the `window` latest keys; `mask` (broadcast to (B, H, T, S), True
    where attending is allowed) replaces the causal rule (a padded batch, a cache)."""
    B, H, T, D = q.shape
    if k.shape[1] != H:  # grouped-query: repeat each key-value head for its query heads
        g = H // k.shape[1]
        k, v = (t.repeat_interleave(g, dim=1) for t in (k, v))
    if mask is not None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    local = 0 < window < T
    explicit = (q.device.type == "cpu" and q.dtype in (torch.bfloat16, torch.float16)
                and B * H * T * T <= EXPLICIT_ATTENTION_MAX)
    if not explicit:
        if local:
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=causal_mask(T, window=window, device=q.device))
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    if local:
        add = torch.zeros((T, T), dtype=q.dtype, device=q.device).masked_fill_(
            ~causal_mask(T, window=window, device=q.device), float("-inf"))
    else:
        add = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu_(1)
    scores = torch.baddbmm(add, q.reshape(B * H, T, D), k.reshape(B * H, T, D).transpose(1, 2),
                           alpha=D ** -0.5)  # (B * H, T, T), masked where not allowed
    return torch.bmm(scores.softmax(-1), v.reshape(B * H, T, D)).view(B, H, T, D)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.d_model // cfg.n_heads
        self.n_kv = cfg.n_kv_heads or cfg.n_heads
        self.window, self.layer = cfg.sliding_window, layer
        self.qkv = nn.Linear(cfg.d_model, (self.n_heads + 2 * self.n_kv) * self.head_dim,
                             bias=False)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.rope = cfg.pos_encoding == "rope"
        if cfg.qk_norm:  # per head, over head_dim, one gain for all heads (Qwen3)
            self.q_norm, self.k_norm = build_norm(cfg, self.head_dim), build_norm(
                cfg, self.head_dim)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        """x (B, T, C); cos, sin: the tables of positions 0, 1, ... (L >= T, D/2), or of given
        positions (B, T, D/2)."""
        B, T, C = x.shape
        H, G = self.n_heads, self.n_kv
        if cos.dim() == 2:  # (T, 1, D/2): broadcast over B and heads
            cos, sin = cos[:T, None], sin[:T, None]
        else:  # (B, T, 1, D/2)
            cos, sin = cos[:, :, None], sin[:, :, None]
        # split (not slices): its backward is one concatenation, no zero-filled gradients
        qk, v = self.qkv(x).view(B, T, H + 2 * G, self.head_dim).split((H + G, G), dim=2)
        if self.q_norm is not None:
            q, k = qk.split((H, G), dim=2)
            qk = torch.cat((self.q_norm(q), self.k_norm(k)), dim=2)
        if self.rope:  # q and k in one pass: the tables broadcast over B and heads
            qk = _rotate(qk, cos, sin)
        q, k = (t.transpose(1, 2) for t in qk.split((H, G), dim=2))  # (B, heads, T, D)
        v = v.transpose(1, 2)
        if cache is not None:  # keys and values of every earlier position, then these
            k, v = cache.update(k, v, self.layer)
        y = causal_attention(q, k, v, window=self.window, mask=mask)  # (B, H, T, D)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


ACTIVATIONS = {"silu": F.silu, "gelu": F.gelu, "relu2": lambda h: F.relu(h).square(),
               "swiglu": F.silu, "geglu": F.gelu}
GATED = ("swiglu", "geglu")


class FeedForward(nn.Module):
    """down(act(up(x))), or gated: down(act(gate(x)) * value(x)), the up projection holding
    value then gate."""

    def __init__(self, cfg: ModelConfig, d_ff: int | None = None):
        super().__init__()
        d_ff = d_ff or cfg.d_ff
        self.gated, self.act = cfg.ffn in GATED, ACTIVATIONS[cfg.ffn]
        self.up = nn.Linear(cfg.d_model, (2 if self.gated else 1) * d_ff, bias=False)
        self.down = nn.Linear(d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor, aux: list | None = None) -> torch.Tensor:
        h = self.up(x)
        if self.gated:
            a, g = h.chunk(2, dim=-1)
            return self.down(self.act(g) * a)
        return self.down(self.act(h))


class MoE(nn.Module):
    """Mixture of Experts FFN: top-k of `n_experts` FeedForwards per token, dropless."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.k, self.n = cfg.experts_per_token, cfg.n_experts
        self.balance, self.z = cfg.moe_aux_loss, cfg.router_z_loss
        self.router = nn.Linear(cfg.d_model, cfg.n_experts, bias=False)
        self.experts = nn.ModuleList(FeedForward(cfg) for _ in range(cfg.n_experts))

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, C) -> gates (N, k), experts (N, k), router logits (N, n_experts) in fp32."""
        logits = self.router(x).float()
        gates, chosen = logits.softmax(-1).topk(self.k, dim=-1)
        if self.k > 1:  # Mixtral; top-1 keeps its probability (Switch)
            gates = gates / gates.sum(-1, keepdim=True)
        return gates, chosen, logits

    def forward(self, x: torch.Tensor, aux: list | None = None) -> torch.Tensor:
        B, T, C = x.shape
        flat = x.reshape(-1, C)  # (N, C)
        gates, chosen, logits = self.route(flat)
        order = chosen.flatten().argsort(stable=True)  # (N k,) assignments grouped by expert
        rows = order // self.k  # token of each assignment
        sizes = torch.bincount(chosen.flatten(), minlength=self.n)
        parts = flat[rows].split(sizes.tolist())
        ys = torch.cat([e(part) for e, part in zip(self.experts, parts)])  # (N k, C)
        ys = ys * gates.flatten()[order, None].to(ys.dtype)
        out = ys.new_zeros(flat.shape).index_add_(0, rows, ys)
        if aux is not None and self.training:
            aux.append(self.balance * load_balance_loss(logits, chosen, self.n)
                       + self.z * logits.logsumexp(-1).square().mean())
        return out.view(B, T, C)


def load_balance_loss(logits: torch.Tensor, chosen: torch.Tensor, n: int) -> torch.Tensor:
    """Switch Transformer's auxiliary loss n x sum_e f_e P_e: f_e the fraction of routing
    assignments to expert e (not differentiable), P_e its mean router probability. Uniform
    routing gives 1."""
    f = torch.bincount(chosen.flatten(), minlength=n).to(logits.dtype) / chosen.numel()
    return n * (f * logits.softmax(-1).mean(0)).sum()


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.norm1, self.attn = build_norm(cfg, cfg.d_model), Attention(cfg, layer)
        self.norm2 = build_norm(cfg, cfg.d_model)
        self.ffn = MoE(cfg) if cfg.n_experts else FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)  # on each branch before the residual add
        self.branch_mult = residual_multiplier(cfg)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                mask: torch.Tensor | None = None, cache=None, aux: list | None = None
                ) -> torch.Tensor:
        x = x + self._branch(self.attn(self.norm1(x), cos, sin, mask, cache))
        return x + self._branch(self.ffn(self.norm2(x), aux))

    def _branch(self, y: torch.Tensor) -> torch.Tensor:
        """A residual branch's output as added to the stream (CompleteP: x 1 / depth_mult)."""
        y = self.drop(y)
        return y if self.branch_mult == 1.0 else y * self.branch_mult


# --- width and depth rules: standard (the reference's), muP or CompleteP --------------------
# muP (Yang et al. 2022, "Tensor Programs V", for Adam), in its readout-multiplier form (TP-V
# Table 8; the `mup` package's MuSharedReadout), which suits a tied embedding. With width_mult
# m = d_model / mup_base_width: hidden matrices (every weight of 2 or more dimensions inside
# the blocks) start at std 0.02 / sqrt(m) (variance ~ 1/fan_in) and train at lr / m
# (optimizers.py asks `lr_multiplier`); the embedding and output layer keep std 0.02 and lr;
# the input is multiplied by sqrt(mup_base_width) (standard: sqrt(d_model)) and the logits by
# 1 / m. At m = 1 muP computes exactly the standard model. Attention keeps 1/sqrt(head_dim):
# the ladder grows heads at a fixed head_dim, where muP's 1/head_dim differs by a constant.
# CompleteP (Dey et al. 2025, "Don't be lazy: CompleteP enables compute-efficient deep
# transformers", depth exponent alpha = 1) is muP plus one depth rule: with depth_mult
# L / mup_base_depth, each block's two residual branches are multiplied by 1 / depth_mult before
# they join the stream. At alpha = 1 its Adam rules leave every rate and the init as muP's
# (hidden lr x depth_mult^(alpha - 1) = 1); AdamW's epsilon stays 1e-8 (the paper scales it
# down with width and depth, which matters only where gradients near 1e-8: not at these sizes).
# At depth_mult = 1 CompleteP is muP exactly.
# The rules live here because the exported remote code copies this file verbatim.

MUP_LIKE = ("mup", "completep")
"""The parametrizations with muP's width rules."""


def width_mult(m: ModelConfig) -> float:
    """d_model / mup_base_width under muP or CompleteP (a base of 0 stands for d_model); 1
    otherwise."""
    base = getattr(m, "mup_base_width", 0)
    if getattr(m, "parametrization", "standard") not in MUP_LIKE or not base:
        return 1.0
    return m.d_model / base


def depth_mult(m: ModelConfig) -> float:
    """n_layers / mup_base_depth under CompleteP (a base of 0 stands for n_layers); 1
    otherwise."""
    base = getattr(m, "mup_base_depth", 0)
    if getattr(m, "parametrization", "standard") != "completep" or not base:
        return 1.0
    return m.n_layers / base


def residual_multiplier(m: ModelConfig) -> float:
    """What each residual branch is multiplied by: 1, or 1 / depth_mult (CompleteP)."""
    return 1.0 / depth_mult(m)


def input_multiplier(m: ModelConfig) -> float:
    """What the token embedding is multiplied by: sqrt(d_model), or sqrt(base width) (muP,
    CompleteP)."""
    if getattr(m, "parametrization", "standard") not in MUP_LIKE:
        return math.sqrt(m.d_model)
    return math.sqrt(getattr(m, "mup_base_width", 0) or m.d_model)


def output_multiplier(m: ModelConfig) -> float:
    """What the logits are multiplied by: 1, or 1 / width_mult (muP, CompleteP)."""
    return 1.0 / width_mult(m)


def is_hidden(name: str, p: torch.Tensor) -> bool:
    """A hidden matrix: a weight of 2 or more dimensions inside the blocks."""
    return p.dim() >= 2 and name.startswith("blocks.")


def lr_multiplier(name: str, p: torch.Tensor, m: ModelConfig) -> float:
    """The factor on `lr` of parameter `name`: 1 / width_mult for hidden matrices under muP
    and CompleteP (whose depth factor on it is depth_mult^(alpha - 1) = 1)."""
    return 1.0 / width_mult(m) if is_hidden(name, p) else 1.0


class TransformerLM(nn.Module):
    def __init__(self, cfg: ModelConfig, vocab_size: int):
        super().__init__()
        self.cfg, self.vocab_size = cfg, vocab_size
        self.embed = nn.Embedding(vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = build_norm(cfg, cfg.d_model)
        self.lm_head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, vocab_size,
                                                                 bias=False)
        self.drop = nn.Dropout(cfg.dropout)
        cos, sin = rope_tables(cfg.max_seq_len, cfg.d_model // cfg.n_heads, cfg.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)
        self.input_mult, self.output_mult = input_multiplier(cfg), output_multiplier(cfg)
        if width_mult(cfg) != 1.0:  # muP: hidden matrices at std 0.02 / sqrt(width_mult)
            with torch.no_grad():
                for name, p in self.named_parameters():
                    if is_hidden(name, p):
                        p.mul_(width_mult(cfg) ** -0.5)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx: torch.Tensor, *, aux: list | None = None,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None, cache=None) -> torch.Tensor:
        """idx (B, T) token ids -> logits (B, T, vocab_size). In training, an `aux` list
        receives each MoE layer's auxiliary loss. `rope` (cos, sin each (B, T, D/2)) rotates by
        given positions, `mask` (B, 1, T, S) and `cache` serve padded batches and generation."""
        T = idx.shape[1]
        if T > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {T} must be <= max_seq_len={self.cfg.max_seq_len}")
        cos, sin = (self.rope_cos, self.rope_sin) if rope is None else rope
        x = self.drop(self.embed(idx) * self.input_mult)  # (B, T, C)
        for block in self.blocks:
            x = block(x, cos, sin, mask, cache, aux)
        out = self.embed.weight if self.lm_head is None else self.lm_head.weight
        logits = F.linear(self.norm(x), out)  # tied (or untied) output projection
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
