"""Where a run executes: device, autocast precision, clock synchronisation and the matmul peak
used as MFU's denominator. Never imports Ray.

Design choices:
- `precision=auto` is bf16 on GPUs that support it (else fp16); on CPUs it is measured
  (`probes.decide`): most CPUs have no bf16 matrix units and run bf16 matmuls far slower.
- The clock is read only after the device is synchronised.
- The measured peak is the best of several timed tries at several sizes (a single short try
  under-reads it and MFU can exceed 1), cached per process, device, dtype and thread count.
  Sizes ascend and stop once one product outlasts a try, so a dtype this machine emulates
  (fp16 on most CPUs) costs seconds, not minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path

import torch

from ..spec.io import write_atomic

# Dense bf16/fp16 tensor-core peaks from vendor data sheets, FLOP/s; first match of the name.
GPU_PEAK_FLOPS = (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40", 181e12),
                  ("A10", 125e12), ("L4", 121e12), ("V100", 125e12), ("T4", 65e12),
                  ("4090", 165e12), ("3090", 71e12))
_MEASURED_PEAK: dict[tuple, float] = {}


def resolve_device(device: str) -> torch.device:
    """`auto` is cuda where available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`, without probing; None means plain fp32.
    (`auto` on a CPU is decided by a probe: `probes.decide`.)"""
    if precision == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


ISA_LIMITS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
              "MKL_ENABLE_INSTRUCTIONS")
"""Environment variables that hold the math libraries below the CPU's own instruction sets:
what a measurement depends on as much as the CPU itself."""


def _cpuinfo(field: str) -> str | None:
    """The first `field` line's value in /proc/cpuinfo (None where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return next((line.split(":", 1)[1].strip() for line in f
                         if line.startswith(field)), None)
    except OSError:
        return None


def cpu_flags() -> list[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    return (_cpuinfo("flags") or "").split()


def cpu_bf16_units() -> str | None:
    """The CPU's native bf16 matrix instruction set (`amx_bf16`, `avx512_bf16`), if any: read
    from /proc/cpuinfo, never assumed from the model name, and only where oneDNN is not held
    below it (`ONEDNN_MAX_CPU_ISA=AVX2` leaves bf16 emulated; `AVX512_CORE_BF16` leaves no
    AMX)."""
    flags = cpu_flags()
    units = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    limit = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA")
             or "ALL").upper()
    if limit != "ALL":
        allowed = {"amx_bf16": "AMX" in limit,
                   "avx512_bf16": any(k in limit for k in ("AMX", "BF16", "AVX10"))}
        units = [u for u in units if allowed[u]]
    return units[0] if units else None


def machine_id() -> str:
    """What a cached measurement on this machine depends on: the CPU, its usable bf16 units,
    threads, torch, and any instruction-set limit in the environment."""
    import platform

    model = _cpuinfo("model name") or platform.processor()
    limits = "".join(f"|{k}={os.environ[k]}" for k in ISA_LIMITS if os.environ.get(k))
    return (f"{model}|{cpu_bf16_units()}|threads={torch.get_num_threads()}"
            f"|torch={torch.__version__}{limits}")


def cache_root() -> Path:
    """Where tokens, probes and measured peaks are cached (`$TUNE_ABLATIONS_CACHE`)."""
    return Path(os.environ.get("TUNE_ABLATIONS_CACHE",
                               Path.home() / ".cache" / "tune_ablations"))


def read_cache_file(name: str) -> dict:
    try:
        return json.loads((cache_root() / name).read_text())
    except (OSError, ValueError):
        return {}


def write_cache_file(name: str, data: dict) -> None:
    write_atomic(cache_root() / name, json.dumps(data, indent=1))


def precision_name(amp: torch.dtype | None) -> str:
    return str(amp).replace("torch.", "") if amp is not None else "fp32"


def precision_key(amp: torch.dtype | None) -> str:
    """The config's spelling of an autocast dtype: `fp32`, `bf16` or `fp16`."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]


def autocast(device: torch.device, amp: torch.dtype | None):
    """One autocast context for the run (re-entered at every forward pass)."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=amp)


def sync(device: torch.device) -> None:
    """Wait for queued device work, so that a clock read after it is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32,
                        sizes: tuple[int, ...] = (512, 1024, 2048), tries: int = 3,
                        seconds: float = 0.15) -> float:
    """FLOP/s of the fastest square matmul on this device, dtype and thread count: the best of
    `tries` timed loops at each size."""
    key = (str(device), dtype, torch.get_num_threads(), sizes)
    if key in _MEASURED_PEAK:
        return _MEASURED_PEAK[key]
    disk_key = f"{machine_id()}|{device.type}|{dtype}|{sizes}"
    if device.type == "cpu":  # once per machine, dtype and thread count
        cached = read_cache_file("peaks.json").get(disk_key)
        if cached:
            _MEASURED_PEAK[key] = cached
            return cached
    best = 0.0
    for n in sizes:  # ascending; a dtype without fast kernels here stops at a small size
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        if time.perf_counter() - t0 > seconds and best > 0:
            break
        for _ in range(tries):
            sync(device)
            reps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds:
                a @ b
                reps += 1
            sync(device)
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - t0))
    _MEASURED_PEAK[key] = best
    if device.type == "cpu":
        write_cache_file("peaks.json", {**read_cache_file("peaks.json"), disk_key: best})
    return best


def peak_flops_for(device: torch.device, amp: torch.dtype | None) -> tuple[float, str]:
    """(MFU denominator, where it came from): the data-sheet dense peak for known GPUs
    (bf16/fp16), else the matmul peak measured here in the training dtype."""
    if device.type == "cuda" and amp is not None:
        name = torch.cuda.get_device_name(device)
        for pattern, flops in GPU_PEAK_FLOPS:
            if pattern in name:
                return flops, f"datasheet:{pattern}"
    return measure_matmul_peak(device, amp or torch.float32), "measured"


def local_gpus() -> int:
    """CUDA devices visible to this process."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0
