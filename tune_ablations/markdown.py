"""Markdown tables and number formatting for the report."""

from __future__ import annotations

import math
from typing import Any


def _fmt(v: Any, spec: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:{spec}}"
    return str(v)


def md_table(frame, columns: list[str] | None = None, spec: str = ".4g") -> str:
    cols = columns or list(frame.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in frame.iterrows():
        lines.append("| " + " | ".join(_fmt(row.get(c), spec) for c in cols) + " |")
    return "\n".join(lines)


def _pm(row, m: str, spec: str = ".4f") -> str:
    mean, lo = row.get(f"{m}_mean"), row.get(f"{m}_ci_low")
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "-"
    if lo is None or math.isnan(lo):
        return f"{mean:{spec}} (n=1)"
    return f"{mean:{spec}} ± {mean - lo:{spec}}"
