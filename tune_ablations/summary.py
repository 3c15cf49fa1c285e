"""The console summary at the end of a sweep: one row per ablation."""

from __future__ import annotations

from .cli import log
from .config import METRIC


def print_summary(df) -> None:
    """One row per ablation: mean +- std across seeds, the unigram reference, epochs, and
    trials by status (nothing dropped silently)."""
    if df.empty:
        return
    rows = []
    for name, g in df.groupby("ablation", sort=False, observed=True):
        def fmt(col: str, spec: str = ".4f", g=g) -> str:
            v = g[col].astype(float).dropna() if col in g else g.iloc[:0, 0]
            if v.empty:
                return "-"
            return f"{v.mean():{spec}}" + (f"+-{v.std():{spec}}" if len(v) > 1 else "")
        done = g[g["status"].astype(str) == "completed"]
        statuses = ",".join(f"{k}:{v}" for k, v in g["status"].value_counts().items() if v)
        rows.append((name, fmt("val_loss", g=done), fmt("unigram_val_loss", g=done),
                     fmt("val_acc", ".3f", g=done), f"{int(g['tokens_seen'].fillna(0).max()):,}",
                     fmt("epoch", ".2f", g=g), fmt("tokens_per_s", ".0f", g=done), statuses))
    rows.sort(key=lambda r: float(r[1].split("+")[0]) if r[1] != "-" else float("inf"))
    head = ("ablation", METRIC, "unigram", "val_acc", "tokens_seen", "epochs", "tokens/s",
            "status")
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for r in (head, *rows):
        log("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))
