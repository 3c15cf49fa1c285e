"""The optimizer of a run: `build_optimizer(model, cfg)` for `cfg.optim.optimizer`.

Design choices:
- Every optimizer keeps its own learning rate in `lr`; a param group's rate is the schedule's
  `lr_at(step)` times the group's `lr_scale` (1, or `adamw_lr_ratio` for Muon's AdamW part,
  times the parametrization's per-layer multiplier: 1 / width_mult for muP's hidden matrices),
  set by `step.train_step`. The schedule, cooldown probes and `--tune-lr` move every group
  together, so one lr sweep tunes an optimizer, split included.
- Weight decay on 2-D weights only (norm gains never), in each optimizer's own form: decoupled
  w <- w (1 - lr wd) for AdamW, Lion, Muon (at the unadjusted lr, as torch.optim.Muon) and
  schedule-free AdamW (at its gradient point y); an L2 term added to the gradient for SGD
  (torch.optim.SGD), which without momentum is the same update.
- Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers in neural networks") takes
  the 2-D matrices inside the blocks; the embedding (tied to the output), the norms and any
  other parameter go to torch's AdamW with its settings (`beta1`, `beta2`), as the
  modded-nanogpt records split them. A fused projection is orthogonalised per projection
  (q, k and v of `attn.qkv`; a gated FFN's two halves of `ffn.up`), as the speedrun's separate
  matrices are: the update does not depend on how the model stores its weights.
- Muon is implemented here, not taken from torch.optim.Muon: the project supports torch >= 2.4
  and torch's exists from 2.9; and torch's runs Newton-Schulz in bf16 everywhere, which on a
  CPU without bf16 matrix units was measured over 30x slower than fp32 (benchmarks/RESULTS.md,
  section 12). Here it runs at the run's matmul precision: bf16 where the run computes in bf16
  (GPUs, as torch and the speedrun; CPUs where bf16 was measured faster), else fp32. The
  algorithm is torch's step for step (momentum as an EMA, Nesterov by lerp, the quintic
  coefficients, eps, both lr adjustments), and a test checks that they agree where torch has it.
- Lion (`lion-pytorch`) and schedule-free AdamW (`schedulefree`, Defazio et al. 2024) come from
  their maintained packages, the `optimizers` extra; `check_available` names the missing one in
  one line before any compute.
- Schedule-free AdamW trains at y and evaluates the average x: `set_evaluating(opt, True)`
  around evaluation, samples and checkpoints (so checkpoints and exports hold x), False before
  training resumes. The other optimizers have one set of weights and ignore it.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import torch

from ..spec.config import ModelConfig, OptimConfig, RunConfig
from .model import lr_multiplier

# (module, pip package) of the optimizers that live outside torch.
PACKAGES = {"lion": ("lion_pytorch", "lion-pytorch"),
            "schedule_free_adamw": ("schedulefree", "schedulefree")}
# Keller Jordan's quintic Newton-Schulz coefficients (torch.optim.Muon, modded-nanogpt).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 5
NS_EPS = 1e-7


def check_available(o: OptimConfig) -> None:
    """One line naming the missing package of `o.optimizer`, before any compute."""
    module, package = PACKAGES.get(o.optimizer, (None, None))
    if module is not None and importlib.util.find_spec(module) is None:
        raise ValueError(f"optimizer={o.optimizer!r} needs the package {package!r}, which is "
                         f"not installed: pip install 'tune-ablations[optimizers]' (or "
                         f"pip install {package})")


# --- which tensor goes where ---------------------------------------------------------------

def fused_rows(name: str, p: torch.Tensor, cfg: RunConfig) -> tuple[int, ...]:
    """Row blocks of a hidden matrix that are separate projections stored together."""
    m = cfg.model
    if name.endswith("attn.qkv.weight"):  # q (n_heads), k and v (kv_heads each) x head_dim
        kv = m.kv_heads * m.head_dim
        rows: tuple[int, ...] = (m.d_model, kv, kv)
    elif name.endswith("up.weight") and p.shape[0] == 2 * m.d_ff:  # gated (or an expert's)
        rows = (m.d_ff,) * 2
    else:
        rows = (p.shape[0],)
    assert sum(rows) == p.shape[0], f"{name}: rows {rows} do not cover shape {tuple(p.shape)}"
    return rows


def assign(model: torch.nn.Module, cfg: RunConfig) -> dict[str, list[tuple[str, Any]]]:
    """Parameter names and tensors by role: `hidden` (Muon's 2-D matrices inside the blocks,
    an MoE router excepted; empty unless the optimizer is muon), `decay` (other 2-D
    weights), `no_decay` (the rest)."""
    out: dict[str, list[tuple[str, Any]]] = {"hidden": [], "decay": [], "no_decay": []}
    muon = cfg.optim.optimizer == "muon"
    for name, p in model.named_parameters():
        if muon and p.dim() == 2 and name.startswith("blocks.") and "router" not in name:
            out["hidden"].append((name, p))
        else:
            out["decay" if p.dim() >= 2 else "no_decay"].append((name, p))
    return out


def _groups(named: dict[str, list], o: OptimConfig, scale: float,
            m: ModelConfig | None = None) -> list[dict[str, Any]]:
    """The decayed and undecayed groups at `scale` x `lr`, each split by the
    parametrization's per-layer lr multiplier (muP: 1 / width_mult for hidden matrices)."""
    out = []
    for role, wd in (("decay", o.weight_decay), ("no_decay", 0.0)):
        by_mult: dict[float, list] = {}
        for name, p in named[role]:
            by_mult.setdefault(lr_multiplier(name, p, m) if m else 1.0, []).append(p)
        out += [{"params": ps, "weight_decay": wd, "lr": o.lr * scale * mult,
                 "lr_scale": scale * mult} for mult, ps in by_mult.items()]
    return out


# --- building ------------------------------------------------------------------------------

def build_optimizer(model: torch.nn.Module, cfg: RunConfig,
                    amp: torch.dtype | None = None) -> Any:
    """The optimizer of `cfg.optim.optimizer` over `model`, in training mode; `amp` is the
    run's autocast dtype (Muon orthogonalises in it, fp32 without one)."""
    o = cfg.optim
    check_available(o)
    named = assign(model, cfg)
    groups = _groups(named, o, 1.0, cfg.model)
    if o.optimizer == "adamw":
        return _adamw(groups, o)
    if o.optimizer == "muon":
        return Combined(_muon(named["hidden"], cfg, amp),
                        _adamw(_groups(named, o, o.adamw_lr_ratio, cfg.model), o))
    if o.optimizer == "lion":
        from lion_pytorch import Lion

        return Lion(groups, lr=o.lr, betas=(o.beta1, o.beta2))
    if o.optimizer == "schedule_free_adamw":
        from schedulefree import AdamWScheduleFree

        # Warmup comes from our schedule (warmup_steps=0 here); the package's default
        # averaging weights (lr_max^2, r=0) are kept.
        opt = AdamWScheduleFree(groups, lr=o.lr, betas=(o.beta1, o.beta2), warmup_steps=0)
        opt.train()  # it refuses to step until told it is training
        return opt
    assert o.optimizer == "sgd", o.optimizer
    return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov)


def _adamw(groups: list[dict[str, Any]], o: OptimConfig) -> torch.optim.AdamW:
    betas = (o.beta1, o.beta2)
    try:  # fused kernels exist for CUDA and, in recent torch, CPU
        return torch.optim.AdamW(groups, lr=o.lr, betas=betas, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.AdamW(groups, lr=o.lr, betas=betas)


def _muon(hidden: list[tuple[str, Any]], cfg: RunConfig, amp: torch.dtype | None) -> Muon:
    by_rows: dict[tuple[int, ...], list] = {}
    for name, p in hidden:
        by_rows.setdefault(fused_rows(name, p, cfg), []).append(p)
    o = cfg.optim
    groups = [{"params": ps, "rows": list(rows), "lr": o.lr, "lr_scale": 1.0}
              for rows, ps in by_rows.items()]
    return Muon(groups, lr=o.lr, weight_decay=o.weight_decay, momentum=o.momentum,
                nesterov=o.nesterov, adjust=o.muon_lr_adjust, ns_dtype=amp or torch.float32)


def set_evaluating(opt: Any, evaluating: bool) -> None:
    """Schedule-free AdamW: True puts the averaged weights x in the model (evaluation,
    samples, checkpoints), False the training point y. A no-op for every other optimizer."""
    for o in getattr(opt, "optimizers", (opt,)):
        switch = getattr(o, "eval" if evaluating else "train", None)
        if callable(switch):
            switch()


# --- Muon ----------------------------------------------------------------------------------

def orthogonalize(g: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """About U V^T of the 2-D g = U S V^T: g scaled to Frobenius norm 1, then five steps of
    the quintic Newton-Schulz iteration x <- a x + b (x x^T) x + c (x x^T)^2 x on the wide
    orientation. Each singular value s goes through p(s) = a s + b s^3 + c s^5 five times
    (to about 0.7..1.2, not exactly 1: Jordan et al. found that costs nothing); in `dtype`."""
    a, b, c = NS_COEFFICIENTS
    x = g.to(dtype)
    tall = g.size(0) > g.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=NS_EPS)
    for _ in range(NS_STEPS):  # the same addmm calls as torch.optim.Muon
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


def adjusted_lr(lr: float, shape: tuple[int, int], adjust: str) -> float:
    """The rate of an orthogonalised update of a matrix of `shape` (A, B): `original`
    sqrt(max(1, A / B)); `match_rms_adamw` 0.2 sqrt(max(A, B)), AdamW's update RMS."""
    A, B = shape
    if adjust == "original":
        return lr * math.sqrt(max(1.0, A / B))
    return lr * 0.2 * math.sqrt(max(A, B))


class Muon(torch.optim.Optimizer):
    """Muon for 2-D matrices: an EMA of the gradients (Nesterov: lerp of the gradient toward
    it), orthogonalised per row block (`rows` in each group), decoupled weight decay at the
    group's lr, then the update at `adjusted_lr` of each block's shape. Newton-Schulz runs in
    `ns_dtype`."""

    def __init__(self, params, *, lr: float, weight_decay: float, momentum: float,
                 nesterov: bool, adjust: str, rows: list[int] | None = None,
                 ns_dtype: torch.dtype = torch.float32):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum,
                                  "nesterov": nesterov, "adjust": adjust, "rows": rows})
        self.ns_dtype = ns_dtype
        for group in self.param_groups:
            for p in group["params"]:
                if p.dim() != 2:
                    raise ValueError(f"Muon takes 2-D matrices; got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mu = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - mu)
                update = p.grad.lerp(buf, mu) if group["nesterov"] else buf
                p.mul_(1 - lr * group["weight_decay"])
                rows = group["rows"] or [p.shape[0]]
                for w, u in zip(p.split(rows), update.split(rows)):  # views: p changes in place
                    w.add_(orthogonalize(u, self.ns_dtype),
                           alpha=-adjusted_lr(lr, tuple(w.shape), group["adjust"]))
        return loss


class Combined:
    """Several optimizers stepped as one (Muon for the hidden matrices, AdamW for the rest):
    `param_groups` is all of theirs, so the schedule, the grad scaler and clipping see every
    parameter; the state dict holds each one's."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self, closure=None):
        assert closure is None, "Combined steps without a closure"
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state["optimizers"]
        assert len(saved) == len(self.optimizers), (len(saved), len(self.optimizers))
        for o, s in zip(self.optimizers, saved):
            o.load_state_dict(s)
