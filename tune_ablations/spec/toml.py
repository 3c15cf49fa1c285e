"""TOML in and out: every file a user writes (run files, search spaces, question files) is read
with the standard library's `tomllib`, and the files we
write (best.toml, a sweep's question.toml) hold values it reads back unchanged."""

from __future__ import annotations

import json
from typing import Any


def toml_module():
    """The standard library's `tomllib`."""
    import tomllib

    return tomllib


def toml_value(v: Any) -> str:
    """A value as TOML writes it (floats exactly, strings and lists as JSON does)."""
    if isinstance(v, float):
        return repr(v)
    return json.dumps(v)
