"""Measured choices: the autocast precision and whether to compile, decided by timing real
training steps at the runs' shapes on the machine that trains them, and the step-time
estimate that plans use.

Design choices:
- One decision for a set of runs (`decide`): a single `train` run decides for itself; a sweep
  decides once for every trial (every arm, seed and node: `sweeps/decide.py`), so arms never
  differ in precision or compilation. `Choice.pin` turns the decision into explicit settings
  of each trial, and it is recorded with its reason and its measurements.
- `precision=auto` is bf16 (fp16 on GPUs without bf16) where the probe measured the runs'
  total training time at their shapes at least 5% lower than in fp32, else fp32; on a CPU only
  where it has native bf16 matrix units (read from /proc/cpuinfo, never assumed). A GPU is
  measured too: at small shapes it is launch-bound and autocast's casts made bf16 slower than
  fp32 (an H100 at the `seed` shape, benchmarks/RESULTS.md section 6).
- `compile=auto` compiles only where the time compiled steps save over the runs exceeds what
  compiling costs them: each run compiles once, with inductor's on-disk caches warm (the probe
  compiled every shape cold first). Both the saving and the cost are measured here.
- Per-shape measurements are cached per machine, so later sweeps read them instead of timing
  again; the driver (or one worker, on a cluster) runs them before trials compete for cores.
- Probes build their own timing step with explicit settings: they never call back into a
  decision that is being made.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..spec.config import RunConfig, with_overrides
from .runtime import (
    autocast_dtype,
    cpu_bf16_units,
    machine_id,
    precision_key,
    read_cache_file,
    resolve_device,
    sync,
    write_cache_file,
)
from .step import build_step, train_step

PROBES_FILE = "precision_probes.json"
MARGIN = 0.95
"""A choice other than the plain default (fp32, eager) must be measured >= 5% faster."""

Runs = Sequence[tuple[RunConfig, int]]
"""(config, real vocabulary size) of every run the decision covers."""


@dataclass(frozen=True)
class Choice:
    """How a run trains, or every run of a sweep: autocast precision and compilation, each with
    why, what the probe measured per shape and on which machine."""
    precision: str
    """`fp32`, `bf16` or `fp16`: what every run whose config says `auto` trains in."""
    compiled: bool
    """Whether every run whose config says `compile=auto` is compiled."""
    precision_reason: str = ""
    compile_reason: str = ""
    scope: str = "run"
    """`run` (a single `train`) or `sweep` (decided once for every trial)."""
    measured: dict = field(default_factory=dict)
    """shape label -> seconds per step (`fp32`, `bf16`, `eager`, `compiled`) and compile
    seconds (`compile_cold`, `compile_warm`)."""
    machine: str = ""
    """`machine_id()` of where the probe ran (a cluster's worker, for a remote sweep)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Choice:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def pin(self, cfg: RunConfig) -> RunConfig:
        """`cfg` with its `auto` settings replaced by this decision (explicit ones kept)."""
        over: dict[str, Any] = {}
        if cfg.precision == "auto":
            over["precision"] = self.precision
        if cfg.compile == "auto":
            over["compile"] = self.compiled
        return with_overrides(cfg, over) if over else cfg

    def reasons(self, cfg: RunConfig) -> tuple[str, str]:
        """(precision reason, compile reason) for `cfg` after `pin`: this decision's, or
        `asked` where the run set its own value."""
        p = self.precision_reason if cfg.precision in ("auto", self.precision) else \
            f"precision={cfg.precision} (asked)"
        c = self.compile_reason if cfg.compile in ("auto", self.compiled) else \
            f"compile={cfg.compile} (asked)"
        return p, c

    def seconds_per_step(self, cfg: RunConfig, vocab_size: int) -> float | None:
        """The probe's measured step time of `cfg` (after `pin`), if this shape was measured."""
        m = self.measured.get(shape_label(cfg, vocab_size), {})
        if cfg.compile is True and "compiled" in m and cfg.precision == self.precision:
            return m["compiled"]
        if cfg.compile is False and "eager" in m and cfg.precision == self.precision:
            return m["eager"]
        return m.get(cfg.precision)


def shape_label(cfg: RunConfig, vocab_size: int) -> str:
    """What a step's time depends on, as a readable key."""
    m = cfg.model
    axes = "".join([f"-kv{m.n_kv_heads}" if m.n_kv_heads else "",
                    f"-w{m.sliding_window}" if m.sliding_window else "",
                    f"-e{m.n_experts}k{m.experts_per_token}" if m.n_experts else "",
                    "-qknorm" if m.qk_norm else "", "-ln" if m.norm == "layernorm" else "",
                    "-untied" if not m.tie_embeddings else ""])
    return (f"d{m.d_model}-h{m.n_heads}-L{m.n_layers}-ff{m.d_ff}{m.ffn}-{m.pos_encoding}{axes}"
            f"-B{cfg.data.batch_size}-T{cfg.data.seq_len}-V{vocab_size}")


def step_seconds(cfg: RunConfig, vocab_size: int, threads: int, *, amp: torch.dtype | None,
                 compiled: bool = False, steps: int = 3) -> float:
    """Median wall time of a few `train_step`s of this config on this machine."""
    return measure_step(cfg, vocab_size, threads, amp=amp, compiled=compiled, steps=steps)[0]


def measure_step(cfg: RunConfig, vocab_size: int, threads: int, *, amp: torch.dtype | None,
                 compiled: bool = False, steps: int = 3) -> tuple[float, float]:
    """(median seconds per `train_step`, seconds to build the step: compilation included)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        device = resolve_device(cfg.device)
        t0 = time.perf_counter()
        s = build_step(cfg, vocab_size, device, amp=amp, compiled=compiled)
        build = time.perf_counter() - t0
        shape = (cfg.data.batch_size, cfg.data.seq_len)
        x, y = (torch.randint(0, vocab_size, shape, device=device) for _ in range(2))
        times = [math.nan]
        for i in range(steps + 1):
            sync(device)
            t0 = time.perf_counter()
            train_step(s, x, y, cfg.optim.lr)
            sync(device)
            if i:  # the first step warms up allocators and kernels
                times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    times = times[1:] or times
    return sorted(times)[len(times) // 2], build


def compile_seconds(cfg: RunConfig, vocab_size: int, threads: int, *, amp: torch.dtype | None,
                    steps: int = 3) -> dict[str, float]:
    """Compiled step time and what compiling costs: cold (this process's first compile of
    the shape) and warm (again after dynamo's in-memory caches are cleared, as a trial in
    another process would: inductor's on-disk caches hit)."""
    step, cold = measure_step(cfg, vocab_size, threads, amp=amp, compiled=True, steps=steps)
    _, warm = measure_step(cfg, vocab_size, threads, amp=amp, compiled=True, steps=0)
    return {"compiled": step, "compile_cold": cold, "compile_warm": warm}


Measure = Callable[[str, RunConfig, int, torch.dtype | None], dict[str, float]]


def measure_shape(kind: str, cfg: RunConfig, vocab_size: int, amp: torch.dtype | None
                  ) -> dict[str, float]:
    """The probe's measurements of one shape: `precision_bf16` (or `_fp16`) times fp32 and
    bf16 (fp16) steps; `compile` times eager and compiled steps at `amp` and the compile
    costs."""
    device = resolve_device(cfg.device)
    threads = torch.get_num_threads()
    cfg = with_overrides(cfg, {"precision": "fp32", "compile": False})
    if kind.startswith("precision_"):  # fp32 against `precision_<low>`
        low = kind.removeprefix("precision_")
        return {"fp32": step_seconds(cfg, vocab_size, threads, amp=None),
                low: step_seconds(cfg, vocab_size, threads, amp=autocast_dtype(low, device))}
    return {"eager": step_seconds(cfg, vocab_size, threads, amp=amp),
            **compile_seconds(cfg, vocab_size, threads, amp=amp)}


def _cached(kind: str, cfg: RunConfig, vocab_size: int, device: torch.device,
            amp: torch.dtype | None, measure: Measure) -> dict[str, float]:
    key = json.dumps([kind, machine_id(), device.type, shape_label(cfg, vocab_size),
                      precision_key(amp) if kind == "compile" else ""])
    cache = read_cache_file(PROBES_FILE)
    if key not in cache:
        cache[key] = measure(kind, cfg, vocab_size, amp)
        write_cache_file(PROBES_FILE, {**read_cache_file(PROBES_FILE), key: cache[key]})
    return cache[key]


def _shapes(runs: Runs) -> dict[str, dict[str, Any]]:
    """label -> a config of that shape, its vocabulary, the runs and their total steps."""
    out: dict[str, dict[str, Any]] = {}
    for cfg, vocab in runs:
        s = out.setdefault(shape_label(cfg, vocab), {"cfg": cfg, "vocab": vocab, "runs": 0,
                                                     "steps": 0})
        s["runs"] += 1
        s["steps"] += cfg.steps
    return out


def _whom(runs: Runs, scope: str) -> str:
    shapes = len(_shapes(runs))
    if scope == "run":
        return "at this shape"
    return f"for every run ({len(runs)} runs at {shapes} shape{'s' * (shapes != 1)})"


def decide(runs: Runs, device: torch.device, *, scope: str = "run",
           measure: Measure | None = None) -> Choice:
    """One precision and one compile setting for every run in `runs` whose config says `auto`
    (explicit settings are kept by `Choice.pin`). `measure` times one shape (default
    `measure_shape`)."""
    measure = measure or measure_shape
    precision, pwhy, pm = _decide_precision(runs, device, scope, measure)
    amp = autocast_dtype(precision, device)
    compiled, cwhy, cm = _decide_compile(runs, device, amp, scope, measure)
    measured = {label: {**pm.get(label, {}), **cm.get(label, {})} for label in {*pm, *cm}}
    return Choice(precision, compiled, pwhy, cwhy, scope, measured, machine_id())


def _asked(runs: Runs, key: str) -> set:
    return {getattr(c, key) for c, _ in runs if getattr(c, key) != "auto"}


def _decide_precision(runs: Runs, device: torch.device, scope: str, measure: Measure
                      ) -> tuple[str, str, dict]:
    asked = _asked(runs, "precision")
    if all(c.precision != "auto" for c, _ in runs) or len(asked) == 1:
        p = sorted(asked)[0] if asked else "fp32"
        auto = any(c.precision == "auto" for c, _ in runs)
        return p, (f"auto: {p}, as the other runs ask (one precision for every run)" if auto
                   else f"precision={p} (asked)"), {}
    if device.type == "cuda":  # bf16 where supported, else fp16; measured like a CPU's
        low, units = precision_key(autocast_dtype("auto", device)), \
            torch.cuda.get_device_name(device)
    else:
        low, units = "bf16", cpu_bf16_units()
        if units is None:
            return "fp32", "auto: fp32 (this CPU has no native bf16 matrix units)", {}
    shapes = _shapes([r for r in runs if r[0].precision == "auto"])
    m = {label: _cached(f"precision_{low}", s["cfg"], s["vocab"], device, None, measure)
         for label, s in shapes.items()}
    total = {p: sum(s["steps"] * m[label][p] for label, s in shapes.items())
             for p in ("fp32", low)}
    ratios = [m[label]["fp32"] / m[label][low] for label in shapes]
    each = "" if len(ratios) == 1 else f"; {min(ratios):.2f}x-{max(ratios):.2f}x per shape"
    faster = f"{total['fp32'] / total[low]:.2f}x"
    if total[low] < MARGIN * total["fp32"]:
        return low, (f"auto: {low} {_whom(runs, scope)} ({units}; probe {faster} faster than "
                     f"fp32{each})"), m
    return "fp32", (f"auto: fp32 {_whom(runs, scope)} ({units}, but the probe measured {low} "
                    f"no faster: {faster}{each})"), m


def _decide_compile(runs: Runs, device: torch.device, amp: torch.dtype | None, scope: str,
                    measure: Measure) -> tuple[bool, str, dict]:
    asked = _asked(runs, "compile")
    if all(c.compile != "auto" for c, _ in runs) or len(asked) == 1:
        c = sorted(asked)[0] if asked else False
        auto = any(x.compile == "auto" for x, _ in runs)
        return c, (f"auto: compile={c}, as the other runs ask" if auto
                   else f"compile={c} (asked)"), {}
    shapes = _shapes([r for r in runs if r[0].compile == "auto"])
    m = {label: _cached("compile", s["cfg"], s["vocab"], device, amp, measure)
         for label, s in shapes.items()}
    eager = sum(s["steps"] * m[label]["eager"] for label, s in shapes.items())
    comp = sum(s["steps"] * m[label]["compiled"] for label, s in shapes.items())
    cost = sum(s["runs"] * m[label]["compile_warm"] for label, s in shapes.items())
    cold = max(m[label]["compile_cold"] for label in shapes)
    facts = (f"compiled steps {eager / comp:.2f}x faster save {eager - comp:.1f} s over "
             f"{sum(s['runs'] for s in shapes.values())} run(s); compiling costs {cost:.1f} s "
             f"with inductor's cache warm, up to {cold:.0f} s cold per shape")
    if comp < MARGIN * eager and eager - comp > cost:
        return True, f"auto: compiled {_whom(runs, scope)} ({facts})", m
    return False, f"auto: eager {_whom(runs, scope)} ({facts})", m


def estimate_step_seconds(cfg: RunConfig, vocab_size: int, threads: int,
                          choice: Choice | None = None) -> float:
    """Seconds per step of `cfg` here, as its run would train (for plans): the probe's
    measurement where it has one, else a few timed steps."""
    device = resolve_device(cfg.device)
    choice = choice or decide([(cfg, vocab_size)], device)
    cfg = choice.pin(cfg)
    known = choice.seconds_per_step(cfg, vocab_size)
    if known is not None:
        return known
    return step_seconds(cfg, vocab_size, threads, amp=autocast_dtype(cfg.precision, device),
                        compiled=bool(cfg.compile))
