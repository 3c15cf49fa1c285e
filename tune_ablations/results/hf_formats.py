"""Our model's weights in the Hugging Face ecosystem's formats, and back.

Design choices:
- `ffn=swiglu` with RoPE is exactly `LlamaForCausalLM`: Llama's RMSNorm, rotate-half RoPE,
  `down(silu(gate(x)) * up(x))` and head_dim**-0.5 attention are ours; the differences are our
  embedding scale sqrt(d_model), folded into Llama's input embedding (so its `lm_head` is the
  unscaled embedding, untied), our fused `qkv` (split in three) and our fused up projection
  (first half `up_proj`, second half `gate_proj`). Loading needs no project code.
- Every other model (the reference's `ffn=silu`, or `pos_encoding=none`) matches no stock class:
  it is written with `hf_remote_code.py` as `modeling_tune_ablations.py` and an `auto_map`, the
  standard route for a custom architecture (`trust_remote_code=True`), keeping our keys.
- config.json always carries a `tune_ablations` block (the run's flat config, the trial and
  experiment) so `to_ours` can rebuild our `TransformerLM` from either format.
- RoPE's base is written both as `rope_theta` (transformers 4.x) and `rope_parameters` (5.x).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..spec.config import ModelConfig

REMOTE_CODE_FILE = "modeling_tune_ablations.py"
LLAMA, REMOTE = "llama", "tune_ablations"


def stock_fits(m: ModelConfig) -> bool:
    """Whether a stock transformers class computes exactly what this model computes."""
    return m.ffn == "swiglu" and m.pos_encoding == "rope"


def to_llama(state: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict -> LlamaForCausalLM's (identical logits)."""
    embed = state["embed.weight"]
    out = {"model.embed_tokens.weight": embed * math.sqrt(m.d_model),
           "lm_head.weight": embed.clone(), "model.norm.weight": state["norm.weight"]}
    for i in range(m.n_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        q, k, v = state[ours + "attn.qkv.weight"].chunk(3, dim=0)
        up, gate = state[ours + "ffn.up.weight"].chunk(2, dim=0)
        out |= {theirs + "self_attn.q_proj.weight": q, theirs + "self_attn.k_proj.weight": k,
                theirs + "self_attn.v_proj.weight": v,
                theirs + "self_attn.o_proj.weight": state[ours + "attn.proj.weight"],
                theirs + "mlp.up_proj.weight": up, theirs + "mlp.gate_proj.weight": gate,
                theirs + "mlp.down_proj.weight": state[ours + "ffn.down.weight"],
                theirs + "input_layernorm.weight": state[ours + "norm1.weight"],
                theirs + "post_attention_layernorm.weight": state[ours + "norm2.weight"]}
    return {k: v.contiguous() for k, v in out.items()}


def from_llama(state: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    """LlamaForCausalLM's state dict (as `to_llama` wrote it) -> ours."""
    out = {"embed.weight": state["lm_head.weight"], "norm.weight": state["model.norm.weight"]}
    for i in range(m.n_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        attn, mlp = theirs + "self_attn.", theirs + "mlp."
        out |= {ours + "attn.qkv.weight": torch.cat(
                    [state[attn + f"{x}_proj.weight"] for x in "qkv"]),
                ours + "attn.proj.weight": state[attn + "o_proj.weight"],
                ours + "ffn.up.weight": torch.cat(
                    [state[mlp + "up_proj.weight"], state[mlp + "gate_proj.weight"]]),
                ours + "ffn.down.weight": state[mlp + "down_proj.weight"],
                ours + "norm1.weight": state[theirs + "input_layernorm.weight"],
                ours + "norm2.weight": state[theirs + "post_attention_layernorm.weight"]}
    return out


def hf_config(m: ModelConfig, vocab: int, seq_len: int, eos: int | None,
              meta: dict[str, Any]) -> dict[str, Any]:
    """config.json for the format `stock_fits` picks; `meta` goes in as `tune_ablations`."""
    common = {"vocab_size": vocab, "rms_norm_eps": 1e-6, "torch_dtype": "float32",
              "bos_token_id": eos, "eos_token_id": eos, "pad_token_id": eos,
              "use_cache": True, "tune_ablations": meta}
    if stock_fits(m):
        return common | {
            "model_type": LLAMA, "architectures": ["LlamaForCausalLM"],
            "hidden_size": m.d_model, "intermediate_size": m.d_ff,
            "num_hidden_layers": m.n_layers, "num_attention_heads": m.n_heads,
            "num_key_value_heads": m.n_heads, "head_dim": m.head_dim, "hidden_act": "silu",
            "max_position_embeddings": max(m.max_seq_len, seq_len),
            "rope_theta": m.rope_base,
            "rope_parameters": {"rope_type": "default", "rope_theta": m.rope_base},
            "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False}
    stem = REMOTE_CODE_FILE.removesuffix(".py")
    return common | {
        "model_type": REMOTE, "architectures": ["TuneAblationsForCausalLM"],
        "auto_map": {"AutoConfig": f"{stem}.TuneAblationsConfig",
                     "AutoModelForCausalLM": f"{stem}.TuneAblationsForCausalLM"},
        "d_model": m.d_model, "n_heads": m.n_heads, "n_layers": m.n_layers, "d_ff": m.d_ff,
        "ffn": m.ffn, "pos_encoding": m.pos_encoding, "rope_base": m.rope_base,
        "max_seq_len": m.max_seq_len, "tie_word_embeddings": True}


def write_remote_code(out: Path) -> None:
    """The self-contained modeling file that `auto_map` names."""
    source = Path(__file__).with_name("hf_remote_code.py").read_text()
    (out / REMOTE_CODE_FILE).write_text(source)


def to_hf(state: dict[str, torch.Tensor], m: ModelConfig) -> dict[str, torch.Tensor]:
    """Weights in the format `stock_fits` picks (the remote-code model keeps our keys)."""
    if stock_fits(m):
        return to_llama(state, m)
    return {k: v.contiguous() for k, v in state.items()}


def to_ours(state: dict[str, torch.Tensor], model_type: str,
            m: ModelConfig) -> dict[str, torch.Tensor]:
    """An exported state dict back to our TransformerLM's keys."""
    return from_llama(state, m) if model_type == LLAMA else state
