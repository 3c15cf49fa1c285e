"""A self-contained transformers model for tune_ablations' models that no stock class matches
(the reference's SiLU feed-forward, or no positional encoding). `export` copies this file beside
the weights as `modeling_tune_ablations.py` and names it in config.json's `auto_map`, so

    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)

loads the model with no tune_ablations installed. It imports only torch and transformers (4.40
or newer, 5.x included) and computes exactly what tune_ablations' TransformerLM computes:
embedding x sqrt(d_model), pre-norm RMSNorm blocks, causal attention with rotary embeddings that
rotate the two halves of each head, a SiLU (or SwiGLU) feed-forward, a final RMSNorm and an
output projection tied to the embedding. It honours `attention_mask` (a left-padded batch
gives each sequence the positions and logits it has alone: RoPE positions count real tokens
only, padding is never attended to) and keeps a key-value cache (transformers' `DynamicCache`,
in 4.x and 5.x), so `generate()` computes each new token from the cached keys and values.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast


class TuneAblationsConfig(PretrainedConfig):
    model_type = "tune_ablations"
    attribute_map = {"hidden_size": "d_model", "num_attention_heads": "n_heads",
                     "num_hidden_layers": "n_layers", "intermediate_size": "d_ff",
                     "max_position_embeddings": "max_seq_len"}

    def __init__(self, vocab_size: int = 1024, d_model: int = 192, n_heads: int = 6,
                 n_layers: int = 3, d_ff: int = 768, ffn: str = "silu",
                 pos_encoding: str = "rope", rope_base: float = 10000.0,
                 max_seq_len: int = 4096, rms_norm_eps: float = 1e-6, use_cache: bool = True,
                 **kwargs):
        self.vocab_size, self.d_model, self.n_heads = vocab_size, d_model, n_heads
        self.n_layers, self.d_ff, self.ffn = n_layers, d_ff, ffn
        self.pos_encoding, self.rope_base, self.max_seq_len = pos_encoding, rope_base, max_seq_len
        self.rms_norm_eps, self.use_cache = rms_norm_eps, use_cache  # (5.x has no default)
        super().__init__(**kwargs)


def rope_tables(positions: torch.Tensor, head_dim: int, base: float
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for (B, T) positions: (B, 1, T, head_dim / 2), broadcast over heads."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, device=positions.device).float()
                               / head_dim))
    angles = positions.float()[..., None] * inv_freq  # (B, T, head_dim / 2)
    return angles.cos()[:, None], angles.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class Attention(nn.Module):
    def __init__(self, c: TuneAblationsConfig, layer: int):
        super().__init__()
        self.n_heads, self.head_dim, self.layer = c.n_heads, c.d_model // c.n_heads, layer
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model, bias=False)
        self.proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.rope = c.pos_encoding == "rope"

    def forward(self, x, cos, sin, mask, cache):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if self.rope:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:  # keys and values of every earlier position, then these
            k, v = cache.update(k, v, self.layer)
        if mask is None:  # no padding, no cache: the training model's own call
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # mask: (B, 1, T, S) True where a query may attend
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class FeedForward(nn.Module):
    def __init__(self, c: TuneAblationsConfig):
        super().__init__()
        self.gated = c.ffn == "swiglu"
        self.up = nn.Linear(c.d_model, (2 if self.gated else 1) * c.d_ff, bias=False)
        self.down = nn.Linear(c.d_ff, c.d_model, bias=False)

    def forward(self, x):
        h = self.up(x)
        if self.gated:
            a, g = h.chunk(2, dim=-1)
            return self.down(F.silu(g) * a)
        return self.down(F.silu(h))


class Block(nn.Module):
    def __init__(self, c: TuneAblationsConfig, layer: int):
        super().__init__()
        self.norm1, self.attn = RMSNorm(c.d_model, c.rms_norm_eps), Attention(c, layer)
        self.norm2, self.ffn = RMSNorm(c.d_model, c.rms_norm_eps), FeedForward(c)

    def forward(self, x, cos, sin, mask, cache):
        x = x + self.attn(self.norm1(x), cos, sin, mask, cache)
        return x + self.ffn(self.norm2(x))


def attention_mask_4d(attention_mask, past: int, T: int, device) -> torch.Tensor:
    """(B, 1, T, past + T) True where a query may attend: earlier or same positions that are
    not padding. A padding query attends to itself only (its output is never used; a row with
    nothing to attend to would be NaN and poison the cached values)."""
    S = past + T
    causal = torch.ones(T, S, dtype=torch.bool, device=device).tril(diagonal=past)
    if attention_mask is None:
        return causal[None, None]
    keys = attention_mask[:, None, None, -S:].bool()  # (B, 1, 1, S)
    own = torch.eye(T, S, dtype=torch.bool, device=device).roll(past, dims=1)
    return (causal[None, None] & keys) | own[None, None]


class TuneAblationsForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = TuneAblationsConfig
    base_model_prefix = "tune_ablations"
    _no_split_modules = ["Block"]
    _supports_cache_class = True  # transformers 4.x: generate() hands us a DynamicCache

    def __init__(self, config: TuneAblationsConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.rms_norm_eps)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_input_embeddings(self):
        return self.embed

    def set_input_embeddings(self, value):
        self.embed = value

    def forward(self, input_ids=None, attention_mask=None, past_key_values=None,
                position_ids=None, use_cache=None, labels=None, **kwargs):
        c = self.config
        T = input_ids.shape[1]
        cache = past_key_values
        if cache is None and (c.use_cache if use_cache is None else use_cache):
            from transformers import DynamicCache

            cache = DynamicCache()
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = _positions(attention_mask, past, T, input_ids.device)
        x = self.embed(input_ids) * math.sqrt(c.d_model)  # (B, T, C)
        # Tables computed here, not buffers: transformers may build the model on the meta
        # device, where a non-persistent buffer would never be filled.
        cos, sin = rope_tables(position_ids, c.d_model // c.n_heads, c.rope_base)
        padded = attention_mask is not None and not bool(attention_mask.bool().all())
        mask = attention_mask_4d(attention_mask if padded else None, past, T,
                                 x.device) if padded or past else None
        for block in self.blocks:
            x = block(x, cos, sin, mask, cache)
        logits = F.linear(self.norm(x), self.embed.weight)  # tied output projection
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                   labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=cache)

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None,
                                      attention_mask=None, use_cache=None, **kwargs):
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        return {"input_ids": input_ids[:, past:], "past_key_values": past_key_values,
                "attention_mask": attention_mask, "use_cache": use_cache}


def _positions(attention_mask, past: int, T: int, device) -> torch.Tensor:
    """(B, T) positions: counted over real tokens only when a mask is given (left padding
    shifts nothing), else past, past + 1, ..."""
    if attention_mask is None:
        return torch.arange(past, past + T, device=device)[None]
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)[:, -T:]
