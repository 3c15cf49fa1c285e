"""Cooldown probes (Hägele et al. 2024, "Scaling Laws and Compute-Optimal Training Beyond Fixed
Training Durations"): from a wsd run's stable phase, branch a copy, decay its learning rate to
the floor over the rest of a budget B, evaluate it, and restore the run. The probe's loss is
exactly what a wsd run of budget B reaches (same initialisation, batches and schedule), so one
run gives the loss of several budgets, each with a decayed learning rate.

Under `cosine` or `linear` the same branch is a short decay from the lr the run has at the
branch point to the floor: not the loss of a cosine run of budget B, but a loss read after a
decay, which ranks learning rates the way final losses do; a mid-schedule loss, read near the
peak lr, favours low learning rates (the short-horizon bias). Early stopping ranks by it
(`rank_loss`; benchmarks/RESULTS.md, section 13).

Design choices:
- The branch point is where a wsd run of budget B starts its decay; the cooldown draws the
  batches the run itself would see next (a copy of its sampler) and leaves the run's weights,
  optimizer state and RNG exactly as they were.
- The probe at B equals the run that `--tokens B --set schedule=wsd` trains: both warm up over
  the reference run's warmup tokens (`resolve.with_token_budget`), so their schedules agree
  step for step.
- Probe compute is counted (`probe_tokens_trained`, and `planned_probe_tokens` for plans) and
  its time kept out of training throughput (`probe_time_s`).
- Everything a probe touches is restored: weights, optimizer, grad scaler (fp16), and the CPU
  and CUDA random states.
"""

from __future__ import annotations

import copy
import math
import time

import torch

from ..spec.config import RunConfig
from .data import sample_batch
from .evaluation import evaluate
from .optimizers import set_evaluating
from .runtime import sync
from .step import decay, lr_at, train_step


def probe_schedule(cfg: RunConfig) -> dict[int, list[int]]:
    """{branch step: [budgets]}: a probe of budget B branches after B x (1 - decay_fraction)
    tokens (rounded up to a step) and cools down for the rest of B."""
    out: dict[int, list[int]] = {}
    for b in cfg.probe_budgets:  # exactly where a wsd run of budget b starts its decay
        total = math.ceil(b / cfg.tokens_per_step)
        step = max(cfg.optim.warmup_steps, total - round(cfg.optim.decay_fraction * total))
        out.setdefault(step, []).append(b)
    return out


def planned_probe_tokens(cfg: RunConfig) -> int:
    """Tokens the cooldown probes of `cfg` will train (on top of the run's own)."""
    return sum((math.ceil(b / cfg.tokens_per_step) - step) * cfg.tokens_per_step
               for step, budgets in probe_schedule(cfg).items() for b in budgets)


def _snapshot(s) -> dict:
    out = {"model": copy.deepcopy(s.model.state_dict()), "opt": copy.deepcopy(s.opt.state_dict()),
           "scaler": copy.deepcopy(s.scaler.state_dict()), "rng": torch.get_rng_state()}
    if s.device.type == "cuda":
        out["cuda_rng"] = torch.cuda.get_rng_state(s.device)
    return out


def _restore(s, saved: dict) -> None:
    s.model.load_state_dict(saved["model"])
    s.opt.load_state_dict(saved["opt"])
    s.scaler.load_state_dict(saved["scaler"])
    torch.set_rng_state(saved["rng"])
    if "cuda_rng" in saved:
        torch.cuda.set_rng_state(saved["cuda_rng"], s.device)


def run_probe(r, st, budget: int) -> None:
    """Cool a copy of the run down to the floor over the rest of `budget`, on the batches the
    run would see next, evaluate it, and restore the run exactly (weights, optimizer, RNG):
    the main run is unchanged, and the probe is what a wsd run of that budget would reach."""
    cfg, s, t0 = r.cfg, r.step, time.perf_counter()
    saved = _snapshot(s)
    steps = math.ceil(budget / cfg.tokens_per_step) - st.step
    gen = torch.Generator()
    gen.set_state(r.gen.get_state())  # the batches the run itself would see next
    peak, floor = lr_at(st.step, cfg), cfg.optim.lr * cfg.optim.min_lr_ratio
    for i in range(steps):
        x, y = (t.to(s.device) for t in sample_batch(r.data.train, cfg.data.batch_size,
                                                     cfg.data.seq_len, gen))
        train_step(s, x, y, floor + (peak - floor) * decay(i / steps, cfg.optim.decay_shape))
    set_evaluating(s.opt, True)  # schedule-free: score the averaged weights; _restore undoes it
    m = evaluate(s.model, r.windows, r.token_bytes, cfg.data.batch_size, s.device, s.amp)
    _restore(s, saved)
    st.probes.append({"budget_tokens": budget, "branch_step": st.step, "cooldown_steps": steps,
                      "tokens": (st.step + steps) * cfg.tokens_per_step,
                      **{k: m[k] for k in ("val_loss", "val_loss_se", "val_bpb")}})
    st.probe_tokens_trained += steps * cfg.tokens_per_step
    sync(s.device)
    st.probe_time += time.perf_counter() - t0
