"""Markdown for the report: numbers as text (nan as `-`) and tables from DataFrames."""

from __future__ import annotations

import math
from typing import Any


def fmt(v: Any, spec: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:{spec}}" if isinstance(v, float) else str(v)


def md_table(frame, columns: list[str] | None = None, spec: str = ".4g") -> str:
    cols = columns or list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(fmt(row.get(c), spec) for c in cols) + " |")
    return "\n".join(lines)
