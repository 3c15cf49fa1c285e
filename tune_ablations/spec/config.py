"""Run configuration: every knob of one training run, validated.

Design choices:
- One frozen dataclass per concern (model, optim, data, budget, eval) under `RunConfig`; every
  leaf field name is unique, so a config flattens to Ray's `param_space` and to DataFrame columns
  with the same key everywhere (`lr`, `d_model`, `seq_len`, ...).
- `validate()` runs in `__post_init__`: an impossible config cannot exist. Errors name the field,
  the value and the rule.
- What a run *is* (ablation, preset, data, budget, overrides) is a `runspec.RunSpec`; the
  resolver (`resolve.py`) is the one place that turns it into a `RunConfig`.
- Validation checks form, not the filesystem: a trial on another host builds the config of a
  corpus that exists only on the driver's host (`check_paths` runs where the data is read).
- The reference declared `warmup_steps=1000` but applied none (plain cosine to 10%). We default to
  a 5% linear warmup (100 of 2000 steps), a common choice for runs this short; `warmup_steps=0`
  reproduces the reference's schedule.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

PRESETS = ("seed", "cpu", "tiny")
FFNS = ("silu", "gelu", "relu2", "swiglu", "geglu")
NORMS = ("rmsnorm", "layernorm")
EMBEDDED_CORPORA = ("embedded", "pydoc", "stdlib")
HUB_PREFIX = "hf:"
REFERENCE_CORPUS = "hf:HuggingFaceTB/smollm-corpus/cosmopedia-v2"
REFERENCE_TOKENIZER = "HuggingFaceTB/SmolLM-135M"


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    d_model: int = 384
    """Residual stream width."""
    n_heads: int = 6
    """Attention heads; head_dim = d_model / n_heads."""
    n_layers: int = 12
    """Transformer blocks."""
    d_ff: int = 1536
    """Hidden width of the feed-forward network."""
    ffn: Literal["silu", "gelu", "relu2", "swiglu", "geglu"] = "silu"
    """Feed-forward activation: `silu` (reference), `gelu`, `relu2` (ReLU squared), or gated
    `swiglu` / `geglu` (three matrices: `match_params` keeps the parameter count)."""
    norm: Literal["rmsnorm", "layernorm"] = "rmsnorm"
    """Norm of every block, the final norm and QK-norm: `rmsnorm` (reference) or `layernorm`
    (with bias)."""
    n_kv_heads: int = 0
    """Key-value heads (grouped-query attention; 1: multi-query); 0: n_heads (multi-head)."""
    qk_norm: bool = False
    """Normalise each head's query and key (over head_dim, before RoPE) as Qwen3 / OLMo 2."""
    sliding_window: int = 0
    """Local attention: each token attends to itself and the previous window - 1 tokens,
    tokens (0: full causal attention)."""
    tie_embeddings: bool = True
    """Output projection tied to the input embedding (reference); false: a separate
    `lm_head`."""
    z_loss: float = 0.0
    """Coefficient of the output z-loss, mean logsumexp(logits)^2 added to the training
    objective (PaLM: 1e-4; 0: none). `train_loss` stays the cross-entropy."""
    n_experts: int = 0
    """Mixture of Experts: experts per FFN layer, each a FFN of width d_ff (0: a dense FFN)."""
    experts_per_token: int = 1
    """Mixture of Experts: experts each token is routed to (top-k); routing is dropless."""
    moe_aux_loss: float = 0.01
    """Mixture of Experts: load-balancing loss coefficient per layer (Switch: 0.01)."""
    router_z_loss: float = 0.001
    """Mixture of Experts: router z-loss coefficient per layer (ST-MoE: 0.001)."""
    pos_encoding: Literal["rope", "none"] = "rope"
    """`rope`, or `none`: the reference's effective model (its RoPE rotated by head index)."""
    rope_base: float = 10000.0
    """RoPE frequency base (theta)."""
    max_seq_len: int = 4096
    """Longest sequence the model accepts (size of the rotary table), tokens."""
    dropout: float = 0.0
    """Dropout on the embedding and on each block's attention and FFN output (0: none, as the
    reference)."""
    parametrization: Literal["standard", "mup", "completep"] = "standard"
    """How init, multipliers and per-layer learning rates depend on width and depth: `standard`
    (the reference's); `mup` (Yang et al. 2022, for Adam: hidden init and lr / width_mult, the
    logits x 1 / width_mult), so an lr tuned at `mup_base_width` transfers to wider models; or
    `completep` (Dey et al. 2025: muP plus each block's residual branch x 1 / depth_mult), so
    it also transfers to deeper ones (training/model.py, its width and depth rules)."""
    mup_base_width: int = 0
    """`mup` / `completep`: the d_model at which they equal the standard model (where lr was
    tuned); 0: the reference run's d_model (the resolver sets it)."""
    mup_base_depth: int = 0
    """`completep`: the n_layers at which it equals muP (where lr was tuned); 0: the reference
    run's n_layers (the resolver sets it)."""

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        """Key-value heads in effect (`n_kv_heads`, or n_heads when 0)."""
        return self.n_kv_heads or self.n_heads


PARAMETRIZATIONS = ("standard", "mup", "completep")
ADAM_LIKE = ("adamw", "lion", "schedule_free_adamw")
OPTIMIZERS = ("adamw", "muon", "lion", "schedule_free_adamw", "sgd")
MUON_LR_ADJUSTS = ("match_rms_adamw", "original")


@dataclass(frozen=True, kw_only=True)
class OptimConfig:
    optimizer: Literal["adamw", "muon", "lion", "schedule_free_adamw", "sgd"] = "adamw"
    """`adamw` (reference); `muon` for the hidden matrices with AdamW for the rest (embeddings,
    norms, output), as the modded-nanogpt records use it; `lion` and `schedule_free_adamw`
    (the `optimizers` extra); `sgd` with momentum. See training/optimizers.py."""
    lr: float = 3e-4
    """Peak learning rate of the optimizer (`muon`: of the hidden matrices); the schedule and
    `--tune-lr` scale it, and every other group's rate with it."""
    adamw_lr_ratio: float = 1.0
    """`muon`: peak lr of its AdamW part (embeddings, norms) as a multiple of `lr` (1 with
    `muon_lr_adjust=match_rms_adamw`, whose updates match AdamW's size)."""
    muon_lr_adjust: Literal["match_rms_adamw", "original"] = "match_rms_adamw"
    """`muon`: update scale per matrix of shape (A, B): `match_rms_adamw` 0.2 sqrt(max(A, B))
    (Liu et al. 2025: AdamW's lr and weight decay carry over), or `original` (Jordan et al.
    2024, the speedrun: sqrt(max(1, A / B)), lr ~0.02)."""
    momentum: float = 0.95
    """`muon` and `sgd`: momentum coefficient (0.95: torch.optim.Muon's and the speedrun's)."""
    nesterov: bool = True
    """`muon` and `sgd`: Nesterov momentum."""
    weight_decay: float = 0.1
    """Weight decay of 2-D weights (norm gains never): decoupled, w <- w (1 - lr wd), for
    adamw, lion, muon (at the unadjusted lr) and schedule_free_adamw (at its gradient point y);
    for sgd an L2 term wd w added to the gradient (torch.optim.SGD)."""
    beta1: float = 0.9
    """beta1 of AdamW (also Muon's AdamW part) and of schedule_free_adamw (its interpolation,
    > 0); Lion's update interpolation."""
    beta2: float = 0.95
    """beta2 of AdamW (also Muon's AdamW part) and of schedule_free_adamw; Lion's momentum
    decay (its paper: 0.99)."""
    warmup_steps: int = 100
    """Linear warmup length, steps (0 reproduces the reference, which applied none)."""
    min_lr_ratio: float = 0.1
    """The schedule decays to this fraction of the peak lr."""
    schedule: Literal["cosine", "wsd", "linear", "constant"] = "cosine"
    """After warmup: `cosine` to the floor (reference), `linear` to the floor, `constant` at
    the peak, or `wsd` (warmup-stable-decay: the peak, then a decay over the last
    `decay_fraction` of the run; Hägele et al. 2024)."""
    decay_fraction: float = 0.2
    """`wsd`: fraction of the run spent decaying (and of a cooldown probe's budget)."""
    decay_shape: Literal["linear", "cosine", "sqrt"] = "sqrt"
    """`wsd` decay shape: `linear`, `cosine`, or `sqrt` (1 - sqrt, Hägele et al.'s best)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip (0 disables)."""


@dataclass(frozen=True, kw_only=True)
class DataConfig:
    corpus: str = "embedded"
    """`embedded` (= `pydoc` + `stdlib`), `pydoc` or `stdlib`, a local path (.txt file or folder,
    .jsonl, .json, .parquet), or `hf:<dataset>/<config>` for the Hugging Face Hub."""
    tokenizer: str = "bpe"
    """`bpe`: byte-level BPE trained on the training split; else a Hugging Face tokenizer name."""
    vocab_size: int = 4096
    """Vocabulary of the trained BPE tokenizer (ignored for a named tokenizer)."""
    seq_len: int = 512
    """Context length of training windows, tokens."""
    batch_size: int = 8
    """Windows per optimizer step."""
    num_documents: int = 0
    """Use the first N documents of the corpus (0: all)."""
    val_fraction: float = 0.1
    """Fraction of the corpus's characters held out for validation, split by document groups."""
    split_seed: int = 0
    """Seed of the document-level train/validation split (fixed across trials)."""
    eval_data: str = ""
    """Extra evaluation domains, comma-separated corpora (`pydoc,stdlib`, local paths, `hf:`):
    every evaluation also reports `val_loss@<name>` and `val_bpb@<name>` on held-out text."""


@dataclass(frozen=True, kw_only=True)
class BudgetConfig:
    max_steps: int = 2000
    """Optimizer steps (ignored when `tokens` is set)."""
    tokens: int = 0
    """Token budget; when > 0, steps = ceil(tokens / (batch_size * seq_len))."""


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    eval_every: int = 400
    """Evaluate (and report to Ray, checkpoint) every N steps, and at the end."""
    eval_every_tokens: int = 0
    """When > 0, evaluate at the first step whose tokens seen reach each multiple of this
    (token milestones, the same for every run of a sweep) instead of every `eval_every` steps."""
    eval_tokens: int = 65536
    """Validation tokens scored per evaluation: windows of seq_len spread evenly over the whole
    validation split, so every trial with this seq_len is scored on the same text."""
    probe_tokens: str = ""
    """Comma-separated token budgets B; at B x (1 - decay_fraction) tokens the run branches a
    cooldown of B x decay_fraction tokens to the floor, evaluates it and continues unchanged.
    Under `wsd` the probe is exactly the loss a run of budget B reaches; under `cosine` or
    `linear` it is a short decay branch, a loss that reflects the end of training (what early
    stopping ranks by). Not with `constant`, which never decays."""
    text_samples: int = 3
    """Text samples generated at the end from fixed prompts (0: none)."""
    eval_contexts: str = ""
    """Comma-separated context lengths (tokens): at its last evaluation the run is also scored
    on the windows of each length up to its own seq_len (`val_loss@ctx<N>`), so runs trained
    with different contexts can be compared on the same windows. A grid whose arms differ in
    seq_len sets it to the shorter ones."""


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    name: str = "baseline"
    """Ablation name (a label; it carries no settings of its own)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Architecture."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and schedule."""
    data: DataConfig = field(default_factory=DataConfig)
    """Corpus, tokenizer, batches."""
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    """How long to train."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation cadence and size."""
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """Autocast dtype; `auto`: bf16 on GPUs that support it (else fp16); on a CPU, bf16 only
    where it has native bf16 matrix units and a probe of the runs' steps measured it faster,
    else fp32. A sweep decides `auto` once for all its trials (`training/probes.py`)."""
    compile: bool | str = False
    """Wrap the model in torch.compile (falls back to eager if compilation fails); `auto`:
    only where a probe measured the compiled steps' saving above the compile time they cost
    (decided once for all trials of a sweep)."""
    seed: int = 0
    """Seed of initialisation, batch sampling and text samples."""
    device: str = "auto"
    """`auto` (cuda if available), `cpu`, `cuda`, `cuda:N`."""
    diverge_factor: float = 3.0
    """A run whose train loss exceeds this multiple of its first loss is `diverged`."""
    diverge_margin: float = 1.0
    """Nats: after warmup and a quarter of the run, a train loss this far above the unigram
    reference at two evaluations in a row means `diverged` (0 disables)."""
    diverge_climb: float = 2.0
    """Nats: a train loss this far above the run's best evaluation-interval train loss means
    `diverged` (0 disables)."""
    peak_flops: float = 0.0
    """Peak FLOP/s used for MFU (0: per-device default, see train.peak_flops_for)."""

    def __post_init__(self) -> None:
        validate(self)

    @property
    def tokens_per_step(self) -> int:
        return self.data.batch_size * self.data.seq_len

    @property
    def steps(self) -> int:
        if self.budget.tokens > 0:
            return math.ceil(self.budget.tokens / self.tokens_per_step)
        return self.budget.max_steps

    @property
    def total_tokens(self) -> int:
        return self.steps * self.tokens_per_step

    @property
    def eval_context_lengths(self) -> list[int]:
        """`eval_contexts` as sorted integers."""
        return sorted({int(t) for t in self.eval.eval_contexts.replace(" ", "").split(",") if t})

    @property
    def probe_budgets(self) -> list[int]:
        """`probe_tokens` as sorted integers."""
        return sorted(int(t) for t in self.eval.probe_tokens.replace(" ", "").split(",") if t)


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise ValueError(msg)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def validate(cfg: RunConfig) -> None:
    """Raise ValueError naming field, value and rule for the first impossible setting."""
    for section in (cfg.model, cfg.optim, cfg.data, cfg.budget, cfg.eval):
        for f in fields(section):
            v = getattr(section, f.name)
            if f.type == "bool":
                _check(isinstance(v, bool), f"{f.name}={v!r} must be true or false")
            if f.type in ("int", "float"):
                _check(_is_number(v) and (f.type == "float" or isinstance(v, int)),
                       f"{f.name}={v!r} must be {'an integer' if f.type == 'int' else 'a number'}")
                _check(math.isfinite(v), f"{f.name}={v!r} must be finite")
    _validate_model(cfg.model)
    _validate_optim(cfg.optim)
    _validate_data(cfg.data, cfg.model)
    _validate_run(cfg)
    p = cfg.model.parametrization
    _check(p == "standard" or cfg.optim.optimizer in ADAM_LIKE,
           f"parametrization={p!r} needs an Adam-like optimizer ({', '.join(ADAM_LIKE)}): its "
           f"learning-rate rules are for Adam; got optimizer={cfg.optim.optimizer!r}")


def _validate_model(m: ModelConfig) -> None:
    for name in ("d_model", "n_heads", "n_layers", "d_ff", "max_seq_len"):
        _check(getattr(m, name) > 0, f"{name}={getattr(m, name)} must be > 0")
    _check(m.d_model % m.n_heads == 0,
           f"d_model={m.d_model} must be divisible by n_heads={m.n_heads}")
    if m.pos_encoding == "rope":
        _check(m.head_dim % 2 == 0,
               f"head_dim={m.head_dim} (d_model={m.d_model} / n_heads={m.n_heads}) must be even "
               "for RoPE")
    _check(m.ffn in FFNS, f"ffn={m.ffn!r} must be one of " + ", ".join(map(repr, FFNS)))
    _check(m.norm in NORMS, f"norm={m.norm!r} must be one of " + ", ".join(map(repr, NORMS)))
    _check(m.n_kv_heads >= 0, f"n_kv_heads={m.n_kv_heads} must be >= 0 (0: n_heads)")
    _check(m.n_kv_heads == 0 or m.n_heads % m.n_kv_heads == 0,
           f"n_kv_heads={m.n_kv_heads} must divide n_heads={m.n_heads}")
    _check(m.sliding_window >= 0,
           f"sliding_window={m.sliding_window} must be >= 0 (0: full attention)")
    _check(m.n_experts >= 0, f"n_experts={m.n_experts} must be >= 0 (0: a dense FFN)")
    _check(m.experts_per_token >= 1, f"experts_per_token={m.experts_per_token} must be >= 1")
    _check(m.n_experts == 0 or m.experts_per_token <= m.n_experts,
           f"experts_per_token={m.experts_per_token} must be <= n_experts={m.n_experts}")
    for name in ("z_loss", "moe_aux_loss", "router_z_loss"):
        _check(getattr(m, name) >= 0, f"{name}={getattr(m, name)} must be >= 0 (0: none)")
    _check(m.pos_encoding in ("rope", "none"),
           f"pos_encoding={m.pos_encoding!r} must be one of 'rope', 'none'")
    _check(m.rope_base > 1, f"rope_base={m.rope_base} must be > 1")
    _check(0 <= m.dropout < 1, f"dropout={m.dropout} must be in [0, 1)")
    _check(m.parametrization in PARAMETRIZATIONS, f"parametrization={m.parametrization!r} must "
           "be one of " + ", ".join(repr(x) for x in PARAMETRIZATIONS))
    _check(m.mup_base_width >= 0,
           f"mup_base_width={m.mup_base_width} must be >= 0 (0: the reference run's d_model)")
    _check(m.mup_base_depth >= 0,
           f"mup_base_depth={m.mup_base_depth} must be >= 0 (0: the reference run's n_layers)")


def _validate_optim(o: OptimConfig) -> None:
    _check(o.optimizer in OPTIMIZERS, f"optimizer={o.optimizer!r} must be one of "
           + ", ".join(repr(x) for x in OPTIMIZERS))
    _check(o.lr > 0, f"lr={o.lr} must be > 0")
    _check(o.adamw_lr_ratio > 0, f"adamw_lr_ratio={o.adamw_lr_ratio} must be > 0")
    _check(o.muon_lr_adjust in MUON_LR_ADJUSTS, f"muon_lr_adjust={o.muon_lr_adjust!r} must be "
           "one of " + ", ".join(repr(x) for x in MUON_LR_ADJUSTS))
    _check(0 <= o.momentum < 1, f"momentum={o.momentum} must be in [0, 1)")
    _check(not (o.optimizer == "sgd" and o.nesterov and o.momentum == 0),
           f"nesterov=True needs momentum > 0 for optimizer='sgd' (got momentum={o.momentum})")
    _check(not (o.optimizer == "schedule_free_adamw" and o.beta1 == 0),
           f"beta1={o.beta1} must be > 0 for optimizer='schedule_free_adamw' (its averaged "
           "weights are recovered by dividing by beta1)")
    _check(o.weight_decay >= 0, f"weight_decay={o.weight_decay} must be >= 0")
    for name in ("beta1", "beta2"):
        _check(0 <= getattr(o, name) < 1, f"{name}={getattr(o, name)} must be in [0, 1)")
    _check(o.warmup_steps >= 0, f"warmup_steps={o.warmup_steps} must be >= 0")
    _check(0 <= o.min_lr_ratio <= 1, f"min_lr_ratio={o.min_lr_ratio} must be in [0, 1]")
    _check(o.grad_clip >= 0, f"grad_clip={o.grad_clip} must be >= 0 (0 disables clipping)")
    _check(o.schedule in ("cosine", "wsd", "linear", "constant"),
           f"schedule={o.schedule!r} must be one of 'cosine', 'wsd', 'linear', 'constant'")
    _check(0 < o.decay_fraction <= 1, f"decay_fraction={o.decay_fraction} must be in (0, 1]")
    _check(o.decay_shape in ("linear", "cosine", "sqrt"),
           f"decay_shape={o.decay_shape!r} must be one of 'linear', 'cosine', 'sqrt'")


def _validate_data(d: DataConfig, m: ModelConfig) -> None:
    _check(isinstance(d.corpus, str) and d.corpus != "", f"corpus={d.corpus!r} must be a "
           f"non-empty string: one of {EMBEDDED_CORPORA}, a local path, or 'hf:<dataset>'")
    _check(isinstance(d.tokenizer, str) and d.tokenizer != "",
           f"tokenizer={d.tokenizer!r} must be 'bpe' or a Hugging Face tokenizer name")
    _check(d.vocab_size >= 260, f"vocab_size={d.vocab_size} must be >= 260 (256 bytes + specials)")
    _check(d.seq_len >= 2, f"seq_len={d.seq_len} must be >= 2")
    _check(d.seq_len <= m.max_seq_len,
           f"seq_len={d.seq_len} must be <= max_seq_len={m.max_seq_len} (what the model supports)")
    _check(not d.corpus.startswith(HUB_PREFIX) or d.num_documents > 0,
           f"num_documents={d.num_documents} must be > 0 for a Hub corpus (it is streamed)")
    _check(d.batch_size > 0, f"batch_size={d.batch_size} must be > 0")
    _check(d.num_documents >= 0, f"num_documents={d.num_documents} must be >= 0 (0: all)")
    _check(0 < d.val_fraction < 1, f"val_fraction={d.val_fraction} must be in (0, 1)")
    _check(isinstance(d.eval_data, str), f"eval_data={d.eval_data!r} must be a string")


def is_local_path(corpus: str) -> bool:
    """A corpus named by a path on disk (not embedded, not from the Hub)."""
    return corpus not in EMBEDDED_CORPORA and not corpus.startswith(HUB_PREFIX)


def check_paths(d: DataConfig) -> None:
    """The local corpora a run reads exist here: run where the data is read (the driver),
    before any compute."""
    _check(not is_local_path(d.corpus) or os.path.exists(os.path.expanduser(d.corpus)),
           f"corpus={d.corpus!r} is not an embedded corpus ({', '.join(EMBEDDED_CORPORA)}), "
           f"a Hub corpus ('{HUB_PREFIX}<dataset>/<config>') or an existing local path")
    for extra in (c.strip() for c in d.eval_data.split(",") if c.strip()):
        _check(not is_local_path(extra) or os.path.exists(os.path.expanduser(extra)),
               f"eval_data corpus {extra!r} is not an embedded corpus "
               f"({', '.join(EMBEDDED_CORPORA)}), a Hub corpus or an existing local path")


def _validate_run(cfg: RunConfig) -> None:
    b, e = cfg.budget, cfg.eval
    _check(b.max_steps > 0, f"max_steps={b.max_steps} must be > 0")
    _check(b.tokens >= 0, f"tokens={b.tokens} must be >= 0 (0: use max_steps)")
    _check(cfg.optim.warmup_steps < cfg.steps,
           f"warmup_steps={cfg.optim.warmup_steps} must be < the run's steps={cfg.steps}")
    _check(e.eval_every > 0, f"eval_every={e.eval_every} must be > 0")
    _check(e.eval_every_tokens >= 0,
           f"eval_every_tokens={e.eval_every_tokens} must be >= 0 (0: every eval_every steps)")
    _check(e.eval_tokens >= cfg.data.seq_len,
           f"eval_tokens={e.eval_tokens} must be >= seq_len={cfg.data.seq_len} (one window)")
    _check(e.text_samples >= 0, f"text_samples={e.text_samples} must be >= 0")
    _check(isinstance(e.eval_contexts, str) and all(
        t.strip().isdigit() and int(t) >= 2 for t in e.eval_contexts.split(",") if t.strip()),
        f"eval_contexts={e.eval_contexts!r} must be comma-separated context lengths >= 2 "
        "(tokens)")
    if e.probe_tokens:
        _check(isinstance(e.probe_tokens, str) and all(
            t.strip().isdigit() for t in e.probe_tokens.split(",")),
            f"probe_tokens={e.probe_tokens!r} must be comma-separated token counts")
        _check(cfg.optim.schedule != "constant", f"probe_tokens={e.probe_tokens!r} needs a "
               "schedule that decays (wsd, cosine or linear), got 'constant': its final loss "
               "is read at the peak lr, like every mid-run loss")
        for b in cfg.probe_budgets:
            _check(cfg.tokens_per_step <= b * cfg.optim.decay_fraction and b < cfg.total_tokens,
                   f"probe_tokens budget {b} must be < the run's {cfg.total_tokens} tokens and "
                   f"its cooldown ({cfg.optim.decay_fraction:g} of it) at least one step "
                   f"({cfg.tokens_per_step} tokens)")
    _check(cfg.precision in ("auto", "fp32", "bf16", "fp16"),
           f"precision={cfg.precision!r} must be one of 'auto', 'fp32', 'bf16', 'fp16'")
    _check(isinstance(cfg.compile, bool) or cfg.compile == "auto",
           f"compile={cfg.compile!r} must be true, false or 'auto'")
    _check(isinstance(cfg.seed, int) and not isinstance(cfg.seed, bool) and cfg.seed >= 0,
           f"seed={cfg.seed!r} must be an integer >= 0")
    _check(cfg.device == "auto" or cfg.device == "cpu" or cfg.device.startswith("cuda"),
           f"device={cfg.device!r} must be 'auto', 'cpu' or 'cuda[:N]'")
    _check(cfg.diverge_factor > 1, f"diverge_factor={cfg.diverge_factor} must be > 1")
    for name in ("diverge_margin", "diverge_climb"):
        _check(_is_number(getattr(cfg, name)) and getattr(cfg, name) >= 0,
               f"{name}={getattr(cfg, name)!r} must be a number >= 0 (0 disables)")
    _check(cfg.peak_flops >= 0, f"peak_flops={cfg.peak_flops} must be >= 0 (0: default)")


# --- flat dict round trip (the Ray boundary) -------------------------------------------------

_SECTIONS = ("model", "optim", "data", "budget", "eval")
_TOP = tuple(f.name for f in fields(RunConfig) if f.name not in _SECTIONS)


def _section_of() -> dict[str, str]:
    out = {}
    for s in _SECTIONS:
        cls = {f.name: f for f in fields(RunConfig)}[s].default_factory
        for f in fields(cls):
            out[f.name] = s
    for name in _TOP:
        out[name] = ""
    return out


def field_names() -> list[str]:
    """Every flat key a config accepts (leaf fields), in declaration order."""
    return list(_section_of())


def field_type(key: str) -> str:
    """The annotation of a flat key as a string (e.g. 'int', 'float', "Literal['silu', ...]")."""
    section = _section_of()[key]
    cls = RunConfig if not section else type(getattr(RunConfig(), section))
    return {f.name: f.type for f in fields(cls)}[key]


def unknown_key_error(key: str, valid: list[str], what: str = "config key") -> ValueError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
    return ValueError(f"unknown {what} {key!r}{hint}")


def to_flat_dict(cfg: RunConfig) -> dict[str, Any]:
    """Leaf fields as one flat dict (the same names Ray, search spaces and DataFrames use)."""
    out: dict[str, Any] = {}
    for key in _TOP:
        out[key] = getattr(cfg, key)
    for s in _SECTIONS:
        out.update(dataclasses.asdict(getattr(cfg, s)))
    return out


def with_overrides(cfg: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Apply flat-key overrides; an unknown key is an error suggesting the closest name."""
    sections = _section_of()
    per: dict[str, dict[str, Any]] = {s: {} for s in _SECTIONS}
    top: dict[str, Any] = {}
    for key, value in overrides.items():
        if key not in sections:
            raise unknown_key_error(key, list(sections))
        (per[sections[key]] if sections[key] else top)[key] = value
    # Replace sections without validating the half-built config; validate once at the end.
    parts = {s: replace(getattr(cfg, s), **per[s]) for s in _SECTIONS if per[s]}
    return replace(cfg, **parts, **top)


def from_flat_dict(flat: dict[str, Any]) -> RunConfig:
    """The inverse of `to_flat_dict` (a resolved config stored in run.json or config.json);
    an unknown key is an error suggesting the closest name."""
    return with_overrides(RunConfig(), flat)
