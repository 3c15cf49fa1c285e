"""Where one training step's time goes: torch.profiler over `train_step`, grouped by kind of work.

    python benchmarks/profile_step.py [--sizes baseline d256x8] [--precisions fp32 bf16]
        [--compile both] [--steps 8] [--threads 2] [--top 0] [--device cpu|cuda] [--rounds 3]

For every size x precision x (eager, compiled) it prints one `profile ...` line: the wall time
per step (median of `--rounds` timed blocks, unprofiled) and the share of a profiled step in
each group below. On a CPU the shares come from the self times of the ATen ops (and of
inductor's generated kernels when compiled); `other` is wall time no op accounts for: Python,
the autograd engine and dispatch between ops. On a GPU they are shares of the GPU kernels'
time, and `gpu_busy` is that time over the wall time (far below 1: launch-bound). `--top N`
also prints the N costliest ops. `ONEDNN_MAX_CPU_ISA` / `ATEN_CPU_CAPABILITY` restrict the
kernels the libraries use (to emulate CPUs without AMX or AVX512); the first line shows the
measured matmul peaks, so a restriction that did not take is visible.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

# `--root PATH` profiles another checkout's code (e.g. a `git worktree` of earlier code).
_ROOT = sys.argv[sys.argv.index("--root") + 1] if "--root" in sys.argv else \
    str(Path(__file__).resolve().parent.parent)
sys.path.insert(0, _ROOT)
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from common import machine  # noqa: E402

from tune_ablations.spec.flops import flops_per_token  # noqa: E402
from tune_ablations.spec.presets import build_ablation  # noqa: E402
from tune_ablations.training.runtime import (  # noqa: E402
    measure_matmul_peak,
    peak_flops_for,
    sync,
)
from tune_ablations.training.step import build_step, train_step  # noqa: E402

# size -> (preset, ablation, overrides, vocabulary of that preset's tokenizer)
SIZES = {"baseline": ("cpu", "baseline", {}, 1024),
         "small_model": ("cpu", "small_model", {}, 1024),
         "d256x8": ("cpu", "baseline", {"d_model": 256, "n_heads": 8, "n_layers": 8,
                                        "d_ff": 1024, "seq_len": 256, "batch_size": 8}, 1024),
         "seed": ("seed", "baseline", {}, 8192)}

# First matching group wins; names are ATen ops (forward and backward), inductor's kernels
# and (on a GPU) CUDA kernel names.
GROUPS = (
    ("matmul", ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear",
                "mkldnn", "onednn", "extern_kernels.mm", "_mm_", "aten::baddbmm", "gemm",
                "cutlass", "sm90_", "sm80_", "ampere_", "cublas")),
    ("attention", ("scaled_dot_product", "flash", "_efficient_attention", "fmha",
                   "softmax")),
    ("optimizer", ("adam", "Optimizer.step", "_foreach", "multi_tensor")),
    ("grad_clip", ("norm", "clip_grad")),
    ("loss", ("cross_entropy", "nll_loss", "log_softmax")),
    ("embedding", ("embedding", "index_select", "indexing_backward")),
    ("cast", ("aten::to", "aten::_to_copy", "aten::copy_", "copy_kernel")),
    # `## Call CompiledFxGraph ... ##`: inductor's generated code for one graph; its self
    # time is the fused element-wise kernels it runs (they have no events of their own).
    ("compiled_fused", ("cpp_fused", "triton_", "graph_", "Torch-Compiled Region",
                        "CompiledFunction", "CompiledFxGraph")),
    ("elementwise", ("aten::", "elementwise", "vectorized", "reduce_kernel")),
)


def group_of(name: str) -> str:
    low = name.lower()
    for group, keys in GROUPS:
        if any(k.lower() in low for k in keys):
            return group
    return "unattributed_op"


def _batches(cfg, vocab: int, n: int, device) -> list:
    g = torch.Generator().manual_seed(0)
    shape = (cfg.data.batch_size, cfg.data.seq_len)
    return [tuple(torch.randint(0, vocab, shape, generator=g).to(device) for _ in range(2))
            for _ in range(n)]


def _timed(s, batches, lr, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for x, y in batches:
        train_step(s, x, y, lr)
    sync(device)
    return (time.perf_counter() - t0) / len(batches)


def profile(cfg, vocab: int, amp, compiled: bool, steps: int, rounds: int, top: int,
            device: torch.device) -> dict:
    t0 = time.perf_counter()
    s = build_step(cfg, vocab, device, amp=amp, compiled=compiled)
    build = time.perf_counter() - t0
    batches = _batches(cfg, vocab, steps, device)
    for x, y in batches[:3]:  # warm up allocators, oneDNN primitives, compiled graphs
        train_step(s, x, y, cfg.optim.lr)
    plain = statistics.median(_timed(s, batches, cfg.optim.lr, device) for _ in range(rounds))
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=acts) as prof:
        wall = _timed(s, batches, cfg.optim.lr, device)
    by: dict[str, float] = defaultdict(float)
    ops, kernels = [], 0
    for e in prof.key_averages():
        # CPU: self time of each op on the calling thread (intra-op threads work inside the
        # op's own time), so the self times sum to at most the wall time. GPU: kernel time.
        t = (e.self_device_time_total if device.type == "cuda" else e.self_cpu_time_total)
        if t <= 0:
            continue
        sec = t / 1e6 / steps
        by[group_of(e.key)] += sec
        ops.append((sec, e.key))
        kernels += e.count if device.type == "cuda" else 0
    ops.sort(reverse=True)
    return {"wall": wall, "plain": plain, "by": dict(by), "top": ops[:top], "build": build,
            "kernels": kernels / steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["baseline", "d256x8"], choices=list(SIZES))
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--compile", choices=("no", "yes", "both"), default="both")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--root", default=_ROOT, help="the checkout whose code is profiled")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    isa = {k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY",
                                      "MKL_ENABLE_INSTRUCTIONS") if k in os.environ}
    print(f"machine {machine()} threads={args.threads} device={device} root={args.root} "
          f"restrict={isa or 'none'} load={os.getloadavg()[0]:.1f}")
    peaks = {p: measure_matmul_peak(device, d) for p, d in
             (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    print(" ".join(f"peak_{p}={v:.3e}" for p, v in peaks.items()))
    comps = {"no": [False], "yes": [True], "both": [False, True]}[args.compile]
    for size in args.sizes:
        preset, ablation, over, vocab = SIZES[size]
        for prec in args.precisions:
            amp = torch.bfloat16 if prec == "bf16" else None
            peak, source = peak_flops_for(device, amp)
            for comp in comps:
                cfg = build_ablation(ablation, preset, **over, precision=prec, compile=comp,
                                     device=args.device)
                r = profile(cfg, vocab, amp, comp, args.steps, args.rounds, args.top, device)
                tok_s = cfg.tokens_per_step / r["plain"]
                mfu = tok_s * flops_per_token(cfg.model, vocab, cfg.data.seq_len) / peak
                busy = sum(r["by"].values())
                shares = {g: v / busy if device.type == "cuda" else v / r["wall"]
                          for g, v in r["by"].items()}
                if device.type != "cuda":
                    shares["other"] = max(0.0, 1 - sum(shares.values()))
                gpu = ""
                if device.type == "cuda":  # fp32 runs read against the bf16 data sheet too
                    sheet = peak_flops_for(device, torch.bfloat16)[0]
                    gpu = (f" mfu_vs_bf16_datasheet={mfu * peak / sheet:.4f} gpu_busy="
                           f"{busy / r['wall']:.3f} kernels_per_step={r['kernels']:.0f}")
                print(f"profile size={size} precision={prec} compile={comp} "
                      f"step_ms={1000 * r['plain']:.1f} profiled_ms={1000 * r['wall']:.1f} "
                      f"tokens_per_s={tok_s:.0f} mfu={mfu:.3f} "
                      f"peak={source} build_s={r['build']:.1f}{gpu} "
                      + " ".join(f"{g}={v:.3f}" for g, v in
                                 sorted(shares.items(), key=lambda kv: -kv[1])), flush=True)
                for sec, name in r["top"]:
                    print(f"  op={name[:90]!r} ms_per_step={1000 * sec:.2f}")


if __name__ == "__main__":
    main()
