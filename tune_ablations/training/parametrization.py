"""How a model's initialisation, multipliers and per-layer learning rates depend on its width:
`standard` (the reference's) or `mup` (Yang et al. 2022, "Tensor Programs V", for Adam).

Design choices:
- One place for every width rule: the model asks `input_multiplier` / `output_multiplier` and
  `init_weights`; the optimizer asks `lr_multiplier` per parameter (`optimizers._groups`); the
  Llama export folds the two multipliers into its untied embedding and head.
- muP in the readout-multiplier form (TP-V, Table 8; the `mup` package's MuSharedReadout),
  which suits a tied embedding: with width_mult m = d_model / mup_base_width,
  * hidden matrices (every weight of 2 or more dimensions inside the blocks): init std
    0.02 / sqrt(m) (variance ~ 1/fan_in, every hidden fan_in grows with d_model) and Adam
    learning rate lr / m;
  * the embedding (input, and tied output): init std 0.02 and learning rate lr at every width;
    the input is multiplied by sqrt(mup_base_width) (a constant; standard multiplies by
    sqrt(d_model)) and the logits by 1 / m (the output multiplier);
  * norm gains: init 1, learning rate lr.
  At m = 1 (d_model = mup_base_width) muP computes exactly the standard model, so a learning
  rate tuned at the base width is where the ladder starts.
- Attention keeps 1/sqrt(head_dim): muP's 1/head_dim matters when head_dim grows; the ladder
  grows heads at a fixed head_dim, where the two differ by a constant.
- The rules are for Adam (update entries of size lr whatever the gradient's scale): AdamW,
  Lion and schedule-free AdamW; `config.validate` refuses muP with SGD or Muon.
- Decoupled weight decay follows each group's rate (lr / m x weight_decay for hidden
  matrices), as the `mup` package's MuAdamW.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from ..spec.config import ModelConfig

INIT_STD = 0.02
"""The reference's init std of every weight (and muP's at the base width)."""


def width_mult(m: ModelConfig) -> float:
    """d_model / mup_base_width under muP (a base of 0 stands for d_model itself); 1 under
    the standard parametrization."""
    if m.parametrization != "mup" or not m.mup_base_width:
        return 1.0
    return m.d_model / m.mup_base_width


def input_multiplier(m: ModelConfig) -> float:
    """What the token embedding is multiplied by: sqrt(d_model), or sqrt(base width) (muP)."""
    base = m.mup_base_width or m.d_model
    return math.sqrt(base if m.parametrization == "mup" else m.d_model)


def output_multiplier(m: ModelConfig) -> float:
    """What the logits are multiplied by: 1, or 1 / width_mult (muP)."""
    return 1.0 / width_mult(m)


def is_hidden(name: str, p: torch.Tensor) -> bool:
    """A hidden matrix: a weight of 2 or more dimensions inside the blocks."""
    return p.dim() >= 2 and name.startswith("blocks.")


def lr_multiplier(name: str, p: torch.Tensor, m: ModelConfig) -> float:
    """The factor on `lr` of parameter `name`: 1 / width_mult for hidden matrices under muP."""
    return 1.0 / width_mult(m) if is_hidden(name, p) else 1.0


def init_weights(model: nn.Module, m: ModelConfig) -> None:
    """Normal(0, std) for every weight of 2 or more dimensions (0.02, hidden ones / sqrt of
    width_mult under muP); norm gains keep their ones."""
    hidden_std = INIT_STD / math.sqrt(width_mult(m))
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            nn.init.normal_(p, mean=0.0, std=hidden_std if is_hidden(name, p) else INIT_STD)
