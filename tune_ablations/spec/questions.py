"""Question files: a baseline and the arms to compare with it, as TOML (`grid --arms FILE`, or a
shipped question by name). The six reference ablations are the shipped `reference` question,
and the default.

    description = "Does rotary position encoding matter at this scale?"

    [baseline]                 # optional: what every arm shares (flat keys, as --set takes)
    preset = "cpu"             #   spec fields: preset, data, eval_data, budget, max_steps,
    schedule = "cosine"        #   token_budget, head_dim, ffn_mult, lr_width, match_params;
                               #   and config fields (lr, d_model, ...)
    [arms.no_rope]             # one table per arm: the keys it changes (see `arms.py`)
    pos_encoding = "none"

    [arms.small]
    d_model = "x2/3"           # a factor of the baseline's value
    n_heads = "x2/3"

    [arms.small.at_preset.tiny]  # optional: its values at one preset, where the rule fails
    d_model = 16

Design choices:
- The file is data: nothing in it runs, it is read with `tomllib`, and every key is checked
  (an unknown one names the closest valid key) before any compute.
- The baseline is a preset plus overrides: the reference run that budgets, warmup tokens and
  evaluation milestones are measured against (`resolve.reference_run`).
- The command line wins over the file's [baseline] (the file < `--set` < flags), as it does
  over a `--config` file.
- Shipped questions live in `tune_ablations/questions/` (package data, like search spaces).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .arms import Arm, arms_from_table
from .config import field_names, unknown_key_error
from .toml import toml_module, toml_value

SHIPPED = Path(__file__).resolve().parent.parent / "questions"
REFERENCE = "reference"
"""The shipped question of the six reference ablations: the default."""
BASELINE_SPEC_KEYS = ("preset", "data", "corpus", "eval_data", "budget", "iso_tokens",
                      "iso_flops", "max_steps", "token_budget", "head_dim", "ffn_mult",
                      "lr_width", "match_params", "match_active_params")
"""Spec fields a question's [baseline] may set (the arm and the seed are the sweep's)."""
_TOP = ("description", "baseline", "arms")


@dataclass(frozen=True)
class Question:
    """A parsed question file."""
    source: str
    """Where it came from: a path, or the shipped name."""
    text: str
    """The file, verbatim (stored with the sweep)."""
    description: str
    """What it asks."""
    baseline: dict[str, Any]
    """Flat keys of [baseline]: spec fields and config fields every arm shares."""
    arms: tuple[Arm, ...]
    """The arms, in file order."""

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.arms]


def shipped_questions() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.toml"))


def is_shipped(name_or_path: str | os.PathLike) -> bool:
    """A shipped question's name (not a path or TOML text)."""
    return str(name_or_path) in shipped_questions()


def find_question(name_or_path: str | os.PathLike) -> Path:
    """A shipped question by name (`positional`), or a TOML file's path."""
    path = Path(name_or_path).expanduser()
    if path.exists() or path.suffix == ".toml" or "/" in str(name_or_path):
        return path
    if (SHIPPED / f"{name_or_path}.toml").exists():
        return SHIPPED / f"{name_or_path}.toml"
    raise unknown_key_error(str(name_or_path), shipped_questions(),
                            what="question (name or .toml file) for --arms")


def load_question(name_or_path: str | os.PathLike) -> Question:
    """A shipped question by name, a TOML file's path, or the TOML text itself (any value
    holding a line break: what `submit` sends a cluster that lacks the file)."""
    if "\n" in str(name_or_path):
        return parse_question(str(name_or_path), "--arms text")
    path = find_question(name_or_path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ValueError(f"--arms {str(name_or_path)!r}: no such file") from None
    source = path.stem if path.parent == SHIPPED else str(path)
    return parse_question(text, source)


def parse_question(text: str, source: str) -> Question:
    """A question from its TOML text; raises ValueError naming the file, key, value and rule."""
    tomllib = toml_module()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{source}: TOML syntax error: {exc}") from None
    for key in doc:
        if key not in _TOP:
            what = "top-level key"
            raise ValueError(f"{source}: {unknown_key_error(key, list(_TOP), what=what)}")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise ValueError(f"{source}: description={description!r} must be text")
    baseline = doc.get("baseline", {})
    if not isinstance(baseline, Mapping):
        raise ValueError(f"{source}: baseline must be a table of key = value settings")
    valid = [*BASELINE_SPEC_KEYS, *field_names()]
    for key in baseline:
        if key not in valid:
            what = "key in [baseline]"
            raise ValueError(f"{source}: {unknown_key_error(key, valid, what=what)}")
    if "arms" not in doc:
        raise ValueError(f"{source}: a question needs at least one [arms.<name>] table")
    return Question(source, text, description.strip(), dict(baseline),
                    arms_from_table(doc["arms"], source))


@functools.cache
def reference() -> Question:
    """The six reference ablations (the shipped `reference.toml`)."""
    return load_question(SHIPPED / f"{REFERENCE}.toml")


def question_toml(arms: tuple[Arm, ...], description: str = "") -> str:
    """A question file holding `arms` (what a sweep stores for arms given with --arm)."""
    lines = [f"description = {toml_value(description)}"] if description else []
    for arm in arms:
        lines += ["", *arm_toml(arm)]
    return "\n".join(lines).lstrip("\n") + "\n"


def arm_toml(arm: Arm) -> list[str]:
    """Lines of an arm's `[arms.<name>]` table (and `[arms.<name>.at_preset.<preset>]`)."""
    lines = [f"[arms.{arm.name}]"] + [f"{k} = {toml_value(v)}" for k, v in arm.changes]
    for preset, changes in arm.at_preset:
        lines += ["", f"[arms.{arm.name}.at_preset.{preset}]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in changes]
    return lines
