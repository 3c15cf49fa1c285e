"""Trainer speed, side by side in one run: this checkout against a checkout of earlier code
(`--before`), against the project's own plain loop with the same optimisations, and against
nanoGPT's model in a plain fp32 loop on the same data and budget; per CPU kind.

    git worktree add --detach /tmp/before <commit>     # the code to compare with
    python benchmarks/bench_trainer.py --before /tmp/before [--reps 3] [--kinds native ...]
        [--nanogpt benchmarks/external/nanoGPT/model.py] [--losses 5] [--compile-before]
        [--baseline-only]

nanoGPT's `model.py` is not part of this repository: put karpathy/nanoGPT's model.py at
benchmarks/external/nanoGPT/model.py (git-ignored), e.g. from a clone of
https://github.com/karpathy/nanoGPT or `curl -o benchmarks/external/nanoGPT/model.py
https://raw.githubusercontent.com/karpathy/nanoGPT/master/model.py`. It is built with the
`cpu` baseline's width, heads, layers, block size and vocabulary, bias=False, dropout 0, and
trained by a plain fp32 loop (nanoGPT's own AdamW groups, cosine lr with warmup, clip 1.0).

Every measurement runs in its own process (one code version and one CPU kind per process), in
rounds, so that load on the machine hits every variant alike; each figure is the median over
`--reps` rounds. CPU kinds this machine is not are emulated by restricting the instruction
sets the libraries use: `avx512_bf16` = oneDNN without AMX (`ONEDNN_MAX_CPU_ISA=
AVX512_CORE_BF16`); `avx2` = oneDNN, MKL and ATen (and inductor's code generation) at AVX2.
The measured matmul peaks are printed per kind, so a restriction that did not take shows.

Targets (issue 31): `train()` at d256/8L in its fastest precision >= 2x the before code's
(>= 28% of the bf16 peak); the `cpu` baseline's step >= 1.5x faster; other kinds not slower;
`train()` as users run it >= 1.3x nanoGPT's plain loop (at equal or better loss) and >= 1.0x the
project's own plain loop with the same optimisations. `--losses N`: val_loss of the `cpu`
baseline at seeds 0..N-1 in fp32, bf16 and compiled bf16 (and the before code's fp32, bf16).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
KINDS = {
    "native": {},
    "avx512_bf16": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
             "MKL_ENABLE_INSTRUCTIONS": "AVX2"},
}
SIZES = {"baseline": {},
         "d256x8": {"d_model": 256, "n_heads": 8, "n_layers": 8, "d_ff": 1024, "seq_len": 256,
                    "batch_size": 8}}


# --- worker side: runs inside the process of one code version and one CPU kind ---------------

def _config(size: str, steps: int, **over):
    from tune_ablations.spec.presets import build_ablation

    return build_ablation("baseline", "cpu", **SIZES[size], max_steps=steps,
                          eval_every=steps, warmup_steps=max(1, steps // 10), text_samples=0,
                          **over)


def _data(cfg):
    from tune_ablations.training.data import prepare_data

    return prepare_data(cfg.data, log=lambda s: None)


def task_train(a: dict) -> dict:
    """`train()` at a size, precision and compile setting ('auto' as users run it)."""
    from tune_ablations.training.trainer import train

    over = {k: a[k] for k in ("precision", "compile", "seed") if k in a}
    cfg = _config(a["size"], a["steps"], **over)
    r = train(cfg, data=_data(cfg))
    compile_s = r.get("compile_time_s", 0.0)
    return {"tokens_per_s": r["tokens_per_s"], "train_time_s": r["train_time_s"],
            "compile_s": compile_s, "tokens": r["tokens_seen"], "mfu": r["mfu"],
            "flops_per_token": r["flops_per_token"],
            "with_compile_tokens_per_s": r["tokens_seen"] / (r["train_time_s"] + compile_s),
            "val_loss": r["final"]["val_loss"], "precision": r["precision"],
            "compiled": r.get("compiled", bool(cfg.compile)),
            "why": [r.get("precision_reason", ""), r.get("compile_reason", "")]}


def task_plain(a: dict) -> dict:
    """The project's model in a plain loop with the optimisations `train()` used (autocast
    dtype, compilation, fused AdamW): no schedule, metrics, watch or evaluation."""
    import torch

    from tune_ablations.training.data import sample_batch
    from tune_ablations.training.model import TransformerLM
    from tune_ablations.training.step import NextTokenLoss, compile_model

    cfg = _config(a["size"], a["steps"])
    data = _data(cfg)
    torch.manual_seed(0)
    model = TransformerLM(cfg.model, data.vocab_size)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr, fused=True)
    amp = torch.bfloat16 if a["precision"] == "bf16" else None
    t0 = time.perf_counter()
    loss = compile_model(NextTokenLoss(model)) if a["compiled"] else NextTokenLoss(model)
    gen = torch.Generator().manual_seed(0)
    B, T = cfg.data.batch_size, cfg.data.seq_len

    def step():
        x, y = sample_batch(data.train, B, T, gen)
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            loss(x, y)[0].backward()  # (objective, cross-entropy)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    if a["compiled"]:  # compiled before the clock starts, as train() does
        x, y = sample_batch(data.train, B, T, torch.Generator())
        with torch.autocast("cpu", dtype=amp or torch.float32, enabled=amp is not None):
            loss(x, y)[0].backward()  # (objective, cross-entropy)
        model.zero_grad(set_to_none=True)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(cfg.steps):
        step()
    secs = time.perf_counter() - t0
    return {"tokens_per_s": cfg.steps * B * T / secs, "compile_s": compile_s}


def task_nanogpt(a: dict) -> dict:
    """nanoGPT's model at the cpu baseline's shape, nanoGPT's training loop in fp32, scored on
    the same eval windows as `train()`."""
    import contextlib
    import importlib.util
    import io
    import math

    import torch
    import torch.nn.functional as F

    from tune_ablations.training.data import sample_batch, val_part, val_windows

    cfg = _config("baseline", a["steps"])
    data = _data(cfg)
    spec = importlib.util.spec_from_file_location("nanogpt_model", a["path"])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    m, o = cfg.model, cfg.optim
    conf = mod.GPTConfig(block_size=cfg.data.seq_len, vocab_size=data.vocab_size,
                         n_layer=m.n_layers, n_head=m.n_heads, n_embd=m.d_model, dropout=0.0,
                         bias=False)
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # nanoGPT prints its parameter counts
        model = mod.GPT(conf)
        opt = model.configure_optimizers(o.weight_decay, o.lr, (o.beta1, o.beta2), "cpu")
    gen = torch.Generator().manual_seed(0)
    B, T, steps, warm = cfg.data.batch_size, cfg.data.seq_len, cfg.steps, o.warmup_steps

    def get_lr(it: int) -> float:  # nanoGPT's train.py: linear warmup, cosine to min_lr
        if it < warm:
            return o.lr * (it + 1) / (warm + 1)
        ratio = (it - warm) / (steps - warm)
        return o.lr * o.min_lr_ratio + 0.5 * (1 + math.cos(math.pi * ratio)) * (
            o.lr - o.lr * o.min_lr_ratio)

    t0 = time.perf_counter()
    for it in range(steps):
        for g in opt.param_groups:
            g["lr"] = get_lr(it)
        x, y = (t.contiguous() for t in sample_batch(data.train, B, T, gen))  # as get_batch
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    secs = time.perf_counter() - t0
    windows = val_windows(val_part(data.val, data.eos_id), T, cfg.eval.eval_tokens)
    model.eval()
    with torch.no_grad():
        nll = sum(F.cross_entropy(model(w[:, :-1], w[:, 1:].contiguous())[0].flatten(0, 1),
                                  w[:, 1:].flatten(), reduction="sum").item()
                  for w in windows.split(B))
    return {"tokens_per_s": steps * B * T / secs, "val_loss": nll / windows[:, 1:].numel()}


def task_peak(a: dict) -> dict:
    import torch

    from tune_ablations.training.runtime import measure_matmul_peak

    cpu = torch.device("cpu")
    return {p: measure_matmul_peak(cpu, d) for p, d in
            (("fp32", torch.float32), ("bf16", torch.bfloat16))}


def worker(a: dict) -> None:
    import torch

    torch.set_num_threads(a["threads"])
    out = globals()[f"task_{a['task']}"](a)
    print("RESULT " + json.dumps(out), flush=True)


# --- driver side -----------------------------------------------------------------------------

def run(root: Path, kind: str, cache: str, **a) -> dict:
    """One task in a fresh process importing `tune_ablations` from `root`, as CPU `kind`."""
    env = {**os.environ, **KINDS[kind], "PYTHONPATH": str(root), "TUNE_ABLATIONS_CACHE": cache}
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(a)], env=env,
                         capture_output=True, text=True, cwd=root)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        raise SystemExit(f"{a['task']} failed in {root}:\n{out.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def med(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def fmt(rows: list[dict], key: str) -> str:
    xs = sorted(r[key] for r in rows)
    return f"{statistics.median(xs):.0f} ({xs[0]:.0f}..{xs[-1]:.0f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--before", type=Path, help="a checkout of the code to compare with")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--kinds", nargs="+", default=["native"], choices=list(KINDS))
    ap.add_argument("--steps", type=int, default=60, help="steps of the d256x8 runs")
    ap.add_argument("--user-steps", type=int, default=120,
                    help="steps of the runs at the cpu baseline (the preset's 120)")
    ap.add_argument("--nanogpt", type=Path, default=HERE / "external" / "nanoGPT" / "model.py")
    ap.add_argument("--losses", type=int, default=0, metavar="SEEDS",
                    help="also val_loss per variant over seeds 0..SEEDS-1 (e.g. 5)")
    ap.add_argument("--baseline-only", action="store_true",
                    help="only the runs at the cpu baseline (as users run it, plain, nanoGPT)")
    ap.add_argument("--compile-before", action="store_true",
                    help="also time the before code compiled (its fastest may be compiled)")
    args = ap.parse_args()
    if args.worker:
        return worker(json.loads(args.worker))
    sys.path.insert(0, str(HERE))
    from common import machine

    print(f"machine {machine()} threads={args.threads} reps={args.reps} "
          f"load={os.getloadavg()[0]:.1f}")
    cache = os.environ.get("TUNE_ABLATIONS_CACHE", str(Path.home() / ".cache/tune_ablations"))
    t = {"threads": args.threads}
    for kind in args.kinds:
        bench_kind(args, kind, cache, t)
    if args.losses:
        losses(cache, t, args.before, args.losses)


def bench_kind(args, kind: str, cache: str, t: dict) -> None:
    peak = run(ROOT, kind, cache, task="peak", **t)
    print(f"kind={kind} emulated={kind != 'native'} peak_fp32={peak['fp32']:.3e} "
          f"peak_bf16={peak['bf16']:.3e} restrict={KINDS[kind] or 'none'}")
    u = args.user_steps
    d = dict(size="d256x8", steps=args.steps)
    now = {"user": dict(size="baseline", steps=u),  # the preset's settings, as users run it
           "d256_bf16": dict(**d, precision="bf16", compile=False),
           "d256_bf16_compiled": dict(**d, precision="bf16", compile=True),
           "d256_fp32": dict(**d, precision="fp32", compile=False)}
    before = {"user": dict(size="baseline", steps=u),
              "d256_bf16": dict(size="d256x8", steps=args.steps, precision="bf16",
                                compile=False),
              "d256_fp32": dict(size="d256x8", steps=args.steps, precision="fp32",
                                compile=False)}
    if args.baseline_only:
        now, before = {"user": now["user"]}, {"user": before["user"]}
    elif args.compile_before:
        before["d256_bf16_compiled"] = dict(size="d256x8", steps=args.steps, precision="bf16",
                                            compile=True)
    res: dict[str, list] = {}
    for _ in range(args.reps):  # rounds: every variant once per round
        for name, a in now.items():
            r = run(ROOT, kind, cache, task="train", **a, **t)
            res.setdefault(f"now_{name}", []).append(r)
            if name == "user":
                res.setdefault("plain", []).append(run(
                    ROOT, kind, cache, task="plain", size="baseline", steps=u,
                    precision="bf16" if r["precision"] == "bfloat16" else "fp32",
                    compiled=r["compiled"], **t))
        if args.before:
            for name, a in before.items():
                res.setdefault(f"before_{name}", []).append(run(
                    args.before, kind, cache, task="train", **a, **t))
        if kind == "native" and args.nanogpt.exists():
            res.setdefault("nanogpt", []).append(run(
                ROOT, kind, cache, task="nanogpt", path=str(args.nanogpt), steps=u, **t))
    report(kind, res, peak)


def report(kind: str, res: dict, peak: dict) -> None:
    for name, rows in res.items():
        extra = ""
        if "val_loss" in rows[0]:
            extra = f" val_loss={med(rows, 'val_loss'):.4f}"
        if "precision" in rows[0]:
            extra += (f" precision={rows[0]['precision']} compiled={rows[0]['compiled']} "
                      f"compile_s={med(rows, 'compile_s'):.1f} with_compile_tokens_per_s="
                      f"{med(rows, 'with_compile_tokens_per_s'):.0f}")
        print(f"kind={kind} run={name} tokens_per_s={fmt(rows, 'tokens_per_s')}{extra}")
    ratio = lambda a, b, key="tokens_per_s": med(res[a], key) / med(res[b], key)  # noqa: E731
    if any(k.startswith("now_d256") for k in res):
        report_d256(kind, res, peak, ratio)
    if "before_user" in res:
        print(f"kind={kind} target=cpu_baseline_vs_before ratio="
              f"{ratio('now_user', 'before_user'):.2f} with_compile_ratio="
              f"{med(res['now_user'], 'with_compile_tokens_per_s') / med(res['before_user'], 'tokens_per_s'):.2f}"  # noqa: E501
              " (target >= 1.5 on AMX, >= 1.0 elsewhere)")
    print(f"kind={kind} target=vs_own_plain_loop ratio={ratio('now_user', 'plain'):.2f} "
          "(target >= 1.0)")
    if "nanogpt" in res:
        ours = med(res["now_user"], "with_compile_tokens_per_s") / med(res["nanogpt"],
                                                                       "tokens_per_s")
        print(f"kind={kind} target=vs_nanogpt ratio={ours:.2f}"
              f" val_loss_ours={med(res['now_user'], 'val_loss'):.4f} val_loss_nanogpt="
              f"{med(res['nanogpt'], 'val_loss'):.4f} (target >= 1.3 at equal or better loss)")


def report_d256(kind: str, res: dict, peak: dict, ratio) -> None:
    fastest_now = max((k for k in res if k.startswith("now_d256")),
                      key=lambda k: med(res[k], "tokens_per_s"))
    d256 = res[fastest_now]
    fpt = d256[0]["flops_per_token"]
    print(f"kind={kind} target=d256_fastest run={fastest_now} "
          f"tokens_per_s={med(d256, 'tokens_per_s'):.0f} of_bf16_peak="
          f"{med(d256, 'tokens_per_s') * fpt / peak['bf16']:.3f} (target >= 0.28)")
    if "before_user" in res:
        fastest_before = max((k for k in res if k.startswith("before_d256")),
                             key=lambda k: med(res[k], "tokens_per_s"))
        print(f"kind={kind} target=d256_vs_before ratio={ratio(fastest_now, fastest_before):.2f}"
              f" ({fastest_now} / {fastest_before}; target >= 2.0 on AMX, >= 1.0 elsewhere)")


def losses(cache: str, t: dict, before: Path | None, seeds: int) -> None:
    """val_loss of the cpu baseline (120 steps) per variant at seeds 0..seeds-1, this code and
    (`--before`) the earlier code: a difference between variants is read against the seed
    SD and the per-seed differences (the same seed: the same initialisation and batches)."""
    variants = {"fp32": dict(precision="fp32", compile=False),
                "bf16": dict(precision="bf16", compile=False),
                "bf16_compiled": dict(precision="bf16", compile=True)}
    runs = [(name, ROOT, v) for name, v in variants.items()]
    if before:
        runs += [(f"before_{name}", before, variants[name]) for name in ("fp32", "bf16")]
    out: dict[str, list[float]] = {}
    for seed in range(seeds):
        for name, root, v in runs:
            r = run(root, "native", cache, task="train", size="baseline", steps=120, seed=seed,
                    **v, **t)
            out.setdefault(name, []).append(r["val_loss"])
    for name, xs in out.items():
        print(f"losses variant={name} val_loss={' '.join(f'{x:.4f}' for x in xs)} "
              f"mean={statistics.mean(xs):.4f} seed_sd={statistics.stdev(xs):.4f}")
    pairs = [("bf16", "fp32"), ("bf16_compiled", "bf16"), ("bf16", "before_bf16"),
             ("fp32", "before_fp32"), ("before_bf16", "before_fp32")]
    for a, b in pairs:
        if a in out and b in out:
            diffs = [x - y for x, y in zip(out[a], out[b])]
            print(f"losses {a}_minus_{b} per_seed={' '.join(f'{d:+.4f}' for d in diffs)} "
                  f"mean={statistics.mean(diffs):+.4f} sd={statistics.stdev(diffs):.4f}")


if __name__ == "__main__":
    main()
