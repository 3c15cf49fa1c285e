"""Training throughput of each architecture axis against the dense baseline at the `cpu`
preset, measured in one run (interleaved, median of repetitions), and the dense baseline of
this tree against another tree's (the main branch before the axes), side by side.

    git archive main | tar -x -C /tmp/main-tree     # the other tree, read-only
    python benchmarks/bench_axes.py [--reps 3] [--steps 20] --vs-tree /tmp/main-tree

`--ops` instead counts the ATen ops of one dense `train_step` (forward, backward, optimizer)
in this tree and in `--vs-tree`, and the loss each computes: a comparison that CPU contention
cannot blur (the dense path must do no more work than before the axes).

Each measurement is `train_step` (the trainer's own step: autocast, loss, backward, clip,
AdamW) on random tokens of the preset's batch, in fp32 and, on CPUs with bf16 matrix units, in
bf16. Prints one `key=value` line per measurement and per-variant medians and ratios to dense.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import has_fast_bf16, machine, median  # noqa: E402

VARIANTS = {
    "dense": {}, "swiglu": {"ffn": "swiglu", "d_ff": 512}, "gelu": {"ffn": "gelu"},
    "relu2": {"ffn": "relu2"}, "geglu": {"ffn": "geglu", "d_ff": 512},
    "layernorm": {"norm": "layernorm"}, "gqa_kv2": {"n_kv_heads": 2}, "mqa": {"n_kv_heads": 1},
    "qk_norm": {"qk_norm": True}, "window32": {"sliding_window": 32},
    "untied": {"tie_embeddings": False}, "z_loss": {"z_loss": 1e-4},
    "moe4_top1": {"n_experts": 4, "experts_per_token": 1},
    "moe8_top2": {"n_experts": 8, "experts_per_token": 2, "d_ff": 384},
}
"""Overrides of the cpu preset's baseline (d_model 192, 3 layers, d_ff 768, batch 8 x 128):
gated FFNs at the SiLU FFN's parameters (match_params), MoE at its active parameters
(match_active_params)."""

CHILD = r"""
import json, sys, time, torch
from tune_ablations.spec.config import with_overrides
from tune_ablations.spec.presets import build_ablation
from tune_ablations.training.step import build_step, train_step
overrides, steps, threads = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
dtype = sys.argv[4]
torch.set_num_threads(threads)
cfg = with_overrides(build_ablation("baseline", "cpu"), overrides)
amp = torch.bfloat16 if dtype == "bf16" else None
s = build_step(cfg, 1024, torch.device("cpu"), amp=amp)
g = torch.Generator().manual_seed(0)
x = torch.randint(0, 1024, (cfg.data.batch_size, cfg.data.seq_len + 1), generator=g)
for _ in range(3):
    train_step(s, x[:, :-1], x[:, 1:], 1e-3)
t = time.perf_counter()
for _ in range(steps):
    loss, _ = train_step(s, x[:, :-1], x[:, 1:], 1e-3)
float(loss)
print(json.dumps({"tokens_per_s": steps * cfg.tokens_per_step / (time.perf_counter() - t)}))
"""


OPS_CHILD = r"""
import json, torch
from torch.profiler import ProfilerActivity, profile
from tune_ablations.spec.presets import build_ablation
from tune_ablations.training.step import build_step, train_step
torch.set_num_threads(1)
cfg = build_ablation("baseline", "cpu")
out = {}
for dtype in ("fp32", "bf16"):
    amp = torch.bfloat16 if dtype == "bf16" else None
    s = build_step(cfg, 1024, torch.device("cpu"), amp=amp)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 1024, (cfg.data.batch_size, cfg.data.seq_len + 1), generator=g)
    train_step(s, x[:, :-1], x[:, 1:], 1e-3)
    with profile(activities=[ProfilerActivity.CPU]) as p:
        loss, _ = train_step(s, x[:, :-1], x[:, 1:], 1e-3)
    out[dtype] = {"ops": {e.key: e.count for e in p.key_averages()}, "loss": float(loss)}
print(json.dumps(out))
"""


def count_ops(tree: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    r = subprocess.run([sys.executable, "-c", OPS_CHILD], capture_output=True, text=True,
                       env=env, cwd=str(tree), check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def compare_ops(here: Path, other: Path) -> None:
    a, b = count_ops(here), count_ops(other)
    for dtype in a:
        ours, theirs = a[dtype]["ops"], b[dtype]["ops"]
        differ = {k: (ours.get(k, 0), theirs.get(k, 0)) for k in sorted({*ours, *theirs})
                  if ours.get(k, 0) != theirs.get(k, 0) and k.startswith("aten::")}
        print(f"ops dtype={dtype} ops_here={sum(ours.values())} ops_vs={sum(theirs.values())} "
              f"loss_here={a[dtype]['loss']!r} loss_vs={b[dtype]['loss']!r}")
        for k, (x, y) in differ.items():
            print(f"ops dtype={dtype} op={k} here={x} vs={y}")


def measure(tree: Path, overrides: dict, steps: int, threads: int, dtype: str) -> float:
    """tokens/s of `steps` train steps in a fresh process importing the package from `tree`."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    r = subprocess.run([sys.executable, "-c", CHILD, json.dumps(overrides), str(steps),
                        str(threads), dtype], capture_output=True, text=True, env=env,
                       cwd=str(tree), check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])["tokens_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--vs-tree", default="", help="another checkout: its dense baseline too")
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--ops", action="store_true", help="count the dense step's ops instead")
    args = ap.parse_args()
    here = Path(__file__).resolve().parent.parent
    print(machine())
    if args.ops:
        return compare_ops(here, Path(args.vs_tree))
    dtypes = ["fp32", *(["bf16"] if has_fast_bf16() else [])]
    runs = [(here, name) for name in args.variants]
    if args.vs_tree:
        runs.append((Path(args.vs_tree), "dense@vs"))
    for dtype in dtypes:
        got: dict[str, list[float]] = {}
        for rep in range(args.reps):  # interleaved: drift hits every variant alike
            for tree, name in runs:
                tps = measure(tree, VARIANTS[name.split("@")[0]], args.steps, args.threads,
                              dtype)
                got.setdefault(name, []).append(tps)
                print(f"dtype={dtype} rep={rep} variant={name} tokens_per_s={tps:.0f}",
                      flush=True)
        base = median(got["dense"])
        for name, xs in got.items():
            print(f"summary dtype={dtype} variant={name} median_tokens_per_s={median(xs):.0f} "
                  f"ratio_to_dense={median(xs) / base:.3f} reps={len(xs)}")


if __name__ == "__main__":
    main()
