"""A grid's answer as the grid prints it and as data: the lines at the end of the grid, and one
record per arm (`grid --json`, the Python API's DataFrame) for a loop that keeps or discards
a change with error control.

Design choices:
- Records are built from whatever `answer.ArmAnswer` and `answer.Answer` hold (every field,
  generically), so a field added there appears here without a change: an interval (a pair) is
  split into `<name>_low` / `<name>_high`, NaN becomes null, and the answer's own fields
  (the baseline's loss, the procedure, why it stopped) repeat in every record, so each
  object stands alone.
- With `--tune-lr`, each record also holds the arm's chosen learning rate.
"""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from typing import Any

from ..spec.names import DECISIONS_FILE, METRIC, SWEEP_FILE
from .answer import Answer, answer, answer_lines
from .experiment import Experiment
from .frames import Results


def experiment_answer(exp: Experiment, res: Results) -> tuple[Answer | None, dict]:
    """(the answer, decisions.json) of a finished or running grid; (None, ...) without a
    baseline to compare with."""
    decisions = exp.read_json(DECISIONS_FILE) or {}
    spec = (exp.read_json(SWEEP_FILE, default={}) or {}).get("spec")
    return answer(res, decisions, spec=spec), decisions


def _plain(value: Any) -> Any:
    if is_dataclass(value):  # a confound: {what, arm, baseline, kind, direction}
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):  # numpy scalars
        return _plain(value.item())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _flatten(obj: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        if isinstance(value, tuple) and len(value) == 2:
            out[f"{f.name}_low"], out[f"{f.name}_high"] = _plain(value[0]), _plain(value[1])
        else:
            out[f.name] = _plain(value)
    return out


def answer_records(ans: Answer, decisions: dict | None = None) -> list[dict[str, Any]]:
    """One JSON-ready dict per arm: every field of its line, then the answer's own fields."""
    shared = {"metric": METRIC, **_flatten(ans, skip=("arms",))}
    chosen = ((decisions or {}).get("tune_lr") or {}).get("chosen") or {}
    out = []
    for arm in ans.arms:
        record = _flatten(arm)
        if arm.arm in chosen:
            record["chosen_lr"] = chosen[arm.arm]
        out.append({**record, **shared})
    return out


def answer_frame(ans: Answer | None, decisions: dict | None = None):
    """The answer as a DataFrame, one row per arm (empty without an answer)."""
    import pandas as pd

    return pd.DataFrame(answer_records(ans, decisions) if ans is not None else [])


def answer_text(ans: Answer, decisions: dict, res: Results) -> list[str]:
    """The answer as the grid prints it: a heading, one line per arm, how it was decided, and
    with --tune-lr the chosen lrs and the conclusions that change."""
    tuned = decisions.get("tune_lr")
    lines = ["", f"Answer (each arm's final {METRIC} minus the baseline's; negative is better"
             + (", every arm at its own chosen lr" if tuned else "") + "):"]
    lines += [f"  {line}" for line in answer_lines(ans)]
    if tuned:
        from .lr_curves import fixed_lr
        from .report import changed_section

        lines.append("  chosen lr: " + ", ".join(f"{a} {lr:.3g}"
                                                 for a, lr in tuned["chosen"].items()))
        fixed = fixed_lr(res.trials, tuned["centres"])
        lines += [f"  {line}" for line in changed_section(fixed, ans)[4:] if line]
    return lines
