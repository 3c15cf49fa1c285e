"""Arms: what a question compares. An arm is a name and the keys it changes from the baseline
(a question, `questions.py`, is a baseline and any number of arms).

The format, in one place (question files' `[arms.<name>]` tables, `--arm`, sweep.json):
- A change is a config field (`lr`, `ffn`, `d_model`, ...) or a derived-width setting
  (`match_params`, `head_dim`, `ffn_mult`, `lr_width`), set to an absolute value
  (`ffn = "swiglu"`, `lr = 1e-3`) or, for a numeric config field, to a factor of the
  baseline's value: `"x2"`, `"x0.5"`, `"x10/3"` (a fraction is exact where a decimal is not).
- A factor's result is rounded: an integer field to the nearest integer (at least 1), a float
  to 6 significant digits (x10/3 of 3e-4 is exactly 1e-3).
- `at_preset.<preset>`: values that replace the arm's own at one preset, where its rule cannot
  build a model (the reference's small_model at `tiny`: 2/3 of 2 heads is no head count).
- The command-line form is `--arm NAME:KEY=VALUE,KEY=VALUE` (repeatable), and
  `--arm NAME@PRESET:KEY=VALUE` for an arm's values at one preset.

Design choices:
- A factor keeps the arm's relation to the baseline at every preset and under every `--set`
  of the baseline, so the six reference arms are one file for every scale, and a user's arm
  means the same thing on a laptop and on a GPU.
- Arms change the model and its training, never what every arm must share for their losses to
  compare: the data, the tokenizer, the evaluation text and cadence, the seeds and the budget
  (`SHARED`); those belong to the baseline (`--set`, the question's `[baseline]`).
- The resolver (`resolve.py`) applies an arm after the baseline's settings and before a
  trial's varied settings; whether an arm changes anything at all, or differs from another,
  is decided on the resolved configs (`resolve.check_arms`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .config import PRESETS, field_names, field_type, unknown_key_error

BASELINE = "baseline"
"""The arm every other arm is compared with; it changes nothing."""
DERIVED = ("match_params", "match_active_params", "head_dim", "ffn_mult", "lr_width")
"""RunSpec settings an arm may change besides config fields (absolute values only)."""
SHARED = {
    "corpus": "the data", "tokenizer": "the data", "vocab_size": "the tokenizer",
    "num_documents": "the data", "val_fraction": "the evaluation text",
    "split_seed": "the evaluation text", "eval_data": "the evaluation text",
    "eval_tokens": "the evaluation text", "eval_every": "the evaluation milestones",
    "eval_every_tokens": "the evaluation milestones", "probe_tokens": "the evaluation budgets",
    "seed": "the seeds (--seeds)", "name": "the arm's name", "tokens": "the budget",
}
"""Config fields every arm of a question shares, and what they are."""
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.+-]{0,39}$")
_FACTOR = re.compile(r"^x(?P<num>[0-9.eE+-]+)(/(?P<den>[0-9.eE+-]+))?$")

Changes = tuple[tuple[str, Any], ...]


def valid_keys() -> list[str]:
    """Every key an arm may change."""
    return [k for k in field_names() if k not in SHARED] + list(DERIVED)


def is_factor(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("x")


def factor(text: str) -> float:
    """`"x10/3"` -> 3.333...; raises ValueError naming the rule."""
    m = _FACTOR.match(text)
    try:
        value = float(m["num"]) / float(m["den"] or 1) if m else math.nan
    except (ValueError, ZeroDivisionError):
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{text!r} must be a factor x<number> or x<number>/<number> > 0 "
                         "(e.g. x2, x0.5, x10/3)")
    return value


def _check_change(arm: str, key: str, value: Any) -> None:
    if key in SHARED:
        raise ValueError(f"arm {arm!r}: {key} sets {SHARED[key]}, which every arm shares so "
                         "that their losses compare; set it for all arms (--set, or the "
                         "question's [baseline])")
    if key not in valid_keys():
        raise ValueError(f"arm {arm!r}: " + str(unknown_key_error(key, valid_keys(),
                                                                  what="key")))
    if is_factor(value):
        if key in DERIVED or field_type(key) not in ("int", "float"):
            raise ValueError(f"arm {arm!r}: {key}={value!r}: a factor applies to numeric "
                             "config fields only; give an absolute value")
        try:
            factor(value)
        except ValueError as exc:
            raise ValueError(f"arm {arm!r}: {key}={exc}") from None


def _pairs(arm: str, changes: Any) -> Changes:
    items = changes.items() if isinstance(changes, Mapping) else changes
    out = dict(tuple(kv) for kv in items)
    for key, value in out.items():
        _check_change(arm, key, value)
    return tuple(sorted(out.items()))


DERIVES = {"match_params": "d_ff", "match_active_params": "d_ff", "ffn_mult": "d_ff",
           "head_dim": "n_heads", "lr_width": "lr"}
"""A derived-width setting -> the config field it sets."""


@dataclass(frozen=True, repr=False)
class Arm:
    """One arm of a question: its name and what it changes from the baseline."""
    name: str
    """The trial's `ablation` column and its folder's prefix."""
    changes: Changes = ()
    """(key, value) sorted by key: an absolute value, or a factor of the baseline's value."""
    at_preset: tuple[tuple[str, Changes], ...] = ()
    """(preset, changes): values that replace the arm's own at that preset."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ValueError(f"arm name {self.name!r} must start with a letter and hold only "
                             "letters, digits and _ . + - (at most 40 characters)")
        if self.name == BASELINE:
            raise ValueError(f"arm name {BASELINE!r} is the question's baseline: give it "
                             "settings in [baseline] (or with --set), and other names to arms")
        object.__setattr__(self, "changes", _pairs(self.name, self.changes))
        at = dict(self.at_preset.items() if isinstance(self.at_preset, Mapping)
                  else self.at_preset)
        for preset in at:
            if preset not in PRESETS:
                raise ValueError(f"arm {self.name!r}: at_preset.{preset}: the preset must be "
                                 f"one of {', '.join(PRESETS)}")
        object.__setattr__(self, "at_preset", tuple(sorted(
            (p, _pairs(f"{self.name}@{p}", c)) for p, c in at.items())))
        if not self.changes and not self.at_preset:
            raise ValueError(f"arm {self.name!r} changes nothing: an arm needs at least one "
                             "key=value")

    def __repr__(self) -> str:
        """`high_lr(lr=x10/3)`, and `@tiny(...)` for each preset's own values."""
        at = "".join(f" @{p}({_short(c).replace(',', ', ')})" for p, c in self.at_preset)
        return f"{self.name}({self.describe()}){at}"

    def config_keys(self, preset: str) -> set[str]:
        """The config fields the arm changes at `preset` (a derived-width setting names the
        field it derives: `match_params` and `ffn_mult` d_ff, `head_dim` n_heads, `lr_width`
        lr)."""
        return {DERIVES.get(k, k) for k in self.changes_at(preset)}

    def changes_at(self, preset: str) -> dict[str, Any]:
        """The arm's changes at `preset` (its at_preset values replacing its own)."""
        return {**dict(self.changes), **dict(dict(self.at_preset).get(preset, ()))}

    def apply(self, base: Mapping[str, Any], preset: str) -> dict[str, Any]:
        """Absolute values of the arm's changes at `preset`, factors taken of `base` (the
        baseline's flat settings)."""
        out = {}
        for key, value in self.changes_at(preset).items():
            if not is_factor(value):
                out[key] = value
                continue
            x = base[key] * factor(value)
            if field_type(key) == "int":
                out[key] = max(1, math.floor(x + 0.5))
            else:
                out[key] = float(f"{x:.6g}")
        return out

    def describe(self, preset: str | None = None) -> str:
        """`lr=x10/3, batch_size=x2` (at `preset`, when given)."""
        changes = self.changes_at(preset) if preset else dict(self.changes)
        return ", ".join(f"{k}={_text(v)}" for k, v in changes.items())

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "changes": dict(self.changes)}
        if self.at_preset:
            out["at_preset"] = {p: dict(c) for p, c in self.at_preset}
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Arm:
        return cls(d["name"], d.get("changes", {}), d.get("at_preset", {}))

    def to_flags(self) -> list[str]:
        """The `--arm` values that give this arm back."""
        flags = [f"{self.name}:{_short(self.changes)}"] if self.changes else []
        return flags + [f"{self.name}@{p}:{_short(c)}" for p, c in self.at_preset]


def _text(v: Any) -> str:
    return "true" if v is True else "false" if v is False else repr(v) if isinstance(
        v, float) else str(v)


def _short(changes: Changes) -> str:
    return ",".join(f"{k}={_text(v)}" for k, v in changes)


def arms_from_table(table: Any, source: str) -> tuple[Arm, ...]:
    """The `[arms]` table of a TOML file: one sub-table per arm."""
    if not isinstance(table, Mapping) or not table:
        raise ValueError(f"{source}: [arms] must hold at least one [arms.<name>] table")
    out = []
    for name, body in table.items():
        if not isinstance(body, Mapping):
            raise ValueError(f"{source}: arms.{name} must be a table of key = value changes "
                             f"(got {body!r})")
        body = dict(body)
        at = body.pop("at_preset", {})
        if not isinstance(at, Mapping) or not all(isinstance(v, Mapping) for v in at.values()):
            raise ValueError(f"{source}: arms.{name}.at_preset must hold one table per preset")
        try:
            out.append(Arm(str(name), body, at))
        except ValueError as exc:
            raise ValueError(f"{source}: {exc}") from None
    return tuple(out)


def merge_arms(*groups: Iterable[Arm]) -> tuple[Arm, ...]:
    """Arms from several sources, in order; a name given twice is refused."""
    out: dict[str, Arm] = {}
    for group in groups:
        for arm in group:
            if arm.name in out:
                raise ValueError(f"arm {arm.name!r} is defined twice (a question file and "
                                 "--arm, or two files); give each arm one name")
            out[arm.name] = arm
    return tuple(out.values())
