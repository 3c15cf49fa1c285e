"""Measured choices: the autocast precision and whether to compile, each decided by timing a few
real steps at the run's shape on this machine, and the step-time estimate that plans use.

Design choices:
- `precision=auto` is bf16 on GPUs that support it (else fp16). On a CPU it is bf16 only where
  the CPU has native bf16 matrix units (read from /proc/cpuinfo, never assumed) *and* a short
  probe at this shape measured it faster; fp32 otherwise.
- `compile=auto` compiles only where a probe measured the compiled step faster (compilation
  itself excluded).
- Probe results are cached per machine and shape, so trials of a sweep (and later sweeps) read
  them instead of timing again; the driver runs them once before trials compete for cores.
- Probes build their own timing step with explicit settings: they never call back into a
  decision that is being made.
"""

from __future__ import annotations

import dataclasses
import json
import time

import torch

from ..spec.config import RunConfig
from .runtime import (
    autocast_dtype,
    cpu_bf16_units,
    machine_id,
    read_cache_file,
    resolve_device,
    sync,
    write_cache_file,
)
from .step import build_step, train_step

PROBES_FILE = "precision_probes.json"


def step_seconds(cfg: RunConfig, vocab_size: int, threads: int, *, amp: torch.dtype | None,
                 compiled: bool = False, steps: int = 3) -> float:
    """Median wall time of a few `train_step`s of this config on this machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        device = resolve_device(cfg.device)
        s = build_step(cfg, vocab_size, device, amp=amp, compiled=compiled)
        shape = (cfg.data.batch_size, cfg.data.seq_len)
        x, y = (torch.randint(0, vocab_size, shape, device=device) for _ in range(2))
        times = []
        for i in range(steps + 1):
            sync(device)
            t0 = time.perf_counter()
            train_step(s, x, y, cfg.optim.lr)
            sync(device)
            if i:  # the first step warms up allocators and kernels
                times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(old)
    return sorted(times)[len(times) // 2]


def _shape_key(kind: str, cfg: RunConfig, vocab_size: int, device: torch.device) -> str:
    m = cfg.model
    return json.dumps([kind, machine_id(), device.type, m.d_model, m.n_layers, m.d_ff, m.ffn,
                       cfg.data.seq_len, cfg.data.batch_size, vocab_size, cfg.precision])


def _cached(key: str, measure) -> dict:
    cache = read_cache_file(PROBES_FILE)
    if key not in cache:
        cache[key] = measure()
        write_cache_file(PROBES_FILE, cache)
    return cache[key]


def choose_precision(cfg: RunConfig, vocab_size: int, device: torch.device
                     ) -> tuple[torch.dtype | None, str]:
    """(autocast dtype, why)."""
    if cfg.precision != "auto":
        return autocast_dtype(cfg.precision, device), f"precision={cfg.precision} (asked)"
    if device.type == "cuda":
        amp = autocast_dtype("auto", device)
        return amp, f"auto: {'bf16' if amp is torch.bfloat16 else 'fp16'} on this GPU"
    units = cpu_bf16_units()
    if units is None:
        return None, "auto: fp32 (this CPU has no native bf16 matrix units)"
    threads = torch.get_num_threads()
    t = _cached(_shape_key("precision", cfg, vocab_size, device), lambda: {
        name: step_seconds(cfg, vocab_size, threads, amp=amp) for name, amp in
        (("fp32", None), ("bf16", torch.bfloat16))})
    if t["bf16"] < 0.95 * t["fp32"]:
        return torch.bfloat16, (f"auto: bf16 ({units}; probe {t['fp32'] / t['bf16']:.2f}x "
                                "faster than fp32 at this shape)")
    return None, f"auto: fp32 ({units}, but the probe measured bf16 no faster at this shape)"


def choose_compile(cfg: RunConfig, vocab_size: int, device: torch.device,
                   amp: torch.dtype | None) -> tuple[bool, str]:
    """(compile?, why), at the precision already chosen."""
    if cfg.compile != "auto":
        return bool(cfg.compile), f"compile={cfg.compile} (asked)"
    threads = torch.get_num_threads()
    t = _cached(_shape_key("compile", cfg, vocab_size, device), lambda: {
        str(c): step_seconds(dataclasses.replace(cfg, compile=c), vocab_size, threads, amp=amp,
                             compiled=c) for c in (False, True)})
    if t["True"] < 0.95 * t["False"]:
        return True, f"auto: compiled ({t['False'] / t['True']:.2f}x faster at this shape)"
    return False, "auto: eager (the probe measured compile no faster at this shape)"


def estimate_step_seconds(cfg: RunConfig, vocab_size: int, threads: int) -> float:
    """Seconds per step of `cfg` here, at the precision its run would choose (for plans)."""
    device = resolve_device(cfg.device)
    amp, _ = choose_precision(cfg, vocab_size, device)
    return step_seconds(cfg, vocab_size, threads, amp=amp)
