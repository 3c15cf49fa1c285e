"""Helpers shared by the benchmark scripts: machine description and robust ratios."""

from __future__ import annotations

import os
import platform
import statistics


def machine() -> str:
    import torch

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    try:
        import ray

        ray_v = ray.__version__
    except ImportError:
        ray_v = "-"
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    return (f"cpu={cpu!r} cores={os.cpu_count()} gpu={gpu!r} torch={torch.__version__} "
            f"ray={ray_v} python={platform.python_version()} "
            f"cpu_capability={torch.backends.cpu.get_cpu_capability()}")


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def has_fast_bf16() -> bool:
    """CPUs without AVX512-BF16/AMX run bf16 matmuls orders of magnitude slower than fp32."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
