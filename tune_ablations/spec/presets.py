"""The scale presets: the baseline each preset trains (what the arms of a question change).

Design choices:
- `seed` holds the reference's published baseline (for a GPU). `cpu` rescales it for a 2-core
  CPU by rules (widths x1/2, depths and sequence lengths x1/4, learning rate x CPU_LR_SCALE),
  and `tiny` is for tests and --smoke-test. What each arm is lives in question files
  (`questions.py`; the six reference ablations are the shipped `reference` question), stated
  relative to the baseline, so every arm keeps its relation to the baseline at every preset.
"""

from __future__ import annotations

from typing import Any

from .arms import BASELINE
from .config import (
    EMBEDDED_CORPORA,
    HUB_PREFIX,
    PRESETS,
    RunConfig,
    to_flat_dict,
    unknown_key_error,
    with_overrides,
)
from .questions import reference

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
# `tiny`: for tests and --smoke-test; minutes become seconds.
_TINY_FIXED: dict[str, Any] = {
    "d_model": 32, "n_heads": 2, "n_layers": 2, "d_ff": 64, "seq_len": 32, "batch_size": 4,
    "max_steps": 30, "eval_every": 10, "warmup_steps": 3, "vocab_size": 512, "eval_tokens": 1024,
    "num_documents": 0, "text_samples": 1,
}
CPU_TIME_BUDGET = 300.0
# Roughly the tokens of one document of the reference corpus (cosmopedia-v2, SmolLM tokenizer):
# used to size a Hub corpus to about one epoch of the preset's budget.
HUB_TOKENS_PER_DOCUMENT = 700


def default_preset(n_gpus: int) -> str:
    """`seed` (the published scale) where a GPU is available, else `cpu`."""
    return "seed" if n_gpus > 0 else "cpu"


def baseline_settings(preset: str) -> dict[str, Any]:
    """Flat settings of the baseline at `preset` (keys not named keep the config's defaults)."""
    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} must be one of {', '.join(PRESETS)}")
    flat = dict(_SEED_BASE)
    if preset == "cpu":
        for key, factor in _CPU_SCALE.items():
            flat[key] = max(1, round(flat[key] * factor))
        flat["lr"] = float(f"{CPU_LR_SCALE * flat['lr']:.6g}")
        flat.update(_CPU_FIXED)
    elif preset == "tiny":
        flat.update(_TINY_FIXED)
        flat["lr"] = float(f"{10 * flat['lr']:.6g}")  # 30 steps visibly learn
    return flat


def time_budget(preset: str) -> float:
    """Seconds a grid's --seeds auto may spend before it stops adding seeds, unless given
    (0: none): the `cpu` preset's default command answers in about 6 minutes on 2 cores."""
    return CPU_TIME_BUDGET if preset == "cpu" else 0.0


def build_ablation(name: str, preset: str = "seed", **overrides: Any) -> RunConfig:
    """Arm `name` of the reference question at a scale preset, with optional config-field
    overrides applied last (no budgets or derived widths: those go through `resolve`)."""
    flat = baseline_settings(preset)
    if name != BASELINE:
        arms = {a.name: a for a in reference().arms}
        if name not in arms:
            raise unknown_key_error(name, [BASELINE, *arms], what="ablation")
        full = {**to_flat_dict(RunConfig()), **flat}
        flat.update(arms[name].apply(full, preset))
    flat.update(overrides)
    return with_overrides(RunConfig(name=name), flat)


def is_named_corpus(name: str) -> bool:
    """An embedded corpus, `reference` or a Hub corpus: a name, not a path."""
    return name in EMBEDDED_CORPORA or name == "reference" or name.startswith(HUB_PREFIX)
