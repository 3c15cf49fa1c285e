"""The coordinate check (Yang et al. 2022, "Tensor Programs V", section 7 and appendix D): train
models of several widths a few Adam steps and measure, per layer, the typical size of an
activation's coordinates and of their change since initialisation. Under muP both stay flat
across widths; under the standard parametrization the change grows with width (and the logits
with it), which is why the best learning rate shifts as a model widens.

Design choices:
- The same fixed batch trains every width (seeded tokens), and activations are read on it at
  step 0 and after `steps` steps: the change is the update's effect on that batch.
- Size = mean |x| over coordinates (the paper's l1 per coordinate); layers: the embedding
  (the first block's input), every block's output, and the logits.
- Everything but the width is held: head_dim, depth, d_ff / d_model, the vocabulary. The
  depth check (CompleteP's) holds everything but the depth, and compares the last block's
  output ("final"), which every depth has.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..spec.config import BudgetConfig, DataConfig, ModelConfig, OptimConfig, RunConfig
from .model import TransformerLM
from .optimizers import build_optimizer


def _activations(model: TransformerLM, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every layer's output on x (B, T), detached."""
    out: dict[str, torch.Tensor] = {}
    hooks = [model.blocks[0].register_forward_pre_hook(
        lambda _m, args: out.__setitem__("embedding", args[0].detach().clone()))]
    for i, block in enumerate(model.blocks):
        hooks.append(block.register_forward_hook(
            lambda _m, _a, y, i=i: out.__setitem__(f"block{i}", y.detach().clone())))
    with torch.no_grad():
        out["logits"] = model(x).detach()
    for h in hooks:
        h.remove()
    out["final"] = out[f"block{len(model.blocks) - 1}"]
    return out


def coordinate_check(widths: list[int], *, parametrization: str, base_width: int,
                     steps: int = 4, lr: float = 1e-2, head_dim: int = 16, n_layers: int = 2,
                     vocab_size: int = 256, seq_len: int = 16, batch_size: int = 8,
                     seed: int = 0) -> dict[int, dict[str, dict[str, float]]]:
    """{width: {layer: {"activation": mean |x_t|, "update": mean |x_t - x_0|}}} after `steps`
    AdamW steps (no warmup, no decay, no clipping) on one fixed batch."""
    models = {d: ModelConfig(d_model=d, n_heads=d // head_dim, n_layers=n_layers, d_ff=4 * d,
                             max_seq_len=seq_len, parametrization=parametrization,
                             mup_base_width=base_width) for d in widths}
    return _measure(models, steps, lr, vocab_size, seq_len, batch_size, seed)


def depth_check(depths: list[int], *, parametrization: str, base_depth: int,
                width: int = 64, steps: int = 4, lr: float = 1e-2, head_dim: int = 16,
                vocab_size: int = 256, seq_len: int = 16, batch_size: int = 8,
                seed: int = 0) -> dict[int, dict[str, dict[str, float]]]:
    """The coordinate check across depth (CompleteP's, Dey et al. 2025): {n_layers: {layer:
    sizes}} as `coordinate_check`, at one width; "final" is the last block's output. Under
    CompleteP the final stream's update stays flat as blocks are added; without its 1/depth
    branch multiplier each block adds its own update, and the sum grows with depth."""
    models = {n: ModelConfig(d_model=width, n_heads=width // head_dim, n_layers=n,
                             d_ff=4 * width, max_seq_len=seq_len,
                             parametrization=parametrization, mup_base_width=width,
                             mup_base_depth=base_depth) for n in depths}
    return _measure(models, steps, lr, vocab_size, seq_len, batch_size, seed)


def _measure(models: dict[int, ModelConfig], steps: int, lr: float, vocab_size: int,
             seq_len: int, batch_size: int, seed: int) -> dict[int, dict[str, dict[str, float]]]:
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (batch_size, seq_len + 1), generator=gen)
    x, y = tokens[:, :-1], tokens[:, 1:]
    out = {}
    for size, m in models.items():
        cfg = RunConfig(model=m, optim=OptimConfig(lr=lr, warmup_steps=0, weight_decay=0.0,
                                                   grad_clip=0.0),
                        data=DataConfig(vocab_size=max(260, vocab_size), seq_len=seq_len,
                                        batch_size=batch_size),
                        budget=BudgetConfig(max_steps=steps + 1), device="cpu")
        torch.manual_seed(seed)
        model = TransformerLM(replace(cfg.model), vocab_size)
        opt = build_optimizer(model, cfg)
        before = _activations(model, x)
        for _ in range(steps):
            loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        after = _activations(model, x)
        out[size] = {k: {"activation": after[k].abs().mean().item(),
                         "update": (after[k] - before[k]).abs().mean().item()} for k in after}
    return out
