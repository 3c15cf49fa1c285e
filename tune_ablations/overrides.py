"""Run files and command-line overrides: `--set key=value` and `--config best.toml`.

Design choices: TOML only, read with the standard library's `tomllib` (its backport `tomli` on
Python 3.10); every key is checked against the config's flat names before anything runs.
"""

from __future__ import annotations

import os
from typing import Any

from .config import field_names, unknown_key_error
from .resolve import SELECTOR_KEYS

# Fields the resolver sets from selectors; a user sets the selector instead.
RESOLVED_ONLY = ("tokens",)


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


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """`["lr=1e-3", "ffn=swiglu"]` -> {"lr": 0.001, "ffn": "swiglu"}; keys checked."""
    out: dict[str, Any] = {}
    valid = field_names() + list(SELECTOR_KEYS)
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r} must look like key=value")
        if key not in valid:
            raise unknown_key_error(key, valid)
        if key in RESOLVED_ONLY:
            raise ValueError(f"--set {item!r}: {key} is the resolved budget; use --tokens "
                             f"{value} (token_budget={value}), which also rescales warmup")
        out[key] = parse_value(value)
    return out


def toml_module():
    """stdlib `tomllib` (3.11+), else its backport `tomli` (same API)."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """A TOML run file: top-level `ablation`/`preset` and a `[config]` table of flat keys (what
    `search` writes as best.toml). Returns flat overrides, keys checked."""
    tomllib = toml_module()
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"--config {str(path)!r}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"--config {str(path)!r}: TOML syntax error: {exc}") from None
    flat = {k: doc[k] for k in SELECTOR_KEYS if k in doc}
    for key in doc:
        if key not in (*SELECTOR_KEYS, "config", "meta"):
            raise unknown_key_error(key, [*SELECTOR_KEYS, "config", "meta"],
                                    what=f"top-level key in {path}")
    valid = field_names()
    for key, value in doc.get("config", {}).items():
        if key not in valid:
            raise unknown_key_error(key, valid, what=f"config key in {path}")
        flat[key] = value
    return flat
