"""RunSpec -> `RunConfig`: the one resolver, the only place that interprets the preset, a
question's arms, budgets, the reference run, derived widths and a trial's varied settings.

Design choices:
- What each preset's baseline is lives in `presets.py`, what each arm changes in its question
  (`arms.py`, `questions.py`); this module turns a spec into a config, in one order: the
  preset's baseline, the data, the baseline's settings (`overrides`), the arm's changes (a
  factor taken of the baseline's value), a trial's varied settings (`params`), the derived
  widths, then the budget.
- Budgets are defined against the *reference run*: the question's baseline at the same preset
  with the spec's shared settings (overrides, data, derived widths; not the settings a sweep
  varies per trial). The baseline arm therefore always trains its own budget, and `iso_flops`
  counts the FLOPs of the model that will actually be built, with the tokenizer's real
  vocabulary (`training.resolved.Resolver` passes it; every caller resolves through it).
- One warmup rule for token budgets: every run warms up over the reference run's warmup
  *tokens*. A run of `--tokens B` and a cooldown probe at B (branched from a longer run) then
  train exactly the same schedule. A run whose own settings change `warmup_steps` (an arm, a
  sample) keeps its own warmup; `--published-steps` keeps each arm's own warmup steps.
- Every run evaluates at the same token milestones (multiples of the reference's evaluation
  interval, in tokens), so runs with different tokens per step report at the same
  `tokens_seen` (within one step) and ASHA's rungs fall on a report of every trial.
- A budget an arm cannot reach (one optimizer step already overshoots it, or it cannot hold
  the reference's warmup) is refused, naming the arm; so is an arm that cannot be built at the
  preset. `check_arms` refuses arms that change nothing once resolved, or that equal another.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from .arms import BASELINE, DERIVED
from .config import (
    HUB_PREFIX,
    REFERENCE_CORPUS,
    REFERENCE_TOKENIZER,
    RunConfig,
    to_flat_dict,
    with_overrides,
)
from .flops import flops_per_token
from .presets import HUB_TOKENS_PER_DOCUMENT, baseline_settings
from .runspec import RunSpec

TOKEN_BUDGETS = ("iso_tokens", "iso_flops", "tokens")
"""Budgets in tokens: the reference run decides every arm's steps."""


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
    if spec.max_steps and spec.budget in TOKEN_BUDGETS:
        # the reference run's steps bound every arm's settings before its budget applies (a
        # warmup longer than the preset's steps is valid for a longer reference run)
        flat["max_steps"] = spec.max_steps
    if flat["corpus"].startswith(HUB_PREFIX) and "num_documents" not in flat:
        steps = {"max_steps": spec.max_steps} if spec.max_steps else {}
        probe = _build(spec, BASELINE, {**flat, **steps, "num_documents": 1}, {})
        flat["num_documents"] = hub_documents(probe, probe.data.val_fraction)
    return flat


def _derive(flat: dict[str, Any], spec: RunSpec) -> dict[str, Any]:
    """n_heads from `head_dim` and d_ff from `ffn_mult` (so a searched width stays valid)."""
    d_model = flat["d_model"]
    if spec.head_dim:
        if not (isinstance(d_model, int) and d_model % spec.head_dim == 0):
            raise ValueError(f"d_model={d_model} must be divisible by head_dim={spec.head_dim}")
        flat["n_heads"] = d_model // spec.head_dim
    if spec.ffn_mult:
        flat["d_ff"] = round(spec.ffn_mult * d_model)
    return flat


def _arm_changes(spec: RunSpec, name: str, base: Mapping[str, Any]
                 ) -> tuple[dict[str, Any], RunSpec]:
    """(config changes, the spec with the arm's derived-width settings) of arm `name`."""
    arm = spec.arm(name)
    if arm is None:
        return {}, spec
    changes = arm.apply(base, spec.preset)
    derived = {k: changes.pop(k) for k in DERIVED if k in changes}
    if "max_steps" in changes and spec.budget in TOKEN_BUDGETS:
        raise ValueError(f"arm {name!r}: max_steps={changes['max_steps']} has no effect with "
                         f"budget={spec.budget!r} (every arm trains the reference run's "
                         "tokens); use --published-steps for arms of their own length")
    return changes, replace(spec, **derived) if derived else spec


def _build(spec: RunSpec, name: str, shared: dict[str, Any], last: dict[str, Any]
           ) -> RunConfig:
    """Arm `name`: the preset's baseline, the `shared` settings, the arm, then `last` (a
    trial's varied settings), the derived widths, match_params and lr_width."""
    flat = {**baseline_settings(spec.preset), **shared}
    changes, spec = _arm_changes(spec, name, {**to_flat_dict(RunConfig()), **flat})
    try:
        flat = _derive({**flat, **changes, **last}, spec)
        cfg = with_overrides(RunConfig(name=name), flat)
        if spec.match_params and cfg.model.ffn in ("swiglu", "geglu"):  # three matrices
            cfg = with_overrides(cfg, {"d_ff": max(1, round(cfg.model.d_ff * 2 / 3))})
        if spec.match_active_params and cfg.model.n_experts:  # k experts: the dense FFN's
            k = cfg.model.experts_per_token
            cfg = with_overrides(cfg, {"d_ff": max(1, round(cfg.model.d_ff / k))})
        if spec.lr_width:  # muP for Adam: hidden-layer rates scale as 1/width
            cfg = with_overrides(cfg, {"lr": cfg.optim.lr * spec.lr_width / cfg.model.d_model})
    except ValueError as exc:
        if name == BASELINE:
            raise
        arm = spec.arm(name)
        raise ValueError(f"arm {name!r} ({arm.describe(spec.preset)}) cannot be built at preset "
                         f"{spec.preset!r}: {exc}") from None
    return cfg


def reference_run(spec: RunSpec) -> RunConfig:
    """The question's baseline at the spec's preset with its shared settings (and the
    budget's steps): what budgets, warmup and evaluation milestones are measured against."""
    flat = _shared(spec)
    if spec.max_steps:
        flat["max_steps"] = spec.max_steps
    return _build(spec, BASELINE, flat, {})


def resolve(spec: RunSpec, vocab_size: int | None = None) -> RunConfig:
    """A run spec -> a validated RunConfig. `vocab_size` is the tokenizer's real vocabulary
    (`training.resolved.Resolver` passes it, so iso-FLOP budgets count the model that will be
    built); without it, the config's `vocab_size` stands in."""
    ref = reference_run(spec)
    last = {**dict(spec.params), "seed": spec.seed}
    if spec.budget == "steps" and spec.max_steps:
        last["max_steps"] = spec.max_steps
    shared, after_budget = _shared(spec), {}
    for flat in (shared, last):  # checked against the final token count: applied after it
        after_budget.update({k: flat.pop(k) for k in _AFTER_BUDGET if k in flat})
    cfg = _build(spec, spec.ablation, shared, last)
    if spec.budget != "steps":
        own = spec.arm() is not None and "warmup_steps" in spec.arm().changes_at(spec.preset)
        warm_ref = cfg if own or "warmup_steps" in dict(spec.params) else ref
        tokens = _budget_tokens(spec, ref, cfg, vocab_size)
        check_reachable(spec, cfg, tokens, warm_ref)
        cfg = with_token_budget(cfg, tokens, warm_ref)
    after_budget.setdefault("eval_every_tokens", ref.eval.eval_every * ref.tokens_per_step)
    if cfg.model.parametrization != "standard":
        cfg = _mup_base(spec, cfg, ref)
    return with_overrides(cfg, after_budget)


def _mup_base(spec: RunSpec, cfg: RunConfig, ref: RunConfig) -> RunConfig:
    """muP's base width (and CompleteP's base depth) default to the reference run's d_model
    (and n_layers), where the preset's lr was tuned; muP and `lr_width` would both scale the
    rate with width."""
    p = cfg.model.parametrization
    if spec.lr_width:
        raise ValueError(f"lr_width={spec.lr_width} with parametrization={p!r}: it already "
                         "scales the hidden layers' rates with width; drop lr_width")
    base = {"mup_base_width": cfg.model.mup_base_width or ref.model.d_model}
    if p == "completep":
        base["mup_base_depth"] = cfg.model.mup_base_depth or ref.model.n_layers
    return with_overrides(cfg, base)


_AFTER_BUDGET = ("probe_tokens", "eval_every_tokens")
"""Settings checked against the run's final token count: applied once the budget is."""


def check_reachable(spec: RunSpec, cfg: RunConfig, tokens: int, ref: RunConfig) -> None:
    """Refuse a token budget the run cannot train as asked: one optimizer step is already
    more, or it cannot hold the reference's warmup tokens."""
    who = "the baseline" if spec.ablation == BASELINE else f"arm {spec.ablation!r}"
    if spec.params:
        who += " with " + ", ".join(f"{k}={v!r}" for k, v in spec.params)
    if cfg.tokens_per_step > tokens:
        raise ValueError(f"{who}: one step is {cfg.tokens_per_step:,} tokens (batch_size="
                         f"{cfg.data.batch_size} x seq_len={cfg.data.seq_len}), more than its "
                         f"budget of {tokens:,} tokens; raise the budget (--tokens, "
                         "--max-steps) or lower the arm's batch")
    warm = ref.optim.warmup_steps * ref.tokens_per_step
    steps = math.ceil(tokens / cfg.tokens_per_step)
    if warm and round(warm / cfg.tokens_per_step) >= steps:
        raise ValueError(f"{who}: its budget of {tokens:,} tokens ({steps} steps of "
                         f"{cfg.tokens_per_step:,}) cannot hold the warmup of {warm:,} tokens "
                         "and train after it; raise the budget or lower warmup_steps")


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


def check_arms(spec: RunSpec, configs: Mapping[str, RunConfig]) -> None:
    """Refuse an arm whose resolved config equals the baseline's (it changes nothing the run
    uses) and two arms that resolve to the same config. `configs`: arm name -> its resolved
    config at one seed, the baseline first."""
    seen: dict[str, str] = {}
    for name, cfg in configs.items():
        flat = to_flat_dict(cfg)
        key = repr(sorted((k, v) for k, v in flat.items() if k not in ("name", "seed")))
        other = seen.get(key)
        if other == BASELINE:
            raise ValueError(f"arm {name!r} ({spec.arm(name).describe(spec.preset)}) resolves to "
                             f"the baseline's config at preset {spec.preset!r}: it changes "
                             "nothing the run uses once the baseline's settings and the budget "
                             "apply; change another key, or drop the arm")
        if other is not None:
            raise ValueError(f"arms {other!r} ({spec.arm(other).describe(spec.preset)}) and "
                             f"{name!r} ({spec.arm(name).describe(spec.preset)}) resolve to the "
                             f"same config at preset {spec.preset!r}; keep one")
        seen[key] = name
