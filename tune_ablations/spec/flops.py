"""Parameter and FLOP counts from a model config alone (no torch): the project's one
convention for N and compute. `--iso-flops` budgets (spec.resolve) and MFU (the trainer) call
these functions; the trainer records their values with every run (`params`,
`flops_per_token`), and scaling fits (results.scaling) read those records, so a fit's N and
compute axis are exactly what `--iso-flops` equalises. Count new architectures (MoE, GQA,
sliding windows) here and every consumer follows."""

from __future__ import annotations

from .config import ModelConfig


def count_params(cfg: ModelConfig, vocab_size: int) -> dict[str, int]:
    """Parameter counts from the config alone: total (tied embedding counted once) and
    non-embedding."""
    d, L = cfg.d_model, cfg.n_layers
    ffn = (3 if cfg.ffn == "swiglu" else 2) * d * cfg.d_ff
    per_block = 4 * d * d + ffn + 2 * d  # qkv + proj, FFN, two RMSNorm weights
    non_embedding = L * per_block + d  # + final norm
    return {"params": non_embedding + vocab_size * d, "non_embedding_params": non_embedding}


def flops_per_token(cfg: ModelConfig, vocab_size: int, seq_len: int) -> float:
    """Training FLOPs per token: 6N (N includes the tied output projection) plus the attention
    term 12 * n_layers * d_model * seq_len (PaLM, Chowdhery et al. 2022, appendix B)."""
    n = count_params(cfg, vocab_size)["params"]
    return 6.0 * n + 12.0 * cfg.n_layers * cfg.d_model * seq_len
