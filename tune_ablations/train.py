"""The trainer: `train(cfg, *, report=None) -> result`. Never imports Ray.

Design choices:
- AdamW with weight decay on 2-D weights only; linear warmup then cosine decay to
  `min_lr_ratio` of the peak, as the pure function `lr_at` (the reference promised warmup and
  never applied it); gradient clipping; autocast in the configured precision.
- Honest clock: the device is synchronised before every clock read, and evaluation, checkpoint
  and report time are excluded from training throughput (tokens/s, MFU).
- Evaluation scores the same fixed validation windows every time, all metrics from one
  log-softmax pass, with one device sync per evaluation.
- A non-finite loss, or one above `diverge_factor` x the first loss, ends the run with status
  `diverged` (no exception) and reports the finite `DIVERGED_LOSS`, so schedulers stay sane.
- A checkpoint holds model, optimizer, step, RNG and sampler state and the history, so a resumed
  run produces the same numbers as one never interrupted. Loaded with `weights_only=True`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .config import DIVERGED_LOSS, RunConfig, to_flat_dict
from .data import TokenData, check_fits, load_tokenizer, prepare_data, sample_batch, val_windows
from .model import TransformerLM, count_params, flops_per_token

CHECKPOINT_FILE = "checkpoint.pt"
SAMPLE_PROMPTS = ("The", "In Python,", "A function")
VAL_KEYS = ("val_loss", "val_ppl", "val_bpb", "val_acc", "val_top5", "val_confidence",
            "val_entropy")
# Exactly the keys every `report` call receives.
REPORT_KEYS = ("step", "tokens_seen", "epoch", "lr", "train_loss", "grad_norm", *VAL_KEYS,
               "tokens_per_s", "steps_per_s", "mfu", "train_time_s", "eval_time_s", "diverged",
               "status")
# Dense bf16/fp16 tensor-core peaks from vendor data sheets, FLOP/s; first match of the name.
GPU_PEAK_FLOPS = (("H200", 989e12), ("H100", 989e12), ("A100", 312e12), ("L40", 181e12),
                  ("A10", 125e12), ("L4", 121e12), ("V100", 125e12), ("T4", 65e12),
                  ("4090", 165e12), ("3090", 71e12))
Report = Callable[[dict[str, Any], Callable[[Path], None]], Any]


class StopTraining(Exception):
    """Raised (or returned truthy) by a `report` callable to end the run early."""


def resolve_device(cfg: RunConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def autocast_dtype(cfg: RunConfig, device: torch.device) -> torch.dtype | None:
    """None means plain fp32."""
    p = cfg.precision
    if p == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[p]


_MEASURED_PEAK: dict[tuple, float] = {}


def measure_matmul_peak(device: torch.device, dtype: torch.dtype = torch.float32,
                        n: int = 1024, seconds: float = 0.3) -> float:
    """FLOP/s of a large square matmul on this device, dtype and thread count."""
    key = (str(device), dtype, torch.get_num_threads(), n)
    if key not in _MEASURED_PEAK:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        _sync(device)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            a @ b
            reps += 1
            _sync(device)
        _MEASURED_PEAK[key] = 2 * n**3 * reps / (time.perf_counter() - t0)
    return _MEASURED_PEAK[key]


def peak_flops_for(device: torch.device, dtype: torch.dtype | None) -> float:
    """Default MFU denominator: the data-sheet dense peak for known GPUs (bf16/fp16), else the
    matmul peak measured here in the training dtype (CPUs, unknown GPUs)."""
    if device.type == "cuda" and dtype is not None:
        name = torch.cuda.get_device_name(device)
        for pattern, flops in GPU_PEAK_FLOPS:
            if pattern in name:
                return flops
    return measure_matmul_peak(device, dtype or torch.float32)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def lr_at(step: int, cfg: RunConfig) -> float:
    """Learning rate for optimizer step `step` (0-based) of a run of `cfg.steps` steps."""
    peak, warm, total = cfg.optim.lr, cfg.optim.warmup_steps, cfg.steps
    floor = peak * cfg.optim.min_lr_ratio
    if step < warm:  # linear warmup: peak/warm at step 0, peak at step warm
        return peak * (step + 1) / warm
    if step >= total:  # past the end: the floor
        return floor
    progress = (step - warm) / max(1, total - warm)  # cosine from peak (0) to floor (1)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: torch.nn.Module, cfg: RunConfig, device: torch.device
                    ) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    betas = (cfg.optim.beta1, cfg.optim.beta2)
    try:  # fused kernels exist for CUDA and, in recent torch, CPU
        return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=betas, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=betas)


@torch.no_grad()
def evaluate(model: torch.nn.Module, windows: torch.Tensor, token_bytes: torch.Tensor,
             batch_size: int, device: torch.device, amp: torch.dtype | None) -> dict[str, float]:
    """Validation metrics over `windows` (N, T + 1): loss, perplexity, bits per byte, top-1 and
    top-5 accuracy, confidence (mean max probability) and entropy, in nats."""
    was_training = model.training
    model.eval()
    sums = torch.zeros(7, dtype=torch.float64, device=device)
    for i in range(0, len(windows), batch_size):
        w = windows[i:i + batch_size].to(device, non_blocking=True)
        x, y = w[:, :-1], w[:, 1:]
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(x)
        logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
        nll = -logp.gather(-1, y[..., None]).squeeze(-1)  # (B, T)
        top5 = logp.topk(5, dim=-1)  # (B, T, 5)
        hit5 = (top5.indices == y[..., None])
        entropy = -(logp.exp() * logp).sum(-1)
        parts = (nll.sum(), hit5[..., 0].sum(), hit5.any(-1).sum(),
                 top5.values[..., 0].exp().sum(), entropy.sum(), token_bytes[y].sum())
        sums[:6] += torch.stack([t.double() for t in parts])
        sums[6] += y.numel()
    nll_sum, top1, top5_, conf, ent, nbytes, n = sums.tolist()  # the one device sync
    model.train(was_training)
    loss = nll_sum / n
    return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)),
            "val_bpb": nll_sum / math.log(2) / max(nbytes, 1.0), "val_acc": top1 / n,
            "val_top5": top5_ / n, "val_confidence": conf / n, "val_entropy": ent / n}


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / (CHECKPOINT_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path / CHECKPOINT_FILE)  # never a half-written checkpoint under its name


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(Path(path) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)


def generate_samples(model: TransformerLM, data: TokenData, cfg: RunConfig,
                     device: torch.device, max_new_tokens: int = 48) -> list[dict[str, str]]:
    """Continuations of fixed prompts with a fixed sampling seed, as the reference did."""
    tok = load_tokenizer(data.path / "tokenizer")
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    out = []
    for prompt in SAMPLE_PROMPTS[:cfg.eval.num_samples]:
        ids = torch.tensor([tok.encode(prompt, add_special_tokens=False).ids], device=device)
        full = model.generate(ids, max_new_tokens, generator=gen)[0].tolist()
        out.append({"prompt": prompt, "text": tok.decode(full)})
    return out


def _maybe_compile(model: torch.nn.Module, cfg: RunConfig, x: torch.Tensor, log) -> Any:
    if not cfg.compile:
        return model
    try:
        compiled = torch.compile(model)
        # Compile forward and backward now, outside the training clock, at the training shape;
        # a failure falls back before training starts. No optimizer step: weights unchanged.
        F.cross_entropy(compiled(x).float().flatten(0, 1), x.flatten()).backward()
        model.zero_grad(set_to_none=True)
        return compiled
    except Exception as exc:  # no compiler toolchain, unsupported platform, ...
        log(f"event=compile_failed error={type(exc).__name__} fallback=eager")
        return model


def train(cfg: RunConfig, *, report: Report | None = None, data: TokenData | None = None,
          resume_from: Path | None = None, threads: int | None = None,
          log: Callable[[str], None] = lambda s: None,
          on_end: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train one run; returns final and best metrics, history, throughput, status, samples.
    `on_end(result)` runs when the run completes or diverges, before its last `report`."""
    wall0 = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    device = resolve_device(cfg)
    amp = autocast_dtype(cfg, device)
    data = data or prepare_data(cfg.data, log=log)
    check_fits(data, cfg.data.seq_len)
    torch.manual_seed(cfg.seed)
    model = TransformerLM(cfg.model, data.vocab_size).to(device)
    opt = build_optimizer(model, cfg, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    gen = torch.Generator().manual_seed(cfg.seed)  # batch sampling: CPU, checkpointed
    windows = val_windows(data.val, cfg.data.seq_len, cfg.eval.eval_tokens)
    token_bytes = torch.from_numpy(data.token_bytes).to(device)
    counts = count_params(cfg.model, data.vocab_size)
    fpt = flops_per_token(cfg.model, data.vocab_size, cfg.data.seq_len)
    peak = cfg.peak_flops or peak_flops_for(device, amp)
    tps_step, steps, train_tokens = cfg.tokens_per_step, cfg.steps, len(data.train)

    st: dict[str, Any] = {"step": 0, "train_time": 0.0, "eval_time": 0.0, "initial_loss": None,
                          "history": [], "best": {}, "status": "running"}
    if resume_from is not None:
        ck = load_checkpoint(resume_from)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        scaler.load_state_dict(ck["scaler"])
        gen.set_state(ck["sampler_rng"])
        torch.set_rng_state(ck["torch_rng"])
        st = ck["state"]
        st["resumed_from"] = [*st.get("resumed_from", []), st["step"]]
        log(f"event=resumed step={st['step']}")
    fwd = _maybe_compile(model, cfg, sample_batch(data.train, cfg.data.batch_size,
                                                  cfg.data.seq_len, torch.Generator())[0].to(
                                                      device), log)

    def state_dict() -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scaler": scaler.state_dict(), "sampler_rng": gen.get_state(),
                "torch_rng": torch.get_rng_state(), "state": st}

    def build_result() -> dict[str, Any]:
        history = st["history"]
        last = history[-1] if history else {}
        samples = []
        if st["status"] == "completed" and cfg.eval.num_samples:
            samples = generate_samples(model, data, cfg, device)
        return {
            "name": cfg.name, "seed": cfg.seed, "status": st["status"],
            "final": {k: last.get(k) for k in VAL_KEYS}, "best": st["best"],
            "train_loss": last.get("train_loss"), "tokens_seen": last.get("tokens_seen", 0),
            "steps": st["step"], "epochs": last.get("epoch", 0.0),
            "train_time_s": st["train_time"], "eval_time_s": st["eval_time"],
            "resumed_from": st.get("resumed_from", []),
            "wall_time_s": time.perf_counter() - wall0, "tokens_per_s": last.get("tokens_per_s"),
            "mfu": last.get("mfu"), "peak_flops": peak, "flops_per_token": fpt,
            "device": str(device), "precision": str(amp).replace("torch.", "") if amp else "fp32",
            "threads": torch.get_num_threads(), **counts, "history": history,
            "samples": samples, "data": data.facts(cfg.total_tokens), "config": to_flat_dict(cfg),
        }

    result: dict[str, Any] | None = None
    loss_sum = torch.zeros((), device=device)
    gnorm = torch.zeros((), device=device)
    n_since = 0
    model.train()
    _sync(device)
    t0 = time.perf_counter()
    step = st["step"]
    while step < steps and st["status"] == "running":
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        x, y = (t.to(device, non_blocking=True) for t in sample_batch(
            data.train, cfg.data.batch_size, cfg.data.seq_len, gen))
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = fwd(x)
        loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        if cfg.optim.grad_clip > 0:
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        step += 1
        loss_sum += loss.detach()
        n_since += 1
        st["step"] = step
        at_eval = step % cfg.eval.eval_every == 0 or step == steps
        if st["initial_loss"] is None or at_eval or step % 10 == 0:
            last = loss.item()  # one sync per 10 steps: cheap divergence watch
            if st["initial_loss"] is None:
                st["initial_loss"] = last
            if not math.isfinite(last) or last > cfg.diverge_factor * st["initial_loss"]:
                st["status"] = "diverged"
                at_eval = True
        if not at_eval:
            continue
        _sync(device)
        t1 = time.perf_counter()
        st["train_time"] += t1 - t0
        tokens_seen = step * tps_step
        metrics: dict[str, Any] = {
            "step": step, "tokens_seen": tokens_seen, "epoch": tokens_seen / train_tokens,
            "lr": lr, "train_loss": (loss_sum / n_since).item(), "grad_norm": float(gnorm)}
        if st["status"] == "diverged":
            metrics.update({k: DIVERGED_LOSS if k in ("val_loss", "val_entropy") else
                            (math.exp(50.0) if k == "val_ppl" else 0.0) for k in VAL_KEYS})
            metrics["val_bpb"] = DIVERGED_LOSS
            if not math.isfinite(metrics["train_loss"]):
                metrics["train_loss"] = DIVERGED_LOSS
        else:
            metrics.update(evaluate(model, windows, token_bytes, cfg.data.batch_size, device,
                                    amp))
            if metrics["val_loss"] < st["best"].get("val_loss", math.inf):
                st["best"] = {k: metrics[k] for k in VAL_KEYS} | {"step": step}
        if step == steps and st["status"] == "running":
            st["status"] = "completed"
        _sync(device)
        st["eval_time"] += time.perf_counter() - t1
        tok_s = tokens_seen / max(st["train_time"], 1e-9)
        metrics.update({
            "tokens_per_s": tok_s, "steps_per_s": step / max(st["train_time"], 1e-9),
            "mfu": tok_s * fpt / peak, "train_time_s": st["train_time"],
            "eval_time_s": st["eval_time"], "diverged": st["status"] == "diverged",
            "status": st["status"]})
        st["history"].append(metrics)
        log(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in metrics.items()))
        loss_sum.zero_()
        n_since = 0
        if st["status"] in ("completed", "diverged"):
            # Before the last report: a scheduler may stop the process as soon as it reports.
            result = build_result()
            if on_end is not None:
                on_end(result)
        if report is not None:
            try:
                stop = report(dict(metrics), lambda path: save_checkpoint(Path(path),
                                                                          state_dict()))
            except StopTraining:
                stop = True
            if stop and st["status"] == "running":
                st["status"] = "stopped"
        _sync(device)
        t0 = time.perf_counter()

    return result if result is not None else build_result()


def main(argv: list[str] | None = None) -> int:
    """`python -m tune_ablations.train`: one run without Ray."""
    import argparse
    import json

    from .config import build_ablation, with_overrides
    from .overrides import load_config_file, parse_overrides

    ap = argparse.ArgumentParser(prog="python -m tune_ablations.train", description=main.__doc__)
    ap.add_argument("--ablation", default="baseline")
    ap.add_argument("--preset", default=None, help="seed | cpu | tiny (default: seed on a GPU, "
                    "else cpu)")
    ap.add_argument("--config", help="TOML run file (e.g. a search's best.toml)")
    ap.add_argument("--max-steps", type=int)
    ap.add_argument("--tokens", type=int, help="token budget (steps derived from it)")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override config fields")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", help="write the result JSON here")
    ap.add_argument("--smoke-test", action="store_true", help="tiny run, seconds on a CPU")
    args = ap.parse_args(argv)
    try:
        flat = load_config_file(args.config) if args.config else {}
        ablation = flat.pop("ablation", args.ablation)
        preset = "tiny" if args.smoke_test else (
            args.preset or flat.pop("preset", None)
            or ("seed" if torch.cuda.is_available() else "cpu"))
        flat.pop("preset", None)
        flat.update(parse_overrides(args.set))
        for key, value in (("max_steps", args.max_steps), ("tokens", args.tokens),
                           ("seed", args.seed)):
            if value is not None:
                flat[key] = value
        cfg = with_overrides(build_ablation(ablation, preset), flat)
    except ValueError as exc:
        ap.error(str(exc))
    print(f"event=start ablation={cfg.name} preset={preset} steps={cfg.steps} "
          f"tokens={cfg.total_tokens} seed={cfg.seed}", flush=True)
    result = train(cfg, threads=args.threads, log=lambda s: print(s, flush=True))
    print(f"event=end status={result['status']} val_loss={result['final']['val_loss']} "
          f"tokens_per_s={result['tokens_per_s']:.1f} mfu={result['mfu']:.3f}")
    for s in result["samples"]:
        print(f"sample prompt={s['prompt']!r} text={s['text']!r}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str))
        print(f"event=written path={args.out}")
    return 0 if result["status"] in ("completed", "stopped") else 1


if __name__ == "__main__":
    raise SystemExit(main())
