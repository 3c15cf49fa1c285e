"""One training step and what it needs: the learning-rate schedule, the optimizer, the model
under one autocast context, the evaluation cadence and checkpoints. Never imports Ray.

Design choices:
- Linear warmup, then cosine to `min_lr_ratio` of the peak (or linear, constant, wsd): `lr_at`
  is a pure function, tested at every boundary. The optimizer is `optimizers.py`'s; each of
  its param groups runs at `lr_at` times its own `lr_scale`.
- `train_step` returns tensors, not floats, so the loop decides when to synchronise; the plan's
  and the probes' step-time estimates (`probes.py`) time this same function.
- Precision and compilation are decided before the step is built (`probes.py`) and passed in.
- Checkpoints are written to a temp name and renamed, and loaded with `weights_only=True`.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..spec.config import RunConfig
from ..spec.io import write_atomic
from ..spec.names import CHECKPOINT_FILE
from .model import TransformerLM
from .optimizers import build_optimizer
from .runtime import autocast


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


class NextTokenLoss(torch.nn.Module):
    """(training objective, mean next-token cross-entropy), in fp32, of `model` on
    inputs/targets (B, T): the unit that is compiled, so the loss's cast, log-softmax and their
    backward fuse with the model's last layers. The objective adds the output z-loss (PaLM:
    z_loss x mean logsumexp(logits)^2) and the MoE layers' auxiliary losses to the
    cross-entropy; without them it is the cross-entropy itself."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model
        self.z_loss = model.cfg.z_loss

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        aux: list[torch.Tensor] = []
        logits = self.model(x, aux=aux).float()  # (B, T, V)
        ce = F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1))
        objective = ce
        if self.z_loss:
            objective = objective + self.z_loss * logits.logsumexp(-1).square().mean()
        for term in aux:
            objective = objective + term
        return objective, ce


@dataclass
class Step:
    """What one optimizer step needs, built once per run."""
    cfg: RunConfig
    model: TransformerLM
    loss: Any
    """(x, y) -> (objective, cross-entropy): `NextTokenLoss(model)`, compiled when asked."""
    opt: Any
    """The optimizer (optimizers.build_optimizer): a torch optimizer or a `Combined`."""
    scaler: torch.amp.GradScaler
    device: torch.device
    amp: torch.dtype | None
    ctx: Any
    precision_reason: str = ""
    compile_reason: str = ""
    compile_seconds: float = 0.0
    """Seconds spent building the compiled graphs before training (not training time)."""
    compiled: bool = False
    """Whether `loss` is compiled (False also where compilation failed and fell back)."""


def build_step(cfg: RunConfig, vocab_size: int, device: torch.device, *,
               amp: torch.dtype | None, compiled: bool = False, log=lambda s: None) -> Step:
    """Model (seeded by `cfg.seed`), optimizer, grad scaler and autocast context for `cfg` on
    `device`, in the given autocast dtype, compiled if asked (eager if compilation fails)."""
    torch.manual_seed(cfg.seed)
    model = TransformerLM(cfg.model, vocab_size).to(device)
    opt = build_optimizer(model, cfg, amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)
    step = Step(cfg, model, NextTokenLoss(model), opt, scaler, device, amp,
                autocast(device, amp))
    if compiled:
        step.loss, step.compiled = _maybe_compile(step, vocab_size, log)
    return step


def train_step(s: Step, x: torch.Tensor, y: torch.Tensor, lr: float
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on inputs/targets (B, T) at the schedule's `lr` (each param group
    at `lr` x its `lr_scale`); returns (cross-entropy, grad norm) as tensors, so the caller
    decides when to sync (the objective, with any z-loss and MoE auxiliary losses, is what is
    minimised)."""
    for group in s.opt.param_groups:  # each group's own rate, on the schedule (optimizers.py)
        group["lr"] = lr * group.get("lr_scale", 1.0)
    with s.ctx:
        objective, loss = s.loss(x, y)
    s.scaler.scale(objective).backward()
    s.scaler.unscale_(s.opt)
    gnorm = torch.zeros((), device=s.device)
    if s.cfg.optim.grad_clip > 0:
        gnorm = torch.nn.utils.clip_grad_norm_(s.model.parameters(), s.cfg.optim.grad_clip)
    s.scaler.step(s.opt)
    s.scaler.update()
    s.opt.zero_grad(set_to_none=True)
    return loss.detach(), gnorm


def compile_model(module: torch.nn.Module) -> Any:
    """`torch.compile` as every run (and the benchmarks' plain loop) uses it. Dynamo's
    in-memory caches are cleared first: a reused worker compiles each trial's new model afresh
    (its per-function recompile limit would otherwise fall back to eager after a few trials),
    from inductor's on-disk caches (per machine, shared by every trial there)."""
    torch._dynamo.reset()
    return torch.compile(module)


def _maybe_compile(s: Step, vocab_size: int, log) -> tuple[Any, bool]:
    try:
        compiled = compile_model(s.loss)
        # Compile forward and backward now, outside the training clock, with inputs exactly as
        # training's (shape, layout, and two distinct tensors: dynamo guards on aliasing, and
        # an (x, x) warm-up was compiled again at the first timed step); a failure falls back
        # before training starts. No optimizer step: weights unchanged.
        B, T = s.cfg.data.batch_size, s.cfg.data.seq_len
        x, y = (torch.randint(0, vocab_size, (B, T), device=s.device) for _ in range(2))
        with s.ctx:
            compiled(x, y)[0].backward()
        s.model.zero_grad(set_to_none=True)
        return compiled, True
    except Exception as exc:  # no compiler toolchain, unsupported platform, ...
        log(f"event=compile_failed error={type(exc).__name__} fallback=eager")
        return s.loss, False


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
    buf = io.BytesIO()
    torch.save(state, buf)
    write_atomic(Path(path) / CHECKPOINT_FILE, buf.getvalue())  # never half a checkpoint


def load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(Path(path) / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
