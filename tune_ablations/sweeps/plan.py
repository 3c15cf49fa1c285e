"""A sweep's plan: its base spec, the trials known up front, its searcher and scheduler, and
what `--dry-run` shows of it.

Design choices:
- Grid and search both build a `SweepPlan`; `sweep.run_sweep` runs any plan the same way.
- `--dry-run` spends no compute beyond a few timed steps per distinct shape: per trial, its key
  settings, steps, tokens (cooldown probes counted apart), training FLOPs, epochs over the
  corpus and estimated seconds, as a table or (`--json`) one JSON object per trial on stdout,
  nothing else there. Arms that repeat their corpus are warned about.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..spec.config import RunConfig, to_flat_dict
from ..spec.flops import count_params, flops_per_token
from ..spec.io import say
from ..spec.runspec import RunSpec
from .options import ResourceOptions

KEY_SETTINGS = ("optimizer", "lr", "batch_size", "seq_len", "d_model", "n_layers", "n_heads",
                "d_ff", "vocab_size", "ffn", "norm", "n_kv_heads", "qk_norm", "sliding_window",
                "tie_embeddings", "z_loss", "n_experts", "experts_per_token")


@dataclass
class SweepPlan:
    """Everything a sweep needs before Ray starts."""
    kind: str
    """`grid` or `search`: the experiment name's prefix and sweep.json's kind."""
    name: str
    """Experiment folder name."""
    base: RunSpec
    """What every trial shares (the trainable resolves it with the trial's varied values)."""
    trials: list[RunSpec]
    """The trials known up front (a grid's first look; a search's corners, for checks)."""
    planned: int
    """Trials the sweep is expected to run (for the start line and the ETA)."""
    searcher: Callable[[str, int], Any]
    """(experiment location, concurrent slots) -> Ray Searcher, once Ray is imported."""
    record: dict[str, Any]
    """What sweep.json stores besides the resources, from which a resumed sweep rebuilds the
    plan."""
    resources: ResourceOptions
    """Resources and retries per trial."""
    gpus: float
    """GPU share per trial (resolved)."""
    parameter_columns: list[str]
    """Columns of Ray's progress table."""
    scheduler: Callable[[], Any] | None = None
    """Builds Ray's trial scheduler (ASHA) once Ray is imported."""
    after: Callable[..., None] | None = None
    """Runs after the results tables are written (a search: importances, best.toml, held-out
    check)."""
    files: dict[str, str] = field(default_factory=dict)
    """Files stored verbatim in the experiment (name -> text)."""
    max_concurrent: int | None = None
    """Trials at once (None: what the resources allow)."""
    later: str = ""
    """What the sweep decides to run after the listed trials (`--dry-run` says it)."""
    tracker: Any = None
    """The experiment tracker (`sweeps.trackers.TrackerOptions`); set by `sweep.execute`."""
    progress: Callable[[list], str] | None = None
    """The progress table's summary line from Ray's trials (`tuner.arms_progress`, ...)."""
    show_best: bool = True
    """Whether the progress table names a "current best trial" (not for a grid's arms)."""
    preview: list[RunSpec] | None = None
    """The trials `--dry-run` lists when they are not `trials` (a search's own samples, where
    they can be known before any result)."""

    @property
    def cpus(self) -> float:
        return self.resources.cpus_per_trial


def trial_rows(plan: SweepPlan, configs: list[RunConfig], data_by_id: dict, threads: int,
               choice=None) -> list[dict[str, Any]]:
    """One dict per planned trial: key settings, steps, tokens, FLOPs, epochs, seconds (at
    the sweep's decided precision and compilation, `choice`)."""
    from ..training.cooldown import planned_probe_tokens
    from ..training.data import data_id
    from ..training.probes import estimate_step_seconds

    step_time: dict[tuple, float] = {}
    rows = []
    for spec, c in zip(plan.trials, configs):
        data = data_by_id[data_id(c.data)]
        shape = (c.model, c.data.batch_size, c.data.seq_len, c.precision, c.device, data.key,
                 c.optim.optimizer)  # Muon's orthogonalisation costs time per step
        if shape not in step_time:
            step_time[shape] = estimate_step_seconds(c, data.vocab_size, threads, choice)
        probe = planned_probe_tokens(c)
        fpt = flops_per_token(c.model, data.vocab_size, c.data.seq_len)
        counts = count_params(c.model, data.vocab_size)
        rows.append({
            "trial": spec.label, "ablation": c.name, "seed": c.seed,
            **{k: v for k, v in to_flat_dict(c).items() if k in KEY_SETTINGS},
            "params": counts["params"], "active_params": counts["active_params"],
            "flops_per_token": fpt, "steps": c.steps,
            "tokens": c.total_tokens, "probe_tokens": probe, "tokens_per_step": c.tokens_per_step,
            "eval_every_tokens": c.eval.eval_every_tokens, "corpus": c.data.corpus,
            "num_documents": c.data.num_documents, "flops": fpt * (c.total_tokens + probe),
            "epochs": c.total_tokens / data.manifest["train_tokens"],
            "est_seconds": step_time[shape] * (c.steps + probe // c.tokens_per_step)})
    return rows


def epoch_rows(configs: list[RunConfig], data_by_id: dict) -> list[dict[str, Any]]:
    from ..training.data import data_id

    return [{"ablation": c.name, "epochs": c.total_tokens / data_by_id[data_id(
        c.data)].manifest["train_tokens"]} for c in configs]


def epoch_warnings(rows: list[dict[str, Any]], corpus: str) -> list[str]:
    """A line per arm that trains more than one epoch over its corpus."""
    over: dict[str, float] = {}
    for r in rows:
        if r["epochs"] > 1:
            over[r["ablation"]] = max(over.get(r["ablation"], 0.0), r["epochs"])
    if not over:
        return []
    arms = ", ".join(f"{a} {e:.2f}" for a, e in over.items())
    return [f"warning: more than one epoch over corpus={corpus!r} ({arms} epochs): later tokens "
            "repeat earlier text. Use --data reference (Hub) or a larger local corpus, or a "
            "smaller budget (--tokens)"]


def print_plan(rows: list[dict[str, Any]], concurrency: int, *, as_json: bool) -> None:
    """The plan on stdout: one JSON object per trial, or a table and a total line."""
    if as_json:
        for r in rows:
            say(json.dumps(r))
        return
    say(f"{'trial':<28} {'params':>9} {'steps':>6} {'tokens':>10} {'epochs':>6} "
        f"{'PFLOP':>8} {'est_s':>7}")
    for r in rows:
        say(f"{r['trial']:<28} {r['params']:>9,} {r['steps']:>6} {r['tokens']:>10,} "
            f"{r['epochs']:>6.2f} {r['flops'] / 1e15:>8.4f} {r['est_seconds']:>7.0f}")
    total_s = sum(r["est_seconds"] for r in rows)
    say(f"total trials={len(rows)} PFLOP={sum(r['flops'] for r in rows) / 1e15:.4f} "
        f"probe_tokens={sum(r['probe_tokens'] for r in rows)} trial_seconds={total_s:.0f} "
        f"est_wall_seconds={total_s / max(1, concurrency):.0f} concurrency={concurrency}")


def warm_measurements(cpus: float) -> None:
    """Measure the matmul peak (MFU's denominator) here, once, before trials start and compete
    for the cores; trials read it from the cache. (The precision and compile probes are the
    sweep's one decision: `decide.py`.)"""
    import torch

    from ..training.runtime import cpu_bf16_units, measure_matmul_peak

    old = torch.get_num_threads()
    torch.set_num_threads(max(1, int(cpus)))
    try:
        cpu = torch.device("cpu")
        measure_matmul_peak(cpu, torch.float32)
        if cpu_bf16_units():
            measure_matmul_peak(cpu, torch.bfloat16)
    finally:
        torch.set_num_threads(old)
