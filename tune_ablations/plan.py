"""A sweep's plan: its trials, resources and scheduler, and what `--dry-run` shows of it.

Design choices:
- Grid and search both build a `SweepPlan`; `sweep.run_sweep` runs any plan the same way.
- `--dry-run` spends no compute beyond a few timed steps per distinct shape: per trial, its key
  settings, steps, tokens, training FLOPs, epochs over the corpus and estimated seconds, as a
  table or (`--json`) one JSON object per trial. Arms that repeat their corpus are warned about.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import RunConfig, to_flat_dict

KEY_SETTINGS = ("lr", "batch_size", "seq_len", "d_model", "n_layers", "n_heads", "vocab_size")


@dataclass
class SweepPlan:
    """Everything a sweep needs before Ray starts."""
    kind: str
    """`grid` or `search`: the experiment name's prefix and sweep.json's kind."""
    name: str
    """Experiment folder name."""
    configs: list[RunConfig]
    """Validated configs of the trials known up front (a search: its corners)."""
    labels: list[str]
    """One label per config (ablation/seed, or the corner's values)."""
    param_space: dict[str, Any]
    """Ray's param_space (resolved by the trainable through `resolve.resolve`)."""
    parameter_columns: list[str]
    """Columns of Ray's progress table."""
    record: dict[str, Any]
    """What sweep.json stores, from which a resumed sweep rebuilds this plan."""
    cpus: float
    """CPUs (and torch threads) per trial."""
    gpus: float
    """GPU share per trial."""
    tune_config: Callable[[], Any] | None = None
    """Builds Ray's TuneConfig (searcher, scheduler) once Ray is imported."""
    after: Callable[[Path, Any], None] | None = None
    """Runs after the results tables are written (a search: study, best.toml)."""
    files: dict[str, Path] = field(default_factory=dict)
    """Files stored verbatim in the experiment folder (name -> source)."""
    forced: dict[str, list[str]] = field(default_factory=dict)
    """Overrides the user forced onto arms that define them (key -> arms)."""
    live: Any = None
    """A search space, to refresh the study with the tables as trials finish (live view)."""
    resources: dict[str, float] = field(default_factory=dict)
    """Custom Ray resources per trial (e.g. one that only some nodes have)."""


def trial_rows(plan: SweepPlan, data_by_key: dict, threads: int) -> list[dict[str, Any]]:
    """One dict per planned trial: key settings, steps, tokens, FLOPs, epochs, seconds."""
    from .data import cache_key
    from .model import count_params, flops_per_token
    from .step import estimate_step_seconds

    step_time: dict[tuple, float] = {}
    rows = []
    for label, c in zip(plan.labels, plan.configs):
        data = data_by_key[cache_key(c.data)]
        shape = (c.model, c.data.batch_size, c.data.seq_len, c.precision, c.device, data.key)
        if shape not in step_time:
            step_time[shape] = estimate_step_seconds(c, data.vocab_size, threads)
        flat = {k: v for k, v in to_flat_dict(c).items() if k in KEY_SETTINGS}
        rows.append({
            "trial": label, "ablation": c.name, "seed": c.seed, **flat,
            "params": count_params(c.model, data.vocab_size)["params"], "steps": c.steps,
            "tokens": c.total_tokens, "tokens_per_step": c.tokens_per_step,
            "eval_every_tokens": c.eval.eval_every_tokens, "corpus": c.data.corpus,
            "num_documents": c.data.num_documents,
            "flops": flops_per_token(c.model, data.vocab_size, c.data.seq_len) * c.total_tokens,
            "epochs": c.total_tokens / data.manifest["train_tokens"],
            "est_seconds": step_time[shape] * c.steps})
    return rows


def epoch_warnings(rows: list[dict[str, Any]], corpus: str) -> list[str]:
    """A line per arm that trains more than one epoch over its corpus."""
    over = {}
    for r in rows:
        if r["epochs"] > 1:
            over[r["ablation"]] = max(over.get(r["ablation"], 0.0), r["epochs"])
    if not over:
        return []
    arms = ", ".join(f"{a} {e:.2f}" for a, e in over.items())
    return [f"warning: more than one epoch over corpus={corpus!r} ({arms} epochs): later tokens "
            "repeat earlier text. Use --data reference (Hub) or a larger local corpus, or a "
            "smaller budget (--tokens)"]


def print_plan(rows: list[dict[str, Any]], concurrency: int, *, as_json: bool, log) -> None:
    if as_json:
        for r in rows:
            log(json.dumps(r))
        return
    log(f"{'trial':<24} {'params':>9} {'steps':>6} {'tokens':>10} {'epochs':>6} "
        f"{'PFLOP':>8} {'est_s':>7}")
    for r in rows:
        log(f"{r['trial']:<24} {r['params']:>9,} {r['steps']:>6} {r['tokens']:>10,} "
            f"{r['epochs']:>6.2f} {r['flops'] / 1e15:>8.4f} {r['est_seconds']:>7.0f}")
    total_s = sum(r["est_seconds"] for r in rows)
    log(f"total trials={len(rows)} PFLOP={sum(r['flops'] for r in rows) / 1e15:.4f} "
        f"trial_seconds={total_s:.0f} est_wall_seconds={total_s / max(1, concurrency):.0f} "
        f"concurrency={concurrency}")


def warm_measurements(plan: SweepPlan, data_by_key: dict) -> None:
    """Measure the matmul peak (MFU's denominator) and run the precision probes here, once,
    before trials start and compete for the cores; trials read both from the cache."""
    import torch

    from .data import cache_key
    from .runtime import cpu_bf16_units, measure_matmul_peak
    from .step import choose_precision

    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(plan.cpus)))
    try:
        cpu = torch.device("cpu")
        measure_matmul_peak(cpu, torch.float32)
        if cpu_bf16_units():
            measure_matmul_peak(cpu, torch.bfloat16)
        seen = set()
        for c in plan.configs:
            shape = (c.model, c.data.batch_size, c.data.seq_len, c.precision)
            if shape not in seen:
                seen.add(shape)
                amp, why = choose_precision(c, data_by_key[cache_key(c.data)].vocab_size, cpu)
                print(f"event=precision ablation={c.name} choice={why!r}", flush=True)
    finally:
        torch.set_num_threads(old)
