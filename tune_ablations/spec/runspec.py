"""`RunSpec`: what to train, as one typed value. The command line builds it from one argument
group, `best.toml` and `--config` files are its TOML form, `sweep.json` and `run.json` store its
dict form, Ray's trials receive it whole, and `--resume` compares two of them field by field.

Design choices:
- The budget is one choice: `iso_tokens` (default: every run trains the reference run's
  tokens), `iso_flops` (its training FLOPs), `tokens` (`token_budget` each) or `steps` (each
  arm's published step count, or `max_steps` each).
- `overrides` are the baseline's settings (`--set`): every arm shares them, and an arm's
  changes apply on top (a factor scales the baseline's value, so `--set lr=1e-3` moves high_lr
  with it); `params` are the settings a sweep varies per trial (a search's samples, an lr
  grid's rates): they apply last and not to the reference run that budgets are measured
  against.
- `arms` is the question (`questions.py`): the arms `ablation` names one of. Empty means the
  shipped reference question (the six reference ablations), so a spec without arms stays
  short and every older record reads back.
- `apply_flat` is the one interpreter of flat keys (`--set`, TOML files, search spaces' [fixed]
  tables): spec fields, the aliases older files use (`iso_tokens = true`, `corpus = ...`) and
  config fields; anything else is an error naming the closest valid key.
- Files are TOML only, read with the standard library's `tomllib`.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .arms import BASELINE, Arm, arms_from_table, merge_arms
from .config import HUB_PREFIX, PRESETS, field_names, field_type, unknown_key_error
from .presets import is_named_corpus
from .questions import arm_toml, load_question, reference
from .toml import toml_module, toml_value

BUDGETS = ("iso_tokens", "iso_flops", "tokens", "steps")
# Config fields the resolver sets from the spec; a user sets the spec field instead.
RESOLVED_ONLY = {"tokens": "token_budget", "name": "ablation", "corpus": "data",
                 "eval_data": "eval_data"}


def _flag(name: str, doc: str = "") -> dict[str, str]:
    return {"flag": name, "doc": doc}


@dataclass(frozen=True, kw_only=True)
class RunSpec:
    """What to train: an arm of a question at a preset on some data with a budget and
    overrides."""
    ablation: str = field(default=BASELINE, metadata=_flag("--ablation"))
    """The arm this run trains: `baseline` or one of `arms` (the reference ablations when
    `arms` is empty)."""
    preset: str = field(default="cpu", metadata=_flag("--preset"))
    """Scale: `seed` (published, for a GPU), `cpu` (a 2-core CPU in minutes), `tiny` (tests)."""
    data: str = field(default="embedded", metadata=_flag("--data"))
    """Training corpus: embedded | pydoc | stdlib | reference | hf:<dataset>/<config> | an
    absolute local path."""
    eval_data: tuple[str, ...] = field(default=(), metadata=_flag("--eval-data"))
    """Extra evaluation domains (corpora), each scored on text that shares nothing with the
    training split."""
    budget: str = field(default="iso_tokens", metadata=_flag(
        "budget", "--iso-tokens | --iso-flops | --tokens | --published-steps"))
    """How long every run trains: one of BUDGETS."""
    max_steps: int | None = field(default=None, metadata=_flag("--max-steps"))
    """Steps of the reference run (or of every run with budget `steps`); None: the preset's."""
    token_budget: int | None = field(default=None, metadata=_flag("--tokens"))
    """Tokens of every run (budget `tokens`)."""
    head_dim: int | None = field(default=None, metadata=_flag("--set head_dim"))
    """Derive n_heads = d_model / head_dim (keeps a searched width valid)."""
    ffn_mult: float | None = field(default=None, metadata=_flag("--set ffn_mult"))
    """Derive d_ff = ffn_mult x d_model."""
    lr_width: int | None = field(default=None, metadata=_flag("--set lr_width"))
    """Scale the learning rate by lr_width / d_model (muP for Adam: a model half as wide
    takes twice the rate), so runs of several widths each train near their own optimum."""
    match_params: bool = field(default=False, metadata=_flag("--set match_params"))
    """A gated `ffn` (swiglu, geglu) gets d_ff x 2/3: the ungated FFN's parameter count."""
    match_active_params: bool = field(default=False,
                                      metadata=_flag("--set match_active_params"))
    """A Mixture of Experts arm gets each expert's d_ff / experts_per_token, so the experts a
    token uses hold the dense FFN's parameters (iso-active parameters and FLOPs, router
    aside); with `match_params`, after its 2/3."""
    overrides: tuple[tuple[str, Any], ...] = field(default=(), metadata=_flag("--set"))
    """Config fields every run shares, sorted by key."""
    params: tuple[tuple[str, Any], ...] = field(default=(), metadata=_flag("params"))
    """Config fields this trial of a sweep varies (not applied to the reference run)."""
    arms: tuple[Arm, ...] = field(default=(), metadata=_flag("--arms/--arm"))
    """The question's arms besides the baseline; empty: the six reference ablations."""
    seed: int = field(default=0, metadata=_flag("--seed"))
    """Seed of initialisation, batch order and text samples."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "overrides", _pairs(self.overrides, "--set"))
        object.__setattr__(self, "params", _pairs(self.params, "params"))
        object.__setattr__(self, "eval_data", tuple(self.eval_data))
        object.__setattr__(self, "arms", merge_arms(
            a if isinstance(a, Arm) else Arm.from_dict(a) for a in self.arms))
        _validate(self)

    @property
    def question(self) -> tuple[Arm, ...]:
        """The arms besides the baseline (the reference ablations when `arms` is empty)."""
        return self.arms or reference().arms

    @property
    def arm_names(self) -> list[str]:
        """`baseline` and every arm's name, in the question's order."""
        return [BASELINE, *(a.name for a in self.question)]

    def arm(self, name: str | None = None) -> Arm | None:
        """The arm `name` (default: this run's); None for the baseline."""
        name = self.ablation if name is None else name
        return next((a for a in self.question if a.name == name), None)

    @property
    def label(self) -> str:
        """`<ablation>-s<seed>`, plus the varied settings: a readable trial name."""
        extra = "".join(f"-{k}{_short(v)}" for k, v in self.params)
        return f"{self.ablation}-s{self.seed}{extra}"

    def log_fields(self) -> str:
        """`ablation=... preset=... seed=...`: the spec in a log line."""
        return f"ablation={self.ablation} preset={self.preset} seed={self.seed}"

    def with_params(self, **params: Any) -> RunSpec:
        return replace(self, params=tuple({**dict(self.params), **params}.items()))

    def settled(self) -> RunSpec:
        """The params folded into the overrides and the question reduced to this run's arm: a
        fixed run (what best.toml stores, what a trial's reproducing command says)."""
        arms = self.arms if not self.arms else tuple(a for a in self.arms
                                                      if a.name == self.ablation)
        return replace(self, overrides=tuple({**dict(self.overrides), **dict(self.params)
                                              }.items()), params=(), arms=arms)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (sweep.json, run.json, Ray): every field, overrides and params as tables."""
        out = asdict(self)
        out.update(eval_data=list(self.eval_data), overrides=dict(self.overrides),
                   params=dict(self.params), arms=[a.to_dict() for a in self.arms])
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunSpec:
        """The inverse of `to_dict`; also reads the flat form (selectors and config fields at
        the top level), through `apply_flat`."""
        d = dict(d)
        d.pop("force", None)  # records of sweeps before arms were data (it has no meaning now)
        tables = {k: dict(d.pop(k) or {}) for k in ("overrides", "params", "config") if k in d}
        spec, _ = apply_flat(cls(), d)
        spec, _ = apply_flat(spec, {**tables.get("config", {}), **tables.get("overrides", {})})
        return replace(spec, params=tuple(tables.get("params", {}).items()))

    def to_toml(self, comment: str = "") -> str:
        """TOML (`best.toml`, `--config`): scalars at the top, overrides under [config], a
        question's arms as [arms.<name>] tables."""
        lines = [f"# {c}" for c in comment.splitlines()]
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in ("overrides", "params", "arms") or v is None:
                continue
            lines.append(f"{f.name} = {toml_value(list(v) if isinstance(v, tuple) else v)}")
        for table, pairs in (("config", self.overrides), ("params", self.params)):
            if pairs:
                lines += ["", f"[{table}]"] + [f"{k} = {toml_value(v)}" for k, v in pairs]
        for arm in self.arms:
            lines += ["", *arm_toml(arm)]
        return "\n".join(lines) + "\n"

    def to_argv(self, *, single: bool = True) -> list[str]:
        """Command-line options that build this spec (a trial's reproducing command)."""
        argv = ["--preset", self.preset, "--data", self.data]
        if single:
            argv = ["--ablation", self.ablation, "--seed", str(self.seed), *argv]
        if self.eval_data:
            argv += ["--eval-data", ",".join(self.eval_data)]
        argv += {"iso_tokens": ["--iso-tokens"], "iso_flops": ["--iso-flops"],
                 "steps": ["--published-steps"],
                 "tokens": ["--tokens", str(self.token_budget)]}[self.budget]
        if self.max_steps:
            argv += ["--max-steps", str(self.max_steps)]
        sets = [f"{k}={_cli_value(v)}" for k, v in (*self.overrides, *self.params)]
        sets += [f"{k}={_cli_value(getattr(self, k))}" for k in ("head_dim", "ffn_mult",
                                                                  "lr_width")
                 if getattr(self, k) is not None]
        sets += ["match_params=true"] if self.match_params else []
        sets += ["match_active_params=true"] if self.match_active_params else []
        argv += ["--set", *sets] if sets else []
        return argv + [flag for a in self.arms for f in a.to_flags() for flag in ("--arm", f)]

    def diff(self, other: RunSpec) -> list[tuple[str, Any, Any]]:
        """(field, this value, other value) for every field that differs."""
        return [(f.name, getattr(self, f.name), getattr(other, f.name)) for f in fields(self)
                if getattr(self, f.name) != getattr(other, f.name)]


def _short(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _pairs(value: Any, what: str) -> tuple[tuple[str, Any], ...]:
    items = value.items() if isinstance(value, Mapping) else value
    out = dict(tuple(kv) for kv in items)
    valid = field_names()
    for key in out:
        if key in RESOLVED_ONLY:
            raise ValueError(f"{what} {key}: {key} is set through {RESOLVED_ONLY[key]}"
                             + (" (--tokens, which also keeps warmup in tokens)"
                                if key == "tokens" else ""))
        if key not in valid:
            raise unknown_key_error(key, valid)
        if field_type(key) == "str" and isinstance(out[key], (int, float)) and \
                not isinstance(out[key], bool):
            out[key] = str(out[key])  # a number given on the command line to a text field
    return tuple(sorted(out.items()))


def _validate(s: RunSpec) -> None:
    if s.ablation not in s.arm_names:
        raise unknown_key_error(str(s.ablation), s.arm_names, what="ablation")
    if s.preset not in PRESETS:
        raise ValueError(f"preset={s.preset!r} must be one of {', '.join(PRESETS)}")
    if s.budget not in BUDGETS:
        raise ValueError(f"budget={s.budget!r} must be one of {', '.join(BUDGETS)}")
    if not isinstance(s.data, str) or not s.data:
        raise ValueError(f"data={s.data!r} must be a corpus name or a path")
    for name, flag in (("max_steps", "--max-steps"), ("token_budget", "--tokens"),
                       ("head_dim", "head_dim"), ("lr_width", "lr_width")):
        v = getattr(s, name)
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            raise ValueError(f"{flag}={v!r} must be an integer > 0")
    if (s.budget == "tokens") != (s.token_budget is not None):
        raise ValueError(f"token_budget={s.token_budget!r} goes with budget='tokens' (got "
                         f"budget={s.budget!r}): give --tokens alone")
    if s.ffn_mult is not None and not (isinstance(s.ffn_mult, (int, float)) and s.ffn_mult > 0):
        raise ValueError(f"ffn_mult={s.ffn_mult!r} must be a number > 0")
    for name in ("match_params", "match_active_params"):
        if not isinstance(getattr(s, name), bool):
            raise ValueError(f"{name}={getattr(s, name)!r} must be true or false")
    if not isinstance(s.seed, int) or isinstance(s.seed, bool) or s.seed < 0:
        raise ValueError(f"seed={s.seed!r} must be an integer >= 0")


# --- flat keys ---------------------------------------------------------------------------------

SPEC_KEYS = tuple(f.name for f in fields(RunSpec)
                  if f.name not in ("overrides", "params", "arms"))
_BUDGET_ALIASES = ("iso_tokens", "iso_flops", "token_budget")
FLAT_SPEC_KEYS = (*SPEC_KEYS, "iso_tokens", "iso_flops", "corpus")
"""Every flat key `apply_flat` reads as a spec field (besides config fields)."""


def normalize_data(name: str, field: str = "data") -> str:
    """A corpus name as given; a local path made absolute (trials may run elsewhere). A URL
    (`s3://...`, `https://...`) is refused, credentials redacted: corpora are read from the
    Hub or from a local file, never fetched from another URL."""
    if is_named_corpus(name):
        return name
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", name):
        from .io import redact

        raise ValueError(f"{field}={redact(name)!r} is a URL: a corpus is an embedded name, "
                         f"'{HUB_PREFIX}<dataset>/<config>' or a local path (download the file "
                         "first)")
    return str(Path(name).expanduser().resolve())


def apply_flat(spec: RunSpec, flat: Mapping[str, Any]) -> tuple[RunSpec, set[str]]:
    """Apply flat keys to a spec: spec fields, aliases and config fields (as overrides).
    Returns the new spec and the names of the spec fields it set."""
    explicit = "budget" in flat  # the canonical form: budget (+ token_budget)
    setters = [k for k in ("iso_tokens", "iso_flops") if flat.get(k) is True]
    if flat.get("token_budget") is not None and not explicit:
        setters.append("token_budget")
    if len(setters) > 1 or (explicit and setters and setters != ["token_budget"]):
        raise ValueError("iso_tokens, iso_flops and token_budget each set the budget; keep one")
    changes: dict[str, Any] = {}
    overrides = dict(spec.overrides)
    for key, value in flat.items():
        if key == "iso_tokens" or key == "iso_flops":
            if not isinstance(value, bool):
                raise ValueError(f"{key}={value!r} must be true or false")
            changes["budget"] = key if value else "steps"
        elif key == "token_budget":
            changes["token_budget"] = value
            if value is not None and not explicit:
                changes["budget"] = "tokens"
        elif key in ("corpus", "data"):
            changes["data"] = normalize_data(str(value))
        elif key == "eval_data":
            items = value.split(",") if isinstance(value, str) else list(value)
            changes["eval_data"] = tuple(normalize_data(c.strip(), "eval_data")
                                         for c in items if c.strip())
        elif key == "arms":
            changes["arms"] = tuple(a if isinstance(a, Arm) else Arm.from_dict(a)
                                    for a in value)
        elif key == "force":  # written by earlier versions (best.toml, sweep.json): no meaning
            continue
        elif key in SPEC_KEYS:
            changes[key] = value
        elif key in field_names():
            overrides[key] = value
        else:
            raise unknown_key_error(key, [*SPEC_KEYS, *field_names()])
    if changes.get("budget", spec.budget) != "tokens" and \
            changes.get("token_budget", spec.token_budget) is not None:
        changes["token_budget"] = None  # a token count belongs to budget=tokens only
    given = set(changes) | ({"overrides"} if overrides != dict(spec.overrides) else set())
    return replace(spec, **changes, overrides=tuple(overrides.items())), given


def parse_value(text: str) -> Any:
    """A command-line value: int, float, bool or string, in that order of preference."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def parse_arm_flags(items: list[str] | None) -> tuple[Arm, ...]:
    """`["swiglu:ffn=swiglu,match_params=true", "big@tiny:d_model=48"]` -> arms, in order
    (`NAME@PRESET:...` gives arm NAME's values at one preset)."""
    own: dict[str, dict[str, Any]] = {}
    at: dict[str, dict[str, dict[str, Any]]] = {}
    for item in items or []:
        head, sep, body = item.partition(":")
        name, _, preset = head.partition("@")
        pairs = [p.partition("=") for p in body.split(",") if p.strip()] if sep else []
        if not sep or not name or not pairs or any(not s or not k.strip() for k, s, _ in pairs):
            raise ValueError(f"--arm {item!r} must look like NAME:KEY=VALUE[,KEY=VALUE...] "
                             "(e.g. swiglu:ffn=swiglu,match_params=true)")
        changes = {k.strip(): parse_value(v.strip()) for k, _, v in pairs}
        if preset:
            at.setdefault(name, {})[preset] = changes
        elif name in own:
            raise ValueError(f"--arm {name!r} is given twice; give each arm once")
        else:
            own[name] = changes
    for name in at:
        if name not in own:
            raise ValueError(f"--arm {name}@...: no --arm {name}:KEY=VALUE defines arm {name!r}")
    return tuple(Arm(n, c, at.get(n, {})) for n, c in own.items())


def parse_sets(items: list[str] | None) -> dict[str, Any]:
    """`["lr=1e-3", "ffn=swiglu"]` -> {"lr": 0.001, "ffn": "swiglu"}."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r} must look like key=value")
        if key == "tokens":
            raise ValueError(f"--set {item!r}: tokens is the resolved budget; use --tokens "
                             f"{value} (token_budget={value}), which also keeps warmup in tokens")
        out[key] = parse_value(value)
    return out


def _cli_value(v: Any) -> str:
    return "true" if v is True else "false" if v is False else repr(v) if isinstance(
        v, float) else str(v)


def spec_from_toml(text: str, source: str) -> tuple[RunSpec, set[str]]:
    """A TOML run file -> (spec, the spec fields it sets). Top level: spec fields (and the
    aliases older files use); [config]: overrides; [params]: a trial's varied settings;
    [meta]: ignored notes."""
    tomllib = toml_module()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"--config {source!r}: TOML syntax error: {exc}") from None
    tables = {k: doc.pop(k) for k in ("config", "params", "meta", "arms") if k in doc}
    doc.pop("force", None)  # written by earlier versions: no meaning now
    for key in doc:
        if key not in (*SPEC_KEYS, *_BUDGET_ALIASES, "corpus"):
            raise unknown_key_error(key, [*SPEC_KEYS, "config", "params", "meta", "arms"],
                                    what=f"top-level key in {source}")
    valid = field_names()
    for key in tables.get("config", {}):
        if key not in valid and key not in ("corpus", "eval_data"):
            raise unknown_key_error(key, valid, what=f"config key in {source}")
    if "arms" in tables:
        doc["arms"] = arms_from_table(tables["arms"], source)
    spec, given = apply_flat(RunSpec(), {**doc, **tables.get("config", {})})
    return replace(spec, params=tuple(tables.get("params", {}).items())), given


def load_spec_file(path: str | os.PathLike) -> tuple[RunSpec, set[str]]:
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ValueError(f"--config {str(path)!r}: no such file") from None
    return spec_from_toml(text, str(path))


# --- the command-line argument group ----------------------------------------------------------

def add_spec_args(ap: argparse.ArgumentParser, *, single: bool, arms: bool = True) -> None:
    """The options that make a RunSpec. `single`: one run (`--ablation`, `--seed`); `arms`:
    a question's arms (`--arms`, `--arm`). Every default is None, so what the user gave is
    known (a resumed sweep compares only that)."""
    g = ap.add_argument_group("what to train")
    if single:
        g.add_argument("--ablation", help="the arm to train: baseline or an arm of the question "
                       "(default: baseline, or the config file's)")
        g.add_argument("--seed", type=int, help="seed of initialisation and batch order "
                       "(default: 0)")
    g.add_argument("--preset", choices=PRESETS, help="scale (default: the config file's, else "
                   "seed with a GPU, else cpu)")
    g.add_argument("--data", help="embedded | pydoc | stdlib | reference | "
                   "hf:<dataset>/<config> | a local path (default: embedded); beats a config "
                   "file's corpus")
    g.add_argument("--config", help="TOML run file, e.g. a search's best.toml (default: none)")
    g.add_argument("--eval-data", help="extra evaluation domains, comma-separated corpora "
                   "(e.g. pydoc,stdlib): val_loss@<name> at every evaluation (default: none)")
    budget = g.add_mutually_exclusive_group()
    budget.add_argument("--iso-tokens", action="store_true", default=None,
                        help="every run trains the baseline's token count (the default)")
    budget.add_argument("--iso-flops", action="store_true", default=None,
                        help="every run trains the baseline's training FLOPs (smaller models "
                        "see more tokens)")
    budget.add_argument("--tokens", type=int, help="token budget of every run (default: none; "
                        "equal tokens come from --iso-tokens)")
    budget.add_argument("--published-steps", action="store_true", default=None,
                        help="each arm trains its published step count (unequal tokens, as "
                        "the reference did)")
    g.add_argument("--max-steps", type=int, help="steps of the reference run (default: the "
                   "preset's)")
    g.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                   help="override config fields or spec fields; repeatable (default: none)")
    if arms:
        g.add_argument("--arms", metavar="FILE", help="a question: a TOML file with a "
                       "[baseline] and [arms.<name>] tables, a shipped question by name "
                       "(reference, positional, ffn, schedule), or the TOML text itself "
                       "(default: reference, the six reference ablations)")
        g.add_argument("--arm", action="append", metavar="NAME:KEY=VALUE,...",
                       help="an arm on the command line, e.g. swiglu:ffn=swiglu,"
                       "match_params=true or big:d_model=x2 (a factor of the baseline's); "
                       "repeatable; with --arms it adds to the file's arms (default: none)")


def spec_from_args(args: argparse.Namespace, *, default_preset: str
                   ) -> tuple[RunSpec, set[str]]:
    """(spec, the spec fields the user gave). Precedence: the config file < the question's
    [baseline] < `--set` < explicit flags; `--data` beats the files' corpus."""
    spec, given = load_spec_file(args.config) if args.config else (RunSpec(), set())
    file = getattr(args, "arms", None)
    question = load_question(file) if file else None
    flagged = parse_arm_flags(getattr(args, "arm", None))
    if question is not None:
        spec, g = apply_flat(spec, question.baseline)
        given |= g
    if question is not None or flagged:
        spec = replace(spec, arms=merge_arms(spec.arms, question.arms if question else (),
                                             flagged))
        given.add("arms")
    if "preset" not in given:
        spec = replace(spec, preset=default_preset)
    spec, g = apply_flat(spec, parse_sets(args.set))
    given |= g
    flags: dict[str, Any] = {}
    for dest, key in (("preset", "preset"), ("data", "data"), ("eval_data", "eval_data"),
                      ("ablation", "ablation"), ("seed", "seed"), ("max_steps", "max_steps")):
        if getattr(args, dest, None) is not None:
            flags[key] = getattr(args, dest)
    for flag in ("tokens", "max_steps"):
        if getattr(args, flag, None) is not None and getattr(args, flag) <= 0:
            raise ValueError(f"--{flag.replace('_', '-')}={getattr(args, flag)} must be > 0")
    if args.tokens is not None:
        flags["token_budget"] = args.tokens
    for dest, budget in (("iso_tokens", "iso_tokens"), ("iso_flops", "iso_flops"),
                         ("published_steps", "steps")):
        if getattr(args, dest, None):
            flags["budget"] = budget
    spec, g = apply_flat(spec, flags)
    return spec, given | g
