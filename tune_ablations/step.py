"""One training step and what it needs: the learning-rate schedule, the optimizer, the model
under one autocast context, evaluation cadence and checkpoints. Never imports Ray.

Design choices:
- AdamW with weight decay on 2-D weights only; linear warmup then cosine decay to
  `min_lr_ratio` of the peak (`lr_at`, a pure function); gradient clipping.
- `train_step` returns tensors, not floats, so the loop decides when to synchronise; the plan's
  step-time estimate (`estimate_step_seconds`) times this same function.
- Checkpoints are written to a temp name and renamed, and loaded with `weights_only=True`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .config import RunConfig
from .model import TransformerLM
from .runtime import (
    autocast,
    autocast_dtype,
    cpu_bf16_units,
    machine_id,
    read_cache_file,
    resolve_device,
    sync,
    write_cache_file,
)

PROBES_FILE = "precision_probes.json"

CHECKPOINT_FILE = "checkpoint.pt"

def decay(progress: float, shape: str) -> float:
    """Fraction of the way from the peak (1) to the floor (0) left at `progress` in [0, 1]."""
    p = min(1.0, max(0.0, progress))
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * p))
    if shape == "sqrt":
        return 1.0 - math.sqrt(p)
    return 1.0 - p  # linear


def lr_at(step: int, cfg: RunConfig) -> float:
    """Learning rate for optimizer step `step` (0-based) of a run of `cfg.steps` steps."""
    o = cfg.optim
    peak, warm, total = o.lr, o.warmup_steps, cfg.steps
    floor = peak * o.min_lr_ratio
    if step < warm:  # linear warmup, every schedule: peak/warm at step 0, peak at step warm
        return peak * (step + 1) / warm
    if step >= total:  # past the end: the floor (the peak for `constant`)
        return peak if o.schedule == "constant" else floor
    if o.schedule == "constant":
        return peak
    if o.schedule == "wsd":  # stable at the peak, then decay over the last decay_fraction
        start = max(warm, total - round(o.decay_fraction * total))
        if step < start:
            return peak
        return floor + (peak - floor) * decay((step - start) / max(1, total - start),
                                              o.decay_shape)
    progress = (step - warm) / max(1, total - warm)  # from the peak (0) to the floor (1)
    return floor + (peak - floor) * decay(progress, "linear" if o.schedule == "linear"
                                          else "cosine")


def build_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.optim.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    betas = (cfg.optim.beta1, cfg.optim.beta2)
    try:  # fused kernels exist for CUDA and, in recent torch, CPU
        return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=betas, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=betas)


@dataclass
class Step:
    """What one optimizer step needs, built once per run."""
    cfg: RunConfig
    model: TransformerLM
    forward: Any
    opt: torch.optim.AdamW
    scaler: torch.amp.GradScaler
    device: torch.device
    amp: torch.dtype | None
    ctx: Any
    precision_reason: str = ""
    compile_reason: str = ""


def choose_precision(cfg: RunConfig, vocab_size: int, device: torch.device
                     ) -> tuple[torch.dtype | None, str]:
    """(autocast dtype, why). `auto`: bf16 on GPUs that support it (else fp16); on a CPU with
    native bf16 matrix units, bf16 only where a short probe at this shape measured it faster
    (cached per machine and shape); fp32 otherwise."""
    if cfg.precision != "auto":
        return autocast_dtype(cfg.precision, device), f"precision={cfg.precision} (asked)"
    if device.type == "cuda":
        amp = autocast_dtype("auto", device)
        return amp, f"auto: {'bf16' if amp is torch.bfloat16 else 'fp16'} on this GPU"
    units = cpu_bf16_units()
    if units is None:
        return None, "auto: fp32 (this CPU has no native bf16 matrix units)"
    key = json.dumps([machine_id(), cfg.model.d_model, cfg.model.n_layers, cfg.model.d_ff,
                      cfg.model.ffn, cfg.data.seq_len, cfg.data.batch_size, vocab_size])
    cache = read_cache_file(PROBES_FILE)
    if key not in cache:
        times = {p: estimate_step_seconds(dataclasses.replace(cfg, precision=p), vocab_size,
                                          torch.get_num_threads(), steps=3)
                 for p in ("fp32", "bf16")}
        cache[key] = times
        write_cache_file(PROBES_FILE, cache)
    t = cache[key]
    if t["bf16"] < 0.95 * t["fp32"]:
        return torch.bfloat16, (f"auto: bf16 ({units}; probe {t['fp32'] / t['bf16']:.2f}x "
                                "faster than fp32 at this shape)")
    return None, f"auto: fp32 ({units}, but the probe measured bf16 no faster at this shape)"


def build_step(cfg: RunConfig, vocab_size: int, device: torch.device, log=lambda s: None
               ) -> Step:
    """Model, optimizer, grad scaler and autocast context for `cfg` on `device`."""
    amp, why = choose_precision(cfg, vocab_size, device)  # may probe: seed after it
    torch.manual_seed(cfg.seed)
    model = TransformerLM(cfg.model, vocab_size).to(device)
    opt = build_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    step = Step(cfg, model, model, opt, scaler, device, amp, autocast(device, amp), why)
    use, step.compile_reason = choose_compile(cfg, vocab_size, device)
    step.forward = _maybe_compile(step, vocab_size, log) if use else model
    return step


def choose_compile(cfg: RunConfig, vocab_size: int, device: torch.device) -> tuple[bool, str]:
    """(compile?, why). `auto`: a probe times a few eager and compiled steps at this shape
    (compilation itself excluded) and compiles only where it measured faster; cached per
    machine, shape and precision."""
    if cfg.compile != "auto":
        return bool(cfg.compile), f"compile={cfg.compile} (asked)"
    key = json.dumps(["compile", machine_id(), device.type, cfg.model.d_model,
                      cfg.model.n_layers, cfg.model.d_ff, cfg.model.ffn, cfg.data.seq_len,
                      cfg.data.batch_size, vocab_size, cfg.precision])
    cache = read_cache_file(PROBES_FILE)
    if key not in cache:
        cache[key] = {str(c): estimate_step_seconds(dataclasses.replace(cfg, compile=c),
                                                    vocab_size, torch.get_num_threads())
                      for c in (False, True)}
        write_cache_file(PROBES_FILE, cache)
    t = cache[key]
    if t["True"] < 0.95 * t["False"]:
        return True, f"auto: compiled ({t['False'] / t['True']:.2f}x faster at this shape)"
    return False, "auto: eager (the probe measured compile no faster at this shape)"


def train_step(s: Step, x: torch.Tensor, y: torch.Tensor, lr: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on inputs/targets (B, T); returns (loss, grad norm) as tensors, so
    the caller decides when to sync."""
    for group in s.opt.param_groups:
        group["lr"] = lr
    with s.ctx:
        logits = s.forward(x)
    loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
    s.scaler.scale(loss).backward()
    s.scaler.unscale_(s.opt)
    gnorm = torch.zeros((), device=s.device)
    if s.cfg.optim.grad_clip > 0:
        gnorm = torch.nn.utils.clip_grad_norm_(s.model.parameters(), s.cfg.optim.grad_clip)
    s.scaler.step(s.opt)
    s.scaler.update()
    s.opt.zero_grad(set_to_none=True)
    return loss.detach(), gnorm


def _maybe_compile(s: Step, vocab_size: int, log) -> Any:
    try:
        compiled = torch.compile(s.model)
        # Compile forward and backward now, outside the training clock, at the training shape;
        # a failure falls back before training starts. No optimizer step: weights unchanged.
        x = torch.randint(0, vocab_size, (s.cfg.data.batch_size, s.cfg.data.seq_len),
                          device=s.device)
        with s.ctx:
            F.cross_entropy(compiled(x).float().flatten(0, 1), x.flatten()).backward()
        s.model.zero_grad(set_to_none=True)
        return compiled
    except Exception as exc:  # no compiler toolchain, unsupported platform, ...
        log(f"event=compile_failed error={type(exc).__name__} fallback=eager")
        return s.model


def estimate_step_seconds(cfg: RunConfig, vocab_size: int, threads: int, steps: int = 3
                          ) -> float:
    """Median wall time of a few `train_step`s of this config on this machine (for plans)."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        device = resolve_device(cfg.device)
        s = build_step(cfg, vocab_size, device)
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


def eval_due(cfg: RunConfig, step: int) -> bool:
    """Whether step `step` (1-based count of steps done) ends with an evaluation."""
    if step >= cfg.steps:
        return True
    every = cfg.eval.eval_every_tokens
    if every:  # crossed a token milestone during this step
        tps = cfg.tokens_per_step
        return step * tps // every > (step - 1) * tps // every
    return step % cfg.eval.eval_every == 0


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    path.mkdir(parents=True, exist_ok=True)
    tmp = path / (CHECKPOINT_FILE + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path / CHECKPOINT_FILE)  # never a half-written checkpoint under its name


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(Path(path) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
