"""RunSpec -> `RunConfig`: the one resolver, the only place that interprets budgets, the
reference run, derived widths and collapsed arms.

Design choices:
- What each arm is at each scale lives in `presets.py`; this module turns a spec into a config.
- Budgets are defined against the *reference run*: the baseline at the same preset with the
  spec's shared settings (overrides, data, derived widths; not the settings a sweep varies per
  trial). The baseline arm therefore always trains its own budget, and `iso_flops` counts the
  FLOPs of the model that will actually be built, with the tokenizer's real vocabulary.
- One warmup rule for token budgets: every run warms up over the reference run's warmup
  *tokens*. A run of `--tokens B` and a cooldown probe at B (branched from a longer run) then
  train exactly the same schedule. `--published-steps` keeps each arm's own warmup steps.
- Every run evaluates at the same token milestones (multiples of the reference's evaluation
  interval, in tokens), so runs with different tokens per step report at the same
  `tokens_seen` (within one step) and ASHA's rungs fall on a report of every trial.
- An override of a key that an ablation defines would silently make that arm equal to the
  baseline; `check_collapse` refuses it unless forced.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from .config import (
    HUB_PREFIX,
    REFERENCE_CORPUS,
    REFERENCE_TOKENIZER,
    RunConfig,
    with_overrides,
)
from .flops import flops_per_token
from .presets import HUB_TOKENS_PER_DOCUMENT, build_ablation, defined_keys
from .runspec import RunSpec


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


def data_fields(spec: RunSpec) -> dict[str, Any]:
    """The config fields that the spec's `data` and `eval_data` name: an embedded corpus,
    `reference` (SmolLM cosmopedia-v2 with its tokenizer, from the Hub), `hf:<dataset>/<config>`
    or a local path."""
    out: dict[str, Any] = {"corpus": spec.data}
    if spec.data == "reference":
        out = {"corpus": REFERENCE_CORPUS, "tokenizer": REFERENCE_TOKENIZER}
    if spec.eval_data:
        out["eval_data"] = ",".join(spec.eval_data)
    return out


def _shared(spec: RunSpec) -> dict[str, Any]:
    """Config fields every run of the spec shares (data, then the user's overrides); a Hub
    corpus gets a document count sized from the reference run's tokens."""
    flat = {**data_fields(spec), **dict(spec.overrides)}
    if flat["corpus"].startswith(HUB_PREFIX) and "num_documents" not in flat:
        steps = {"max_steps": spec.max_steps} if spec.max_steps else {}
        probe = _build("baseline", spec, {**flat, **steps, "num_documents": 1})
        flat["num_documents"] = hub_documents(probe, probe.data.val_fraction)
    return flat


def _derive(flat: dict[str, Any], base: RunConfig, spec: RunSpec) -> dict[str, Any]:
    """n_heads from `head_dim` and d_ff from `ffn_mult` (so a searched width stays valid)."""
    d_model = flat.get("d_model", base.model.d_model)
    if spec.head_dim:
        if not (isinstance(d_model, int) and d_model % spec.head_dim == 0):
            raise ValueError(f"d_model={d_model} must be divisible by head_dim={spec.head_dim}")
        flat["n_heads"] = d_model // spec.head_dim
    if spec.ffn_mult:
        flat["d_ff"] = round(spec.ffn_mult * d_model)
    return flat


def _build(ablation: str, spec: RunSpec, flat: dict[str, Any]) -> RunConfig:
    base = build_ablation(ablation, spec.preset)
    cfg = with_overrides(base, _derive(dict(flat), base, spec))
    if spec.match_params and cfg.model.ffn == "swiglu":  # three matrices: d_ff x 2/3
        cfg = with_overrides(cfg, {"d_ff": max(1, round(cfg.model.d_ff * 2 / 3))})
    if spec.lr_width:  # muP for Adam: hidden-layer rates scale as 1/width
        cfg = with_overrides(cfg, {"lr": cfg.optim.lr * spec.lr_width / cfg.model.d_model})
    return cfg


def reference_run(spec: RunSpec) -> RunConfig:
    """The baseline at the spec's preset with its shared settings (and the budget's steps):
    what budgets, warmup and evaluation milestones are measured against."""
    flat = _shared(spec)
    if spec.max_steps:
        flat["max_steps"] = spec.max_steps
    return _build("baseline", spec, flat)


def resolve(spec: RunSpec, vocab_size: int | None = None) -> RunConfig:
    """A run spec -> a validated RunConfig. `vocab_size` is the tokenizer's real vocabulary
    (the driver and the trainable pass it, so iso-FLOP budgets count the model that will be
    built); without it, the config's `vocab_size` stands in."""
    ref = reference_run(spec)
    flat = {**_shared(spec), **dict(spec.params), "seed": spec.seed}
    if spec.budget == "steps" and spec.max_steps:
        flat["max_steps"] = spec.max_steps
    after_budget = {k: flat.pop(k) for k in _AFTER_BUDGET if k in flat}
    cfg = _build(spec.ablation, spec, flat)
    if spec.budget != "steps":
        cfg = with_token_budget(cfg, _budget_tokens(spec, ref, cfg, vocab_size), ref)
    if "eval_every_tokens" not in flat:
        after_budget.setdefault("eval_every_tokens", ref.eval.eval_every * ref.tokens_per_step)
    return with_overrides(cfg, after_budget) if after_budget else cfg


_AFTER_BUDGET = ("probe_tokens", "eval_every_tokens")
"""Settings checked against the run's final token count: applied once the budget is."""


def _budget_tokens(spec: RunSpec, ref: RunConfig, cfg: RunConfig, vocab: int | None) -> int:
    if spec.budget == "tokens":
        return int(spec.token_budget)
    if spec.budget == "iso_tokens":
        return ref.total_tokens
    v = vocab or cfg.data.vocab_size  # iso_flops: the reference's training FLOPs
    ref_fpt = flops_per_token(ref.model, v, ref.data.seq_len)
    return math.ceil(ref.total_tokens * ref_fpt / flops_per_token(cfg.model, v, cfg.data.seq_len))


def with_token_budget(cfg: RunConfig, tokens: int, ref: RunConfig | None = None) -> RunConfig:
    """Train `cfg` on `tokens` tokens, warming up over the reference run's warmup tokens
    (`cfg`'s own when no reference is given)."""
    if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens <= 0:
        raise ValueError(f"token_budget={tokens!r} must be an integer > 0")
    ref = ref or cfg
    steps = math.ceil(tokens / cfg.tokens_per_step)
    warm = round(ref.optim.warmup_steps * ref.tokens_per_step / cfg.tokens_per_step)
    return with_overrides(cfg, {"tokens": tokens, "warmup_steps": max(0, min(steps - 1, warm))})


def with_eval_contexts(spec: RunSpec, arms: Iterable[str]) -> RunSpec:
    """The spec with `eval_contexts` set to every context length of the arms but the longest,
    so that every arm is also scored on the shorter contexts' windows and arms trained with
    different contexts can be compared on the same windows (unchanged when the arms share one
    context, or when the user set eval_contexts)."""
    if "eval_contexts" in dict(spec.overrides):
        return spec
    lengths = sorted({resolve(replace(spec, ablation=a)).data.seq_len for a in arms})
    if len(lengths) < 2:
        return spec
    contexts = ",".join(str(c) for c in lengths[:-1])
    return replace(spec, overrides=(*spec.overrides, ("eval_contexts", contexts)))


def hub_documents(ref: RunConfig, val_fraction: float) -> int:
    """A Hub corpus is streamed, so it needs a document count: enough for about one epoch of
    the reference run's tokens, plus the validation share and a 10% margin."""
    need = ref.total_tokens / (1 - val_fraction) / HUB_TOKENS_PER_DOCUMENT
    return max(100, math.ceil(need * 1.1))
