"""Run spec -> `RunConfig`: the only place that interprets ablations, presets and selectors.

A run spec is a flat mapping (what `--set`, `best.toml`, search spaces and Ray's `param_space`
hold): selector keys pick and scale a base config, every other key overrides a config field.

Design choices:
- `ABLATIONS` holds the six reference ablations as published (preset `seed`, for a GPU); the `cpu`
  and `tiny` presets rescale them while keeping each one's relation to the baseline.
- Budgets are defined against the *reference run*: the baseline at the same preset with only the
  budget keys of the spec applied (`max_steps`, `eval_every`, `warmup_steps`). `iso_tokens`
  trains every run on the reference's token count, whatever the run's own batch size and
  sequence length, so a search over batch or sequence length is iso-token, not iso-step.
- Every run evaluates at the same token milestones (multiples of the reference's evaluation
  interval in tokens), so runs with different tokens per step report at the same `tokens_seen`
  (within one step) and ASHA's rungs fall on a report of every trial.
- An override of a key that an ablation defines would silently make that arm equal to the
  baseline; `check_collapse` refuses it unless forced.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from .config import (
    EMBEDDED_CORPORA,
    HUB_PREFIX,
    PRESETS,
    REFERENCE_CORPUS,
    REFERENCE_TOKENIZER,
    RunConfig,
    unknown_key_error,
    with_overrides,
)
from .flops import flops_per_token

# Flat keys that select or scale a base config rather than set a field.
SELECTOR_KEYS = ("ablation", "preset", "iso_tokens", "iso_flops", "token_budget", "head_dim",
                 "ffn_mult", "match_params")
# Keys of a spec that define the reference run's budget and evaluation cadence.
BUDGET_KEYS = ("max_steps", "eval_every", "warmup_steps")

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
# scaled by CPU_LR_SCALE (muP: a model half as wide takes about twice the rate, and a run 10x
# shorter needs a higher one), every ratio between arms kept. Measured in benchmarks/RESULTS.md.
_CPU_SCALE = {"d_model": 0.5, "d_ff": 0.5, "n_layers": 0.25, "seq_len": 0.25}
CPU_LR_SCALE = 4.0
_CPU_FIXED: dict[str, Any] = {
    "max_steps": 240, "eval_every": 40, "warmup_steps": 12, "num_documents": 0,
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
    """The named reference ablation at a scale preset, with optional flat-key overrides (fields
    only; selectors go through `resolve`)."""
    flat = preset_overrides(name, preset)
    flat.update(overrides)
    return with_overrides(RunConfig(name=name), flat)


def defined_keys(name: str) -> set[str]:
    """Config keys that ablation `name` sets differently from the baseline."""
    if name not in ABLATIONS:
        raise unknown_key_error(name, list(ABLATIONS), what="ablation")
    return set(ABLATIONS[name])


def collapsed_arms(overrides: Mapping[str, Any], ablations: Iterable[str]) -> dict[str, list[str]]:
    """{key: arms it would collapse}: an override of a key an arm defines makes that arm's
    value the same as every other arm's."""
    out: dict[str, list[str]] = {}
    for key in overrides:
        arms = [a for a in ablations if key in defined_keys(a)]
        if arms:
            out[key] = arms
    return out


def check_collapse(overrides: Mapping[str, Any], ablations: Iterable[str], *, force: bool,
                   where: str = "--set") -> dict[str, list[str]]:
    """Refuse overrides that would flatten an ablation, unless `force`; returns what was forced."""
    hit = collapsed_arms(overrides, list(ablations))
    if hit and not force:
        key, arms = next(iter(hit.items()))
        raise ValueError(
            f"{where} {key}={overrides[key]!r} would give {', '.join(arms)} the same {key} as "
            f"every other arm ({', '.join(arms)} {'is' if len(arms) == 1 else 'are'} defined by "
            f"{key}); drop it, leave those arms out with --ablations, or pass --force-set")
    return hit


def data_overrides(data: str, preset: str | None = None) -> dict[str, Any]:
    """`--data`: an embedded corpus, `reference` (SmolLM cosmopedia-v2 with its tokenizer, from
    the Hub), `hf:<dataset>/<config>`, or a local path (made absolute: trials run elsewhere)."""
    from pathlib import Path

    if data == "reference":
        return {"corpus": REFERENCE_CORPUS, "tokenizer": REFERENCE_TOKENIZER}
    if data in EMBEDDED_CORPORA or data.startswith(HUB_PREFIX):
        return {"corpus": data}
    return {"corpus": str(Path(data).expanduser().resolve())}


def reference_run(preset: str, flat: Mapping[str, Any]) -> RunConfig:
    """The baseline at `preset` with only the budget keys of the spec: what `iso_tokens` and
    the evaluation milestones are measured against."""
    return build_ablation("baseline", preset, **{k: flat[k] for k in BUDGET_KEYS if k in flat})


def _derive_widths(flat: dict[str, Any], base: RunConfig, head_dim: Any, ffn_mult: Any) -> None:
    d_model = flat.get("d_model", base.model.d_model)
    if head_dim:
        if not (isinstance(d_model, int) and isinstance(head_dim, int) and head_dim > 0
                and d_model % head_dim == 0):
            raise ValueError(f"d_model={d_model} must be divisible by head_dim={head_dim}")
        flat["n_heads"] = d_model // head_dim
    if ffn_mult:
        flat["d_ff"] = round(ffn_mult * d_model)


def with_token_budget(cfg: RunConfig, tokens: int) -> RunConfig:
    """Train `cfg` on `tokens` tokens; warmup keeps its fraction of the run."""
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens <= 0:
        raise ValueError(f"token_budget={tokens!r} must be an integer > 0")
    new_steps = math.ceil(tokens / cfg.tokens_per_step)
    warm = round(cfg.optim.warmup_steps * new_steps / cfg.steps)
    return with_overrides(cfg, {"tokens": tokens,
                                "warmup_steps": max(0, min(new_steps - 1, warm))})


def resolve(spec: Mapping[str, Any]) -> RunConfig:
    """A run spec -> a validated RunConfig. Selectors: `ablation` (default baseline, or the
    spec's `name` if it is an ablation), `preset` (default seed), `token_budget` (train on that
    many tokens), `iso_tokens` (on the reference run's tokens), `iso_flops` (on the reference
    run's training FLOPs), `head_dim` / `ffn_mult` (derive n_heads / d_ff from d_model),
    `match_params` (a gated `ffn=swiglu` gets d_ff x 2/3, the SiLU FFN's parameter count).
    Every other key overrides a field; an unknown key is an error naming the closest one."""
    flat = dict(spec)
    preset = flat.pop("preset", "seed")
    ablation = flat.pop("ablation", None)
    iso = flat.pop("iso_tokens", False)
    iso_flops = flat.pop("iso_flops", False)
    match = flat.pop("match_params", False)
    budget = flat.pop("token_budget", 0) or 0
    head_dim, ffn_mult = flat.pop("head_dim", None), flat.pop("ffn_mult", None)
    for key, value in (("iso_tokens", iso), ("iso_flops", iso_flops), ("match_params", match)):
        if not isinstance(value, bool):
            raise ValueError(f"{key}={value!r} must be true or false")
    if sum(map(bool, (iso, iso_flops, budget))) > 1:
        raise ValueError("iso_tokens, iso_flops and token_budget each set the budget; keep one")
    if ablation is None:
        ablation = flat.get("name") if flat.get("name") in ABLATIONS else "baseline"
    base = build_ablation(ablation, preset)
    if head_dim or ffn_mult:  # derived architecture, so a searched width stays valid
        _derive_widths(flat, base, head_dim, ffn_mult)
    ref = reference_run(preset, flat)
    corpus = flat.get("corpus", base.data.corpus)
    if isinstance(corpus, str) and corpus.startswith(HUB_PREFIX) and "num_documents" not in flat:
        flat["num_documents"] = hub_documents(ref, flat.get("val_fraction",
                                                            base.data.val_fraction))
    cfg = with_overrides(base, flat)
    if match and cfg.model.ffn == "swiglu":  # three matrices instead of two: d_ff x 2/3
        cfg = with_overrides(cfg, {"d_ff": max(1, round(cfg.model.d_ff * 2 / 3))})
    if iso:
        budget = ref.total_tokens
    elif iso_flops:  # the reference's training FLOPs: smaller models see more tokens
        budget = math.ceil(ref.total_tokens * _fpt(ref) / _fpt(cfg))
    if budget:
        cfg = with_token_budget(cfg, budget)
    if "eval_every_tokens" not in flat:
        cfg = with_overrides(cfg, {"eval_every_tokens": ref.eval.eval_every * ref.tokens_per_step})
    return cfg


def _fpt(cfg: RunConfig) -> float:
    return flops_per_token(cfg.model, cfg.data.vocab_size, cfg.data.seq_len)


def hub_documents(ref: RunConfig, val_fraction: float) -> int:
    """A Hub corpus is streamed, so it needs a document count: enough for about one epoch of
    the reference run's tokens, plus the validation share and a 10% margin."""
    need = ref.total_tokens / (1 - val_fraction) / HUB_TOKENS_PER_DOCUMENT
    return max(100, math.ceil(need * 1.1))
