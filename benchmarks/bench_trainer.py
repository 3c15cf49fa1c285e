"""Trainer throughput and MFU: `train()` against a minimal plain-PyTorch loop of the same
architecture and batch, interleaved, median of several repetitions.

    python benchmarks/bench_trainer.py [--reps 3] [--steps 40] [--threads 2] [--compile]

Prints one `key=value` line per measurement and a ratio line per configuration. MFU is against
the matmul peak measured here (same dtype and thread count).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from common import has_fast_bf16, machine, median  # noqa: E402

from tune_ablations.spec.flops import flops_per_token  # noqa: E402
from tune_ablations.spec.presets import build_ablation  # noqa: E402
from tune_ablations.training.data import prepare_data, sample_batch  # noqa: E402
from tune_ablations.training.model import TransformerLM  # noqa: E402
from tune_ablations.training.runtime import measure_matmul_peak  # noqa: E402
from tune_ablations.training.trainer import train  # noqa: E402

# Shapes beyond the presets (the performance issue's reference size).
SIZES = {"d256x8": {"d_model": 256, "n_heads": 8, "n_layers": 8, "d_ff": 1024, "seq_len": 256,
                    "batch_size": 8}}


def minimal_loop(cfg, data, steps: int, amp, compile_: bool) -> float:
    """tokens/s of the plainest loop: no schedule, no metrics, no callbacks, no evaluation."""
    torch.manual_seed(0)
    model = TransformerLM(cfg.model, data.vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, fused=True)
    fwd = torch.compile(model) if compile_ else model
    gen = torch.Generator().manual_seed(0)
    B, T = cfg.data.batch_size, cfg.data.seq_len

    def step():
        x, y = sample_batch(data.train, B, T, gen)
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            logits = fwd(x)
        F.cross_entropy(logits.float().flatten(0, 1), y.flatten()).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    if compile_:  # compiled before the clock starts, as train() does
        x, _ = sample_batch(data.train, B, T, torch.Generator())
        F.cross_entropy(fwd(x).float().flatten(0, 1), x.flatten()).backward()
        model.zero_grad(set_to_none=True)
    # Timed from a cold start, like train(): same steps, same first-step allocations.
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * B * T / (time.perf_counter() - t0)


def trainer(cfg, data) -> tuple[float, float, float]:
    """(tokens/s, mfu, eval fraction) of train(), training time only."""
    r = train(cfg, data=data)
    return r["tokens_per_s"], r["mfu"], r["eval_time_s"] / r["train_time_s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also measure torch.compile")
    ap.add_argument("--sizes", nargs="+", default=["baseline", "small_model", "d256x8"],
                    help="cpu-preset ablations, or d256x8 (d_model 256, 8 layers, seq 256)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine {machine()} threads={args.threads}")
    dtypes = [("fp32", None)] + ([("bf16", torch.bfloat16)] if has_fast_bf16() else [])
    if not has_fast_bf16():
        print("skip precision=bf16 reason=cpu_has_no_avx512_bf16_or_amx")
    for name, amp in dtypes:
        peak = measure_matmul_peak(torch.device("cpu"), amp or torch.float32)
        print(f"peak dtype={name} matmul_flops={peak:.3e}")
        for size in args.sizes:
            for comp in ([False, True] if args.compile else [False]):
                cfg = build_ablation(
                    "baseline" if size in SIZES else size, "cpu", **SIZES.get(size, {}),
                    max_steps=args.steps, eval_every=10_000, warmup_steps=2, precision=name,
                    compile=comp, text_samples=0, peak_flops=peak)
                data = prepare_data(cfg.data, log=lambda s: None)
                fpt = flops_per_token(cfg.model, data.vocab_size, cfg.data.seq_len)
                ours, plain, mfus = [], [], []
                for _ in range(args.reps):  # interleaved: machine noise hits both alike
                    tps, mfu, _ = trainer(cfg, data)
                    ours.append(tps)
                    mfus.append(mfu)
                    plain.append(minimal_loop(cfg, data, cfg.steps, amp, comp))
                ratios = [a / b for a, b in zip(ours, plain)]
                print(f"size={size} dtype={name} compile={comp} "
                      f"train_tokens_per_s={median(ours):.0f} minimal_tokens_per_s="
                      f"{median(plain):.0f} ratio={median(ratios):.3f} "
                      f"ratio_range={min(ratios):.3f}..{max(ratios):.3f} "
                      f"mfu={median(mfus):.3f} plain_mfu={median(plain) * fpt / peak:.3f}")
        # Evaluation cost at the preset's default cadence.
        cfg = build_ablation("baseline", "cpu", text_samples=0, precision=name)
        data = prepare_data(cfg.data, log=lambda s: None)
        r = train(cfg, data=data)
        print(f"eval_cost dtype={name} eval_every={cfg.eval.eval_every} "
              f"eval_fraction_of_train_time={r['eval_time_s'] / r['train_time_s']:.3f} "
              f"tokens_per_s={r['tokens_per_s']:.0f} mfu={r['mfu']:.3f}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak_rss_mb={rss:.0f}")


if __name__ == "__main__":
    main()
