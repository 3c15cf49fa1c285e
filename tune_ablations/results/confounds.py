"""What differs between an arm's runs and the baseline's besides what the arm is about, read from
the resolved configs and results of the runs themselves (never from arm names).

Design choices:
- Each difference is classed: the arm's own change (the config keys the arm changes in the
  sweep's stored question: `question_keys`), what follows from it (tokens per step from batch
  and context, then optimizer steps and warmup steps at equal tokens, training FLOPs and
  parameters from the shape), or something else that also differs (a precision chosen per
  shape, an override).
- A direction is stated only where it is known: a shorter context scores each token with less
  context, which raises the loss (favours the baseline); fewer training FLOPs or tokens favour
  the baseline; more optimizer steps at equal tokens can favour the arm. Learning rate,
  precision, parameters and warmup get no direction: either way is possible.
- The quantities (tokens, optimizer steps, tokens per step, warmup steps, context length,
  training FLOPs, parameters, learning rate, precision, epochs) are the ones that changed
  conclusions in this project's own sweeps (benchmarks/RESULTS.md sections 5 and 12).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from ..spec.config import field_names
from ..spec.names import Status
from ..spec.runspec import RunSpec

OWN, FOLLOWS, ALSO = "its change", "follows from it", "also differs"
MODEL_KEYS = {"d_model", "n_heads", "n_layers", "d_ff", "ffn", "pos_encoding", "vocab_size",
              "norm", "n_kv_heads", "qk_norm", "sliding_window", "tie_embeddings",
              "n_experts", "experts_per_token"}
_RATIO = 0.05  # FLOPs, parameters and epochs closer than 5% are not listed


@dataclass(frozen=True)
class Confound:
    """One difference between the arm's runs and the baseline's."""
    what: str
    """The quantity (`optimizer steps`, `context`, `lr`, ...)."""
    arm: str
    """The arm's value, formatted."""
    baseline: str
    """The baseline's value, formatted."""
    kind: str
    """`its change`, `follows from it` or `also differs`."""
    direction: str = ""
    """Which side the difference favours, where that is known (else empty)."""

    def text(self) -> str:
        base = f"{self.what} {self.arm} vs {self.baseline}"
        return f"{base} ({self.direction})" if self.direction else base


def _one(g, col: str) -> float:
    """The value of a column over one arm's completed runs (they share their config)."""
    v = g[col].dropna() if col in g else []
    return float(v.iloc[0]) if len(v) else math.nan


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if float(v).is_integer() else f"{v:.3g}"


def question_keys(spec: dict | None = None) -> Callable[[str], set[str]]:
    """Each arm's own config keys (what it changes, `Arm.config_keys`), from a sweep's stored
    spec (its question and preset; without one, the reference question)."""
    run = RunSpec.from_dict(spec) if spec else RunSpec()

    def keys(name: str) -> set[str]:
        arm = run.arm(name)
        if arm is None:
            raise ValueError(f"arm {name!r} is not in the sweep's question")
        return arm.config_keys(run.preset)

    return keys


def confounds(df, arm: str, baseline: str = "baseline", *, tuned: frozenset = frozenset(),
              own_keys: Callable[[str], set[str]] | None = None) -> list[Confound]:
    """Every difference between `arm`'s completed runs and the baseline's, classed, with a
    direction where known. `tuned`: keys chosen per arm by the sweep (`--tune-lr`: lr);
    `own_keys`: each arm's own keys (`question_keys` of the sweep's spec)."""
    own_keys = own_keys or question_keys()
    done = df[df["status"].astype(str) == Status.COMPLETED]
    a, b = done[done["ablation"].astype(str) == arm], done[done["ablation"].astype(str) ==
                                                            baseline]
    if a.empty or b.empty:
        return []
    try:
        own = set(own_keys(arm)) | set(tuned)
    except ValueError:  # an arm the question does not define: every difference is listed
        own = set(tuned)
    shape = bool(own & ({"batch_size", "seq_len"} | MODEL_KEYS))
    out = _budget(a, b, own, shape) + _compute(a, b, own, shape)
    out += _settings(a, b, own, tuned)
    return out


def _kind(changed: bool) -> str:
    return FOLLOWS if changed else ALSO


def _budget(a, b, own: set[str], shape: bool) -> list[Confound]:
    """Tokens, tokens per step, optimizer steps and warmup steps."""
    out = []
    tpa, tpb = (_one(g, "batch_size") * _one(g, "seq_len") for g in (a, b))
    ta, tb = _one(a, "tokens_seen"), _one(b, "tokens_seen")
    tokens_per_step = bool(own & {"batch_size", "seq_len"})
    if math.isfinite(ta) and math.isfinite(tb) and abs(ta - tb) >= max(tpa, tpb, 1.0):
        out.append(Confound("tokens", _fmt(ta), _fmt(tb), _kind(tokens_per_step),
                            "more tokens favour the arm" if ta > tb else
                            "fewer tokens favour the baseline"))
    if math.isfinite(tpa) and math.isfinite(tpb) and tpa != tpb:
        out.append(Confound("tokens per step", _fmt(tpa), _fmt(tpb), _kind(tokens_per_step)))
    sa, sb = _one(a, "step"), _one(b, "step")
    if math.isfinite(sa) and math.isfinite(sb) and sa != sb:
        same = math.isfinite(ta) and abs(ta - tb) < max(tpa, tpb, 1.0)
        hint = ("at equal tokens more optimizer steps can favour the arm" if sa > sb else
                "at equal tokens fewer optimizer steps can favour the baseline") if same else ""
        out.append(Confound("optimizer steps", _fmt(sa), _fmt(sb), _kind(tokens_per_step),
                            hint))
    wa, wb = _one(a, "warmup_steps"), _one(b, "warmup_steps")
    if math.isfinite(wa) and math.isfinite(wb) and wa != wb and "warmup_steps" not in own:
        out.append(Confound("warmup steps", _fmt(wa), _fmt(wb), _kind(tokens_per_step)))
    return out


def _compute(a, b, own: set[str], shape: bool) -> list[Confound]:
    """Context, training FLOPs, parameters and epochs."""
    out = []
    ca, cb = _one(a, "seq_len"), _one(b, "seq_len")
    if math.isfinite(ca) and math.isfinite(cb) and ca != cb:
        out.append(Confound("context", f"{ca:.0f}", f"{cb:.0f} tokens",
                            OWN if "seq_len" in own else ALSO,
                            "less context per scored token raises its loss: favours the "
                            "baseline" if ca < cb else "more context per scored token lowers "
                            "its loss: favours the arm"))
    fa, fb = (_one(g, "flops_per_token") * _one(g, "tokens_seen") for g in (a, b))
    if all(math.isfinite(v) and v > 0 for v in (fa, fb)) and abs(fa / fb - 1) > _RATIO:
        out.append(Confound("training FLOPs", f"{fa / fb:.2f}x", "1x", _kind(shape),
                            "fewer FLOPs favour the baseline" if fa < fb else
                            "more FLOPs favour the arm"))
    pa, pb = _one(a, "params"), _one(b, "params")
    if all(math.isfinite(v) and v > 0 for v in (pa, pb)) and abs(pa / pb - 1) > _RATIO / 5:
        out.append(Confound("parameters", _fmt(pa), _fmt(pb),
                            _kind(bool(own & MODEL_KEYS))))
    qa, qb = _one(a, "active_params"), _one(b, "active_params")  # MoE: what a token uses
    if (all(math.isfinite(v) and v > 0 for v in (qa, qb)) and (qa, qb) != (pa, pb)
            and abs(qa / qb - 1) > _RATIO / 5):
        out.append(Confound("active parameters", _fmt(qa), _fmt(qb),
                            _kind(bool(own & MODEL_KEYS))))
    ea, eb = _one(a, "epoch"), _one(b, "epoch")
    if math.isfinite(ea) and math.isfinite(eb) and (abs(ea / eb - 1) > _RATIO if eb > 0
                                                    else ea > 0):
        out.append(Confound("epochs over the corpus", f"{ea:.2f}", f"{eb:.2f}", ALSO,
                            "later tokens repeat earlier text" if ea > 1 else ""))
    elif math.isfinite(ea) and ea > 1:
        out.append(Confound("epochs over the corpus", f"{ea:.2f}", f"{eb:.2f}", ALSO,
                            "both repeat their corpus"))
    return out


# Listed above (budget, context, precision) or unable to change the loss of the main run: the
# label, the seed, MFU's denominator, evaluation cadence, extra evaluations, text samples.
_NOT_SETTINGS = {"tokens", "max_steps", "warmup_steps", "seq_len", "precision", "name", "seed",
                 "peak_flops", "eval_every", "eval_every_tokens", "eval_contexts",
                 "probe_tokens", "eval_data", "text_samples"}


def _settings(a, b, own: set[str], tuned: frozenset) -> list[Confound]:
    """The arm's own changes of config keys (lr, batch_size, ...), the precision each ran in,
    and any other resolved setting that differs."""
    out = []
    for key in field_names():
        if key in _NOT_SETTINGS or key not in a or key not in b:
            continue
        va, vb = a[key].dropna(), b[key].dropna()
        if not len(va) or not len(vb) or str(va.iloc[0]) == str(vb.iloc[0]):
            continue
        x, y = va.iloc[0], vb.iloc[0]
        show = (lambda v: _fmt(float(v))) if isinstance(x, (int, float)) else str
        what = f"{key} (chosen per arm)" if key in tuned else key
        out.append(Confound(what, show(x), show(y), OWN if key in own else ALSO))
    pa, pb = (sorted(set(g["run_precision"].dropna().astype(str))) if "run_precision" in g
              else [] for g in (a, b))
    if pa and pb and pa != pb:
        out.append(Confound("precision", "/".join(pa), "/".join(pb), ALSO))
    return out


def confound_texts(found: list[Confound]) -> str:
    """`its change: ...; follows from it: ...; also differs: ...` (empty when nothing)."""
    parts = []
    for kind in (OWN, FOLLOWS, ALSO):
        items = [c.text() for c in found if c.kind == kind]
        if items:
            parts.append(f"{kind}: " + ", ".join(items))
    return "; ".join(parts)
