"""The trainer: `train(cfg, *, report=None) -> result`. Never imports Ray.
(`python -m tune_ablations.train` is its command-line entry point.)

Report protocol (what a caller's `report(metrics, save_checkpoint)` sees):
- It is called at every evaluation: when the run's tokens seen cross a multiple of
  `eval_every_tokens` (token milestones, the same for every run of a sweep; else every
  `eval_every` steps), and at the last step. `metrics` holds exactly `REPORT_KEYS`.
- `save_checkpoint(path)` writes the full state (model, optimizer, RNGs, history) into `path`;
  resuming from it with `resume_from=path` gives the same numbers as an uninterrupted run.
- Returning a truthy value, or raising `StopTraining`, ends the run with status `stopped`.
- `on_end(result)` runs before the last report of a run that completed or diverged, since a
  scheduler may end the process as soon as it gets that report.

Design choices:
- Honest clock: the device is synchronised before every clock read, and evaluation, checkpoint
  and report time are excluded from training throughput (tokens/s, MFU).
- Divergence ends the run with status `diverged` (no exception) and reports the finite
  `DIVERGED_LOSS`, so schedulers stay sane. It is caught before NaN: a loss far above the first
  one, far above the run's best, or above the unigram reference by a wide margin after warmup.
- Every evaluation reports the unigram reference of the same tokens, so "learned beyond token
  frequencies" can be read off any row.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..spec.config import RunConfig, to_flat_dict
from ..spec.flops import count_params, flops_per_token
from ..spec.names import DIVERGED_LOSS, METRICS, REPORT_KEYS, VAL_KEYS, Status, context_metric
from .cooldown import probe_schedule, run_probe
from .data import (
    TokenData,
    check_fits,
    load_tokenizer,
    prepare_data,
    sample_batch,
    val_part,
    val_windows,
)
from .domains import check_fits_tokens, with_domains
from .evaluation import evaluate, unigram_reference
from .model import TransformerLM
from .optimizers import set_evaluating
from .probes import Choice, decide
from .runtime import autocast_dtype, peak_flops_for, precision_name, resolve_device, sync
from .step import build_step, eval_due, load_checkpoint, lr_at, save_checkpoint, train_step

SAMPLE_PROMPTS = ("The", "In Python,", "A function")
Report = Callable[[dict[str, Any], Callable[[Path], None]], Any]


class StopTraining(Exception):
    """Raised (or returned truthy) by a `report` callable to end the run early."""


@dataclass
class TrainState:
    """Everything besides tensors that a checkpoint must restore."""
    step: int = 0
    train_time: float = 0.0
    eval_time: float = 0.0
    initial_loss: float | None = None
    best_train_loss: float = math.inf
    above_reference: int = 0
    status: str = Status.RUNNING.value
    diverged_because: str = ""
    probes: list = field(default_factory=list)
    probe_time: float = 0.0
    probe_tokens_trained: int = 0
    history: list = field(default_factory=list)
    best: dict = field(default_factory=dict)
    resumed_from: list = field(default_factory=list)
    window_losses: list = field(default_factory=list)
    """Loss per eval window at the latest evaluation (paired eval noise between arms)."""
    domain_window_losses: dict = field(default_factory=dict)
    """The same for each extra evaluation domain (rank agreement's bootstrap)."""
    context_window_losses: dict = field(default_factory=dict)
    """The same on each of `eval_contexts`' windows, at the last evaluation."""


def divergence(cfg: RunConfig, st: TrainState, train_loss: float, metrics: dict | None
               ) -> str | None:
    """Why the run has diverged, or None. `metrics` (at evaluations) adds the checks against
    the run's best interval loss and the unigram reference."""
    if not math.isfinite(train_loss):
        return "non-finite loss"
    if st.initial_loss is not None and train_loss > cfg.diverge_factor * st.initial_loss:
        return f"loss {train_loss:.3g} > {cfg.diverge_factor:g} x first loss"
    if metrics is None:
        return None
    if cfg.diverge_climb and train_loss > st.best_train_loss + cfg.diverge_climb:
        return f"loss {train_loss:.3g} climbed > {cfg.diverge_climb:g} nats above its best"
    late = st.step >= max(cfg.optim.warmup_steps, cfg.steps // 4)
    ref = metrics["unigram_val_loss"]
    if cfg.diverge_margin and late and metrics["val_loss"] > ref + cfg.diverge_margin:
        st.above_reference += 1
        if st.above_reference >= 2:
            return (f"val_loss {metrics['val_loss']:.3g} stays > unigram {ref:.3g} + "
                    f"{cfg.diverge_margin:g} nats after warmup")
    else:
        st.above_reference = 0
    return None


def generate_samples(model: TransformerLM, data: TokenData, cfg: RunConfig,
                     device: torch.device, max_new_tokens: int = 48) -> list[dict[str, str]]:
    """Continuations of fixed prompts with a fixed sampling seed, as the reference did."""
    tok = load_tokenizer(data.tokenizer_json)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    out = []
    for prompt in SAMPLE_PROMPTS[:cfg.eval.text_samples]:
        ids = torch.tensor([tok.encode(prompt, add_special_tokens=False).ids], device=device)
        full = model.generate(ids, max_new_tokens, generator=gen)[0].tolist()
        out.append({"prompt": prompt, "text": tok.decode(full)})
    return out


@dataclass
class Run:
    """One run's fixed context: config, data, step machinery, eval windows, references."""
    cfg: RunConfig
    data: TokenData
    step: Any
    gen: torch.Generator
    windows: torch.Tensor
    token_bytes: torch.Tensor
    reference: dict[str, float]
    fpt: float
    peak: float
    peak_source: str
    wall0: float
    probe_at: dict
    domains: dict = field(default_factory=dict)
    """label -> (windows, unigram reference) of each extra evaluation domain."""
    contexts: dict = field(default_factory=dict)
    """context length -> windows of `eval_contexts` shorter than the run's own seq_len."""


def _domain_windows(cfg: RunConfig, data: TokenData) -> dict[str, tuple[torch.Tensor, float]]:
    out = {}
    for label, d in data.domains.items():
        check_fits_tokens(d.tokens, cfg.data.seq_len, f"eval_data {d.corpus!r}")
        w = val_windows(d.tokens, cfg.data.seq_len, cfg.eval.eval_tokens)
        out[label] = (w, unigram_reference(data.train, w, data.token_bytes, data.vocab_size)[
            "unigram_val_loss"])
    return out


def _setup(cfg: RunConfig, data: TokenData | None, log, choice: Choice | None) -> Run:
    wall0 = time.perf_counter()
    device = resolve_device(cfg.device)
    data = data or with_domains(prepare_data(cfg.data, log=log), cfg.data)
    check_fits(data, cfg.data.seq_len)
    choice = choice or decide([(cfg, data.vocab_size)], device)  # a sweep decided for all
    cfg = choice.pin(cfg)
    t0 = time.perf_counter()
    step = build_step(cfg, data.vocab_size, device, amp=autocast_dtype(cfg.precision, device),
                      compiled=bool(cfg.compile), log=log)
    step.compile_seconds = time.perf_counter() - t0 if cfg.compile else 0.0
    step.precision_reason, step.compile_reason = choice.reasons(cfg)
    windows = val_windows(val_part(data.val, data.eos_id), cfg.data.seq_len,
                          cfg.eval.eval_tokens)
    reference = unigram_reference(data.train, windows, data.token_bytes, data.vocab_size)
    peak, source = (cfg.peak_flops, "config") if cfg.peak_flops else \
        peak_flops_for(device, step.amp)
    contexts = {c: val_windows(val_part(data.val, data.eos_id), c, cfg.eval.eval_tokens)
                for c in cfg.eval_context_lengths if c < cfg.data.seq_len}
    return Run(cfg, data, step, torch.Generator().manual_seed(cfg.seed), windows,
               torch.from_numpy(data.token_bytes).to(device), reference,
               flops_per_token(cfg.model, data.vocab_size, cfg.data.seq_len), peak, source,
               wall0, probe_schedule(cfg), _domain_windows(cfg, data), contexts)


def _state_dict(r: Run, st: TrainState) -> dict[str, Any]:
    s = r.step
    return {"model": s.model.state_dict(), "optimizer": s.opt.state_dict(),
            "scaler": s.scaler.state_dict(), "sampler_rng": r.gen.get_state(),
            "torch_rng": torch.get_rng_state(), "state": asdict(st)}


def _restore(r: Run, path: Path, log) -> TrainState:
    ck = load_checkpoint(path)
    r.step.model.load_state_dict(ck["model"])
    r.step.opt.load_state_dict(ck["optimizer"])
    r.step.scaler.load_state_dict(ck["scaler"])
    r.gen.set_state(ck["sampler_rng"])
    torch.set_rng_state(ck["torch_rng"])
    set_evaluating(r.step.opt, False)  # saved while evaluating (schedule-free: weights x)
    st = TrainState(**ck["state"])
    st.resumed_from = [*st.resumed_from, st.step]
    log(f"event=resumed step={st.step}")
    return st


def _result(r: Run, st: TrainState) -> dict[str, Any]:
    cfg, last = r.cfg, (st.history[-1] if st.history else {})
    samples = []
    if st.status == Status.COMPLETED.value and cfg.eval.text_samples:
        samples = generate_samples(r.step.model, r.data, cfg, r.step.device)
    return {
        "name": cfg.name, "seed": cfg.seed, "status": st.status,
        "final": {k: last.get(k) for k in VAL_KEYS}, "best": st.best, **r.reference,
        "train_loss": last.get("train_loss"), "tokens_seen": last.get("tokens_seen", 0),
        "steps": st.step, "epochs": last.get("epoch", 0.0), "train_time_s": st.train_time,
        "eval_time_s": st.eval_time, "resumed_from": st.resumed_from,
        "wall_time_s": time.perf_counter() - r.wall0, "tokens_per_s": last.get("tokens_per_s"),
        "mfu": last.get("mfu"), "peak_flops": r.peak, "peak_source": r.peak_source,
        "mfu_note": "" if not st.history or math.isfinite(last.get("mfu", 0.0)) else
        "MFU came out above 1: the peak FLOP/s denominator is wrong (set peak_flops)",
        "diverged_because": st.diverged_because, "initial_loss": st.initial_loss,
        "probes": st.probes, "probe_time_s": st.probe_time,
        "window_losses": st.window_losses, "domain_window_losses": st.domain_window_losses,
        "context_window_losses": st.context_window_losses,
        "domains": {label: d.facts() for label, d in r.data.domains.items()},
        "probe_tokens_trained": st.probe_tokens_trained,
        "flops_per_token": r.fpt, "device": str(r.step.device),
        "precision": precision_name(r.step.amp), "precision_reason": r.step.precision_reason,
        "compile_reason": r.step.compile_reason, "compiled": r.step.compiled,
        "compile_time_s": r.step.compile_seconds,
        "threads": torch.get_num_threads(),
        **count_params(cfg.model, r.data.vocab_size), "history": st.history,
        "samples": samples, "data": r.data.facts(cfg.total_tokens), "config": to_flat_dict(cfg),
    }


def _evaluate(r: Run, st: TrainState, train_loss: float, lr: float, gnorm: float
              ) -> dict[str, Any]:
    """The metrics of one evaluation (exactly REPORT_KEYS); updates status and best."""
    cfg, tokens_seen = r.cfg, st.step * r.cfg.tokens_per_step
    m: dict[str, Any] = {"step": st.step, "tokens_seen": tokens_seen,
                         "epoch": tokens_seen / len(r.data.train), "lr": lr,
                         "train_loss": train_loss, "grad_norm": gnorm, **r.reference}
    why = divergence(cfg, st, train_loss, None) if st.status == Status.RUNNING.value else None
    if st.status == Status.RUNNING.value and why is None:
        m.update(evaluate(r.step.model, r.windows, r.token_bytes, cfg.data.batch_size,
                          r.step.device, r.step.amp))
        st.window_losses = m.pop("window_losses")  # the latest evaluation's, per window
        for label, (windows, unigram) in r.domains.items():  # the same model, other text
            d = evaluate(r.step.model, windows, r.token_bytes, cfg.data.batch_size,
                         r.step.device, r.step.amp)
            m.update({f"val_loss@{label}": d["val_loss"], f"val_bpb@{label}": d["val_bpb"],
                      f"val_loss_se@{label}": d["val_loss_se"],
                      f"unigram_val_loss@{label}": unigram})
            st.domain_window_losses[label] = d["window_losses"]
        if st.step >= cfg.steps:  # the answer compares final losses: scored once, at the end
            m.update(_context_losses(r, st, m["val_loss"]))
        why = divergence(cfg, st, train_loss, m)
    if why is not None or st.status == Status.DIVERGED.value:
        st.status, st.diverged_because = Status.DIVERGED.value, why or st.diverged_because
        m.update({x.name: x.diverged for x in METRICS})  # finite: Ray, ASHA, Optuna need numbers
        st.window_losses, st.context_window_losses = [], {}
        if not math.isfinite(m["train_loss"]):
            m["train_loss"] = DIVERGED_LOSS
    else:
        st.best_train_loss = min(st.best_train_loss, train_loss)
        if m["val_loss"] < st.best.get("val_loss", math.inf):
            st.best = {k: m[k] for k in VAL_KEYS} | {"step": st.step}
    if st.step >= cfg.steps and st.status == Status.RUNNING.value:
        st.status = Status.COMPLETED.value
    probe = next((p for p in reversed(st.probes) if tokens_seen - cfg.tokens_per_step
                  < p["budget_tokens"] <= tokens_seen), None)
    diverged = st.status == Status.DIVERGED.value
    m["rank_loss"] = probe["val_loss"] if probe and not diverged else m["val_loss"]
    return m


def _context_losses(r: Run, st: TrainState, own_loss: float) -> dict[str, float]:
    """`val_loss@ctx<N>` for each of `eval_contexts` up to the run's seq_len (its own windows
    when N is its seq_len), each batch holding about a training batch's tokens."""
    cfg, out = r.cfg, {}
    if cfg.data.seq_len in cfg.eval_context_lengths:
        out[context_metric(cfg.data.seq_len)] = own_loss
        st.context_window_losses[str(cfg.data.seq_len)] = st.window_losses
    for c, windows in r.contexts.items():
        d = evaluate(r.step.model, windows, r.token_bytes, max(1, cfg.tokens_per_step // c),
                     r.step.device, r.step.amp)
        out[context_metric(c)] = d["val_loss"]
        st.context_window_losses[str(c)] = d["window_losses"]
    return out


def _throughput(r: Run, st: TrainState, m: dict[str, Any]) -> None:
    tok_s = m["tokens_seen"] / max(st.train_time, 1e-9)
    mfu = tok_s * r.fpt / r.peak
    m.update({"tokens_per_s": tok_s, "steps_per_s": st.step / max(st.train_time, 1e-9),
              # Above 1 the denominator is wrong, not the run: NaN, and the result says why.
              "mfu": mfu if mfu <= 1.0 else math.nan,
              "train_time_s": st.train_time, "eval_time_s": st.eval_time,
              Status.DIVERGED.value: st.status == Status.DIVERGED.value, "status": st.status})


def train(cfg: RunConfig, *, report: Report | None = None, data: TokenData | None = None,
          resume_from: Path | None = None, threads: int | None = None,
          log: Callable[[str], None] = lambda s: None,
          on_end: Callable[[dict[str, Any]], None] | None = None,
          choice: Choice | None = None) -> dict[str, Any]:
    """Train one run; returns final and best metrics, history, throughput, status, samples.
    `choice`: the precision and compilation a sweep decided for all its runs (else this run
    decides for itself, `probes.decide`)."""
    if threads:
        torch.set_num_threads(threads)
    r = _setup(cfg, data, log, choice)
    st = _restore(r, resume_from, log) if resume_from is not None else TrainState()
    device, result = r.step.device, None
    loss_sum, n_since, gnorm = torch.zeros((), device=device), 0, torch.zeros(())
    sync(device)
    t0 = time.perf_counter()
    while st.step < cfg.steps and st.status == Status.RUNNING.value:
        lr = lr_at(st.step, cfg)
        x, y = (t.to(device, non_blocking=True) for t in sample_batch(
            r.data.train, cfg.data.batch_size, cfg.data.seq_len, r.gen))
        loss, gnorm = train_step(r.step, x, y, lr)
        st.step += 1
        loss_sum += loss
        n_since += 1
        for budget in r.probe_at.get(st.step, ()):  # branch cooldowns, clock stopped
            sync(device)
            st.train_time += time.perf_counter() - t0
            run_probe(r, st, budget)
            t0 = time.perf_counter()
        due = eval_due(cfg, st.step)
        if st.initial_loss is None or (not due and st.step % 10 == 0):
            last = loss.item()  # one sync per 10 steps: a cheap divergence watch
            st.initial_loss = last if st.initial_loss is None else st.initial_loss
            why = divergence(cfg, st, last, None)
            if why is not None:
                st.status, st.diverged_because, due = Status.DIVERGED.value, why, True
        if not due:
            continue
        sync(device)
        t1 = time.perf_counter()
        st.train_time += t1 - t0
        set_evaluating(r.step.opt, True)  # evaluation, samples, checkpoint (optimizers.py)
        m = _evaluate(r, st, (loss_sum / n_since).item(), lr, float(gnorm))
        sync(device)
        st.eval_time += time.perf_counter() - t1
        _throughput(r, st, m)
        st.history.append(m)
        log(" ".join(f"{k}={v:.5g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in m.items()))
        loss_sum.zero_()
        n_since = 0
        if st.status in (Status.COMPLETED.value, Status.DIVERGED.value):
            result = _result(r, st)
            if on_end is not None:
                on_end(result)
        if report is not None and _report(report, m, r, st) and st.status == Status.RUNNING.value:
            st.status = Status.STOPPED.value
        set_evaluating(r.step.opt, False)
        sync(device)
        t0 = time.perf_counter()
    return result if result is not None else _result(r, st)


def _report(report: Report, m: dict[str, Any], r: Run, st: TrainState) -> bool:
    """Send one report; True if the caller asked to stop."""
    metrics = {k: m[k] for k in REPORT_KEYS} | {k: v for k, v in m.items() if "@" in k}
    try:
        return bool(report(metrics, lambda path: save_checkpoint(Path(path),
                                                                 _state_dict(r, st))))
    except StopTraining:
        return True
