"""Parameter and FLOP counts from a model config alone (no torch): the project's one
convention for N and compute. `--iso-flops` budgets (spec.resolve) and MFU (the trainer) call
these functions; the trainer records their values with every run (`params`,
`flops_per_token`), and scaling fits (results.scaling) read those records, so a fit's N and
compute axis are exactly what `--iso-flops` equalises. Tests check every count against the
parameters of the model actually built, for every architecture axis.

- `params` counts every weight once (a tied embedding once); `non_embedding_params` leaves out
  the input embedding and an untied output projection; `active_params` counts what one token
  uses: a Mixture of Experts layer's top-k experts plus its router, not all its experts.
- Training FLOPs per token are 6 x (active non-embedding parameters + the output projection)
  plus attention (PaLM, Chowdhery et al. 2022, appendix B): 6 x n_layers x 2 x d_model x
  `attended_keys` (the score and value matmuls). For full attention PaLM counts seq_len keys
  per query; a sliding window scales that by the share of query-key pairs it keeps of the
  causal ones (so the dense number is PaLM's, and a window's saving is the work it skips).
"""

from __future__ import annotations

from .config import ModelConfig


def _norm(cfg: ModelConfig, dim: int) -> int:
    return dim if cfg.norm == "rmsnorm" else 2 * dim  # LayerNorm: gain and bias


def ffn_params(cfg: ModelConfig) -> int:
    """One feed-forward network (one expert) of width d_ff."""
    return (3 if cfg.ffn in ("swiglu", "geglu") else 2) * cfg.d_model * cfg.d_ff


def attention_params(cfg: ModelConfig) -> int:
    """q (n_heads), k and v (kv_heads each) projections, the output projection, QK-norm."""
    d, hd = cfg.d_model, cfg.head_dim
    qk_norm = 2 * _norm(cfg, hd) if cfg.qk_norm else 0
    return d * (cfg.n_heads + 2 * cfg.kv_heads) * hd + d * d + qk_norm


def count_params(cfg: ModelConfig, vocab_size: int) -> dict[str, int]:
    """Parameter counts from the config alone: `params` (total; a tied embedding counted
    once), `non_embedding_params` and `active_params` (per token)."""
    d, L = cfg.d_model, cfg.n_layers
    experts, router = max(1, cfg.n_experts), d * cfg.n_experts
    shared = attention_params(cfg) + 2 * _norm(cfg, d)
    per_block = shared + experts * ffn_params(cfg) + router
    active_block = shared + min(cfg.experts_per_token, experts) * ffn_params(cfg) + router
    embeddings = vocab_size * d * (1 if cfg.tie_embeddings else 2)
    non_embedding = L * per_block + _norm(cfg, d)  # + final norm
    active = L * active_block + _norm(cfg, d) + embeddings
    return {"params": non_embedding + embeddings, "non_embedding_params": non_embedding,
            "active_params": active}


def attended_keys(cfg: ModelConfig, seq_len: int) -> float:
    """Keys per query that the attention FLOPs count: seq_len (PaLM's convention for full
    causal attention), times the share of causal query-key pairs a sliding window keeps."""
    w, T = cfg.sliding_window, seq_len
    if w <= 0 or w >= T:
        return float(T)
    causal = T * (T + 1) / 2
    kept = w * (w + 1) / 2 + (T - w) * w  # the first w queries see all before them
    return T * kept / causal


def flops_per_token(cfg: ModelConfig, vocab_size: int, seq_len: int) -> float:
    """Training FLOPs per token: 6 x (active non-embedding parameters + the output
    projection) plus attention, 12 x n_layers x d_model x attended keys."""
    c = count_params(cfg, vocab_size)
    embeddings = vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)
    n = c["active_params"] - embeddings + vocab_size * cfg.d_model  # the output matmul
    return 6.0 * n + 12.0 * cfg.n_layers * cfg.d_model * attended_keys(cfg, seq_len)
