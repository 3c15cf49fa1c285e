"""The six reference ablations and the scale presets: what each arm is, at each scale.

Design choices:
- `ABLATIONS` holds the six reference ablations as published (preset `seed`, for a GPU): each
  is a set of overrides of the baseline.
- The `cpu` and `tiny` presets rescale them while keeping each arm's relation to the baseline
  (the same learning-rate ratios, batch-size and sequence-length ratios, small_model at 2/3 of
  the baseline's width, depth and heads).
"""

from __future__ import annotations

from typing import Any

from .config import (
    EMBEDDED_CORPORA,
    HUB_PREFIX,
    PRESETS,
    RunConfig,
    unknown_key_error,
    with_overrides,
)

# Exactly as published (preset `seed`): overrides of the baseline.
ABLATIONS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "high_lr": {"lr": 1e-3},
    "low_lr": {"lr": 1e-4},
    "large_batch": {"batch_size": 16, "lr": 5e-4},
    "short_seq": {"seq_len": 256, "batch_size": 12},
    "small_model": {"d_model": 256, "n_heads": 4, "n_layers": 8, "d_ff": 1024, "batch_size": 12},
}

_SEED_BASE: dict[str, Any] = {
    "d_model": 384, "n_heads": 6, "n_layers": 12, "d_ff": 1536, "batch_size": 8, "lr": 3e-4,
    "seq_len": 512, "max_steps": 2000, "eval_every": 400, "num_documents": 0,
    "warmup_steps": 100, "weight_decay": 0.1, "beta1": 0.9, "beta2": 0.95, "grad_clip": 1.0,
    "min_lr_ratio": 0.1, "precision": "auto", "vocab_size": 8192, "eval_tokens": 65536,
}

# `cpu`: widths x1/2, depths and sequence lengths x1/4, batch sizes unchanged; learning rates
# scaled by CPU_LR_SCALE, every ratio between arms kept. The scale puts the baseline at its
# measured learning-rate optimum at this budget (benchmarks/RESULTS.md, section 5).
_CPU_SCALE = {"d_model": 0.5, "d_ff": 0.5, "n_layers": 0.25, "seq_len": 0.25}
CPU_LR_SCALE = 8.0
_CPU_FIXED: dict[str, Any] = {  # warmup 10%: at 5%, rates above 1.2e-3 lost up to 0.25 nats
    "max_steps": 120, "eval_every": 40, "warmup_steps": 12, "num_documents": 0,
    "vocab_size": 1024, "eval_tokens": 16384, "precision": "auto",
}
# `tiny`: for tests and --smoke-test; minutes become seconds, relations are not kept.
_TINY_FIXED: dict[str, Any] = {
    "d_model": 32, "n_heads": 2, "n_layers": 2, "d_ff": 64, "seq_len": 32, "batch_size": 4,
    "max_steps": 30, "eval_every": 10, "warmup_steps": 3, "vocab_size": 512, "eval_tokens": 1024,
    "num_documents": 0, "text_samples": 1,
}
# Roughly the tokens of one document of the reference corpus (cosmopedia-v2, SmolLM tokenizer):
# used to size a Hub corpus to about one epoch of the preset's budget.
HUB_TOKENS_PER_DOCUMENT = 700


def default_preset(n_gpus: int) -> str:
    """`seed` (the published scale) where a GPU is available, else `cpu`."""
    return "seed" if n_gpus > 0 else "cpu"


def preset_overrides(name: str, preset: str) -> dict[str, Any]:
    """Flat overrides that make ablation `name` at `preset` from the default dataclasses."""
    if name not in ABLATIONS:
        raise unknown_key_error(name, list(ABLATIONS), what="ablation")
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} must be one of {', '.join(PRESETS)}")
    flat = {**_SEED_BASE, **ABLATIONS[name]}
    if preset == "cpu":
        for key, factor in _CPU_SCALE.items():
            flat[key] = max(1, round(flat[key] * factor))
        flat["lr"] = float(f"{CPU_LR_SCALE * flat['lr']:.6g}")
        flat.update(_CPU_FIXED)
    elif preset == "tiny":
        flat.update(_TINY_FIXED)
        if name == "short_seq":
            flat["seq_len"] = 16
        elif name == "large_batch":
            flat["batch_size"] = 8
        elif name == "small_model":
            flat.update(d_model=16, n_layers=1, n_heads=2, d_ff=32)
        flat["lr"] = float(f"{10 * flat['lr']:.6g}")  # 30 steps visibly learn; LR ratios kept
    return flat


def build_ablation(name: str, preset: str = "seed", **overrides: Any) -> RunConfig:
    """The named reference ablation at a scale preset, with optional config-field overrides
    (no budgets or derived widths: those go through `resolve`)."""
    flat = preset_overrides(name, preset)
    flat.update(overrides)
    return with_overrides(RunConfig(name=name), flat)


def defined_keys(name: str) -> set[str]:
    """Config keys that ablation `name` sets differently from the baseline."""
    if name not in ABLATIONS:
        raise unknown_key_error(name, list(ABLATIONS), what="ablation")
    return set(ABLATIONS[name])




def is_named_corpus(name: str) -> bool:
    """An embedded corpus, `reference` or a Hub corpus: a name, not a path."""
    return name in EMBEDDED_CORPORA or name == "reference" or name.startswith(HUB_PREFIX)
