"""The transformers wrapper around tune_ablations' own model, for models that no stock class
matches. `hf_formats.remote_code()` writes it beside the weights as `modeling_tune_ablations.py`,
with the block between the `<project>` markers replaced by training/model.py's source text and
the model config's defaults, and config.json's `auto_map` names it, so

    AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)

loads the model with no tune_ablations installed: the generated file imports only torch and
transformers (4.44 or newer, 5.x included). There is one model: this file adds only what the
Hugging Face interface needs. It honours `attention_mask` (a left-padded batch gives each
sequence the positions and logits it has alone: RoPE positions count real tokens only, padding
is never attended to) and keeps a key-value cache (transformers' `DynamicCache`, in 4.x and 5.x),
so `generate()` computes each new token from the cached keys and values.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

# <project>
from ..spec.config import ModelConfig
from ..training.model import TransformerLM, causal_mask, rope_at

MODEL_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
# </project>

RENAMED = {"sliding_window": "local_attention_window"}
"""Model fields stored under another name in config.json: transformers 5 gives a config with a
`sliding_window` a cache that forgets older keys, which our masks count."""


class TuneAblationsConfig(PretrainedConfig):
    model_type = "tune_ablations"
    attribute_map = {"hidden_size": "d_model", "num_attention_heads": "n_heads",
                     "num_hidden_layers": "n_layers", "intermediate_size": "d_ff",
                     "max_position_embeddings": "max_seq_len"}

    def __init__(self, vocab_size: int = 1024, rms_norm_eps: float = 1e-6,
                 use_cache: bool = True, **kwargs):
        for key, default in MODEL_DEFAULTS.items():
            name = RENAMED.get(key, key)
            setattr(self, name, kwargs.pop(name, default))
        self.vocab_size, self.rms_norm_eps = vocab_size, rms_norm_eps
        self.use_cache = use_cache  # (5.x has no default)
        super().__init__(**kwargs)

    def model_config(self) -> SimpleNamespace:
        """The fields TransformerLM reads, under their own names."""
        return SimpleNamespace(**{k: getattr(self, RENAMED.get(k, k)) for k in MODEL_DEFAULTS})


def attention_mask_4d(attention_mask, past: int, T: int, window: int, device) -> torch.Tensor:
    """(B, 1, T, past + T) True where a query may attend: earlier or same positions (within
    the window) that are not padding. A padding query attends to itself only (its output is
    never used; a row with nothing to attend to would be NaN and poison the cached values)."""
    S = past + T
    causal = causal_mask(T, past, window, device)
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
        self.lm = TransformerLM(config.model_config(), config.vocab_size)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def get_input_embeddings(self):
        return self.lm.embed

    def set_input_embeddings(self, value):
        self.lm.embed = value

    def forward(self, input_ids=None, attention_mask=None, past_key_values=None,
                position_ids=None, use_cache=None, labels=None, **kwargs):
        m = self.lm.cfg
        T = input_ids.shape[1]
        cache = past_key_values
        if cache is None and (self.config.use_cache if use_cache is None else use_cache):
            from transformers import DynamicCache

            cache = DynamicCache()
        past = cache.get_seq_length() if cache is not None else 0
        if position_ids is None:
            position_ids = _positions(attention_mask, past, T, input_ids.device)
        # Tables for these positions, not the model's buffers: transformers may build the
        # model on the meta device, where a non-persistent buffer would never be filled.
        rope = rope_at(position_ids, m.d_model // m.n_heads, m.rope_base)  # (B, T, D/2)
        padded = attention_mask is not None and not bool(attention_mask.bool().all())
        mask = attention_mask_4d(attention_mask if padded else None, past, T, m.sliding_window,
                                 input_ids.device) if padded or past else None
        logits = self.lm(input_ids, rope=rope, mask=mask, cache=cache)
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
