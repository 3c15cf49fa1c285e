"""A self-contained transformers model for tune_ablations' models that no stock class matches
(the reference's SiLU feed-forward, or no positional encoding). `export` copies this file beside
the weights as `modeling_tune_ablations.py` and names it in config.json's `auto_map`, so

    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)

loads the model with no tune_ablations installed. It imports only torch and transformers (4.40
or newer, 5.x included) and computes exactly what tune_ablations' TransformerLM computes:
embedding x sqrt(d_model), pre-norm RMSNorm blocks, causal attention with rotary embeddings that
rotate the two halves of each head, a SiLU (or SwiGLU) feed-forward, a final RMSNorm and an
output projection tied to the embedding. It keeps no key-value cache: generation reruns the
whole sequence at each step, which is exact and fast enough at these sizes.
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
                 max_seq_len: int = 4096, rms_norm_eps: float = 1e-6, **kwargs):
        self.vocab_size, self.d_model, self.n_heads = vocab_size, d_model, n_heads
        self.n_layers, self.d_ff, self.ffn = n_layers, d_ff, ffn
        self.pos_encoding, self.rope_base, self.max_seq_len = pos_encoding, rope_base, max_seq_len
        self.rms_norm_eps = rms_norm_eps
        kwargs.setdefault("use_cache", False)
        super().__init__(**kwargs)


def rope_tables(seq_len: int, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
    angles = torch.outer(torch.arange(seq_len).float(), inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    T = x.shape[-2]
    cos, sin = cos[:T].to(x.dtype), sin[:T].to(x.dtype)
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
    def __init__(self, c: TuneAblationsConfig):
        super().__init__()
        self.n_heads, self.head_dim = c.n_heads, c.d_model // c.n_heads
        self.qkv = nn.Linear(c.d_model, 3 * c.d_model, bias=False)
        self.proj = nn.Linear(c.d_model, c.d_model, bias=False)
        self.rope = c.pos_encoding == "rope"

    def forward(self, x, cos, sin):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_heads, self.head_dim).unbind(2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, D)
        if self.rope:
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
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
    def __init__(self, c: TuneAblationsConfig):
        super().__init__()
        self.norm1, self.attn = RMSNorm(c.d_model, c.rms_norm_eps), Attention(c)
        self.norm2, self.ffn = RMSNorm(c.d_model, c.rms_norm_eps), FeedForward(c)

    def forward(self, x, cos, sin):
        x = x + self.attn(self.norm1(x), cos, sin)
        return x + self.ffn(self.norm2(x))


class TuneAblationsForCausalLM(PreTrainedModel, GenerationMixin):
    config_class = TuneAblationsConfig
    base_model_prefix = "tune_ablations"
    _no_split_modules = ["Block"]

    def __init__(self, config: TuneAblationsConfig):
        super().__init__(config)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.rms_norm_eps)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_input_embeddings(self):
        return self.embed

    def set_input_embeddings(self, value):
        self.embed = value

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        c = self.config
        x = self.embed(input_ids) * math.sqrt(c.d_model)  # (B, T, C)
        # Tables computed here, not buffers: transformers may build the model on the meta
        # device, where a non-persistent buffer would never be filled.
        cos, sin = rope_tables(input_ids.shape[1], c.d_model // c.n_heads, c.rope_base)
        cos, sin = cos.to(x.device), sin.to(x.device)
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = F.linear(self.norm(x), self.embed.weight)  # tied output projection
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(),
                                   labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids, **kwargs):
        return {"input_ids": input_ids}  # no cache: the whole sequence at every step
