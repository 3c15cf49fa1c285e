"""`grid --ladder`: the same question at several sizes, smallest first, as a chain of grids under
one folder (`<storage>/<name>/ladder.json` and one grid per rung, `rung0`, `rung1`, ...).

The rule (one, documented here and in the README). Rung k has `mult_k` times the non-embedding
parameters of the question's baseline at the preset (rung 0 is that baseline, mult 1):
- width and depth both scale by about mult_k ** (1/3) (N ~ d_model^2 x n_layers): d_model a
  multiple of the baseline's head_dim (heads grow, head_dim stays), n_layers whole, d_ff /
  d_model kept; of those, the first by log-distance from mult_k x the parameters plus half
  the log-distance of width / depth from the baseline's, at which every arm of the question
  builds (an arm stated as a factor, e.g. d_model x2/3, must give a valid model); two rungs
  that round to the same model are refused;
- tokens scale with the parameters actually built (N_k / N_0 after rounding), so tokens per
  parameter stay fixed (Chinchilla's proportional rule) and compute grows as about mult_k^2;
  the reference run's steps scale so (batch_size and seq_len kept), and its warmup and
  evaluation interval with them: every rung evaluates at the same fractions of its run;
- the data, vocabulary, seq_len, batch_size, eval_tokens (the same validation windows) and the
  question's arms (relative to each rung's baseline) are kept; under `parametrization=mup`
  every rung's base width is rung 0's d_model, so rung 0's learning rate transfers across
  width; under `completep` also its base depth rung 0's n_layers (transfer across depth too);
- `--ladder N` takes mult_k = 2^k (k = 0..N-1: compute about 4x per rung); `--ladder
  1,4,16` names the multiples.

Design choices:
- Each rung is an ordinary grid (`grid_plan.build_plan` through `sweep.execute`): seeds, the
  sequential test, `--tune-lr`, resume, status and the report work per rung unchanged; the
  ladder records the rungs' settings once (ladder.json) and reuses them on resume.
- Every rung is checked before any rung trains: each arm must build at each size (resolved
  without data); `--ladder-max-seconds` refuses a rung whose estimated first look would take
  longer. `--dry-run` prints every rung's plan, the largest's included, and a cost table.
- Resume: a rung whose trials.json exists is done and skipped; one with sweep.json only is
  resumed; the rest start in order, with the flags the ladder was started with (ladder.json
  stores them; a flag given with --resume that differs is refused by name).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from typing import Any

from ..results.experiment import Experiment, ExperimentError, join
from ..results.ladder import LADDER_FILE
from ..spec.config import RunConfig
from ..spec.flops import count_params
from ..spec.io import log, say
from ..spec.names import SWEEP_FILE, TRIALS_FILE

RUNG_KEYS = ("d_model", "n_heads", "n_layers", "d_ff", "warmup_steps", "eval_every")


@dataclass(frozen=True)
class Rung:
    """One size of the ladder: its parameter multiple and the settings that make it."""
    index: int
    mult: float
    """Target non-embedding parameters as a multiple of rung 0's."""
    sets: dict[str, Any]
    """The baseline's settings at this size (`--set`)."""
    steps: int
    """The reference run's steps (`--max-steps`), or tokens with `--tokens`."""
    params_ratio: float
    """Non-embedding parameters built, as a multiple of rung 0's."""

    @property
    def name(self) -> str:
        return f"rung{self.index}"

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "mult": self.mult, "sets": self.sets,
                "steps": self.steps, "params_ratio": self.params_ratio}


def parse_ladder(text: str) -> list[float]:
    """`N` (2^0 .. 2^(N-1)) or comma-separated increasing parameter multiples."""
    text = str(text).strip()
    try:
        if "," not in text:
            n = int(text)
            if n < 2:
                raise ValueError
            return [2.0 ** k for k in range(n)]
        mults = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"--ladder={text!r} must be a number of rungs >= 2, or comma-separated "
                         "parameter multiples of the baseline, e.g. 1,4,16") from None
    if len(mults) < 2 or any(m <= 0 for m in mults) or mults != sorted(set(mults)):
        raise ValueError(f"--ladder={text!r} must list at least 2 increasing multiples > 0 "
                         "(smallest first)")
    return mults


def build_rungs(ref: RunConfig, mults: list[float], budget: str,
                builds=lambda rung: True) -> list[Rung]:
    """The rungs of `ref` (the reference run: the baseline with the spec's settings) by the
    module's rule. `budget`: the spec's (a token budget scales; published steps cannot).
    `builds(rung)`: whether every arm of the question builds at a rung (the nearest size
    that does is taken)."""
    if budget == "steps":
        raise ValueError("--ladder with --published-steps: every rung scales the reference "
                         "run's tokens; use --iso-tokens, --iso-flops or --tokens")
    m, vocab = ref.model, ref.data.vocab_size
    n0 = count_params(m, vocab)["non_embedding_params"]
    base_steps = ref.budget.tokens if budget == "tokens" else ref.steps
    rungs = []
    for k, mult in enumerate(mults):
        sets = ratio = None
        for sized in _candidates(m, vocab, n0, mult):
            ratio = count_params(sized, vocab)["non_embedding_params"] / n0
            sets = {"d_model": sized.d_model, "n_heads": sized.n_heads,
                    "n_layers": sized.n_layers, "d_ff": sized.d_ff,
                    "warmup_steps": round(ref.optim.warmup_steps * ratio),
                    "eval_every": max(1, round(ref.eval.eval_every * ratio))}
            if m.parametrization != "standard":
                sets["mup_base_width"] = m.mup_base_width or m.d_model
            if m.parametrization == "completep":
                sets["mup_base_depth"] = m.mup_base_depth or m.n_layers
            rung = Rung(k, mult, sets, max(1, round(base_steps * ratio)), ratio)
            if builds(rung):
                break
        else:
            raise ValueError(f"--ladder rung {k} (multiple {mult:g}): no width (a multiple of "
                             f"head_dim={m.head_dim}) and depth near it where every arm of the "
                             "question builds; check the arms at other sizes")
        rungs.append(rung)
    for a, b in zip(rungs, rungs[1:]):
        if a.sets == b.sets:
            raise ValueError(f"--ladder rungs {a.index} and {b.index} (multiples {a.mult:g} "
                             f"and {b.mult:g}) build the same model ({_size(a)}): at this "
                             "baseline's head_dim and depth the sizes are too close; space the "
                             "multiples further apart")
    return rungs


def _candidates(m, vocab: int, n0: int, mult: float) -> list:
    """Models near `mult` x the non-embedding parameters, best first: widths that are
    multiples of head_dim, whole depths, scored by the log-distance from the target
    parameters plus half the log-distance of width / depth from the baseline's (so width and
    depth grow together, about as mult^(1/3) each)."""
    if mult == 1:  # rung 0 is the baseline itself, or the question fails at its preset
        return [m]
    f = mult ** (1 / 3)
    hd = m.head_dim
    scored = []
    for d in range(hd, 2 * round(m.d_model * f) + hd, hd):
        for layers in range(1, 2 * round(m.n_layers * f) + 2):
            c = replace(m, d_model=d, n_heads=d // hd, n_layers=layers,
                        d_ff=max(1, round(m.d_ff * d / m.d_model)))
            miss = abs(math.log(count_params(c, vocab)["non_embedding_params"] / n0 / mult))
            shape = abs(math.log((d / layers) / (m.d_model / m.n_layers)))
            scored.append((miss + 0.5 * shape, d, layers, c))
    return [c for *_, c in sorted(scored, key=lambda t: t[:3])][:50]


def rung_args(args, rung: Rung, folder: str, budget: str):
    """The grid's arguments for one rung: the ladder's folder as storage, the rung's name,
    its settings and budget."""
    a = copy.copy(args)
    a.storage, a.name, a.ladder = folder, rung.name, None
    a.set = list(args.set or []) + [f"{k}={v}" for k, v in rung.sets.items()]
    if budget == "tokens":
        a.tokens = rung.steps
    else:
        a.max_steps = rung.steps
    return a


def _state(folder: str, rung: Rung) -> str:
    """`done`, `started` or `new`."""
    exp = Experiment(join(folder, rung.name))
    if exp.exists(TRIALS_FILE):
        return "done"
    return "started" if exp.exists(SWEEP_FILE) else "new"


def plan_ladder(args) -> tuple[Experiment, list[Rung], str]:
    """(the ladder's folder, its rungs, the budget): from ladder.json on resume, else from the
    command line; every arm checked at every rung without data."""
    from ..spec.presets import default_preset
    from ..spec.resolve import reference_run
    from ..spec.runspec import spec_from_args
    from ..training.resolved import Resolver
    from .cluster import available_gpus

    spec, _ = spec_from_args(args, default_preset=default_preset(available_gpus(args.address)))
    name = args.name or f"ladder-{spec.preset}"
    root = Experiment(join(args.storage, name))
    stored = root.read_json(LADDER_FILE)
    if stored and not args.resume:
        raise ExperimentError(f"ladder {root} already exists; add --resume to continue it, or "
                              "choose another --name")
    if args.resume and not stored:
        raise ExperimentError(f"--resume: no ladder {name!r} in {args.storage!r} (no "
                              f"{LADDER_FILE})")
    if stored:
        if args.ladder is not None and parse_ladder(args.ladder) != stored["mults"]:
            raise ExperimentError(f"--resume: --ladder {args.ladder} differs from the stored "
                                  f"ladder's multiples {stored['mults']}; drop --ladder")
        rungs = [Rung(**{**r, "sets": dict(r["sets"])}) for r in stored["rungs"]]
        return root, rungs, stored["budget"]
    unprepared = Resolver(prepare=False)
    arms = getattr(args, "ablations", None) or spec.arm_names
    errors: list[str] = []

    def builds(rung: Rung) -> bool:  # every arm at this size and budget, without data
        try:
            rs, _ = spec_from_args(rung_args(args, rung, "", spec.budget),
                                   default_preset=spec.preset)
            unprepared.configs([replace(rs, ablation=a) for a in arms])
        except ValueError as exc:
            errors.append(str(exc))
            return False
        return True

    try:
        rungs = build_rungs(reference_run(spec), parse_ladder(args.ladder), spec.budget,
                            builds)
    except ValueError as exc:
        raise ValueError(f"{exc} (the last: {errors[-1]})" if errors and "no width" in str(exc)
                         else str(exc)) from None
    return root, rungs, spec.budget


WHERE = ("storage", "name", "resume", "dry_run", "json", "verbose", "address", "cache_dir",
         "shared_storage", "smoke_test", "ladder", "ladder_max_seconds")
"""Flags that say where and how a command runs, not what the ladder trains."""


def given_flags(args) -> dict[str, Any]:
    """What the user asked the rungs to train (every flag given, but where and how)."""
    return {k: v for k, v in vars(args).items()
            if k not in WHERE and v is not None and v is not False}


def restored_args(args, stored: dict[str, Any]):
    """On resume, the ladder's own flags (ladder.json), so a rung that has not started yet
    trains what the others did; a flag given now that differs is refused by name."""
    import argparse

    given = given_flags(args)
    for key, value in given.items():
        was = stored.get(key)
        if _plain(value) != was:
            raise ExperimentError(f"--resume: --{key.replace('_', '-')} {value!r} differs from "
                                  f"the stored ladder's {was!r} (ladder.json); a resumed ladder "
                                  "keeps its own settings: drop it, or start another --name")
    return argparse.Namespace(**{**vars(args), **stored})


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _size(r: Rung) -> str:
    s = r.sets
    return (f"d_model={s['d_model']} n_layers={s['n_layers']} n_heads={s['n_heads']} "
            f"d_ff={s['d_ff']}, {r.params_ratio:.2f}x params")


def run_ladder(args, build_plan) -> int:
    """Plan, check and run (or dry-run) every rung, smallest first; returns the exit code."""
    from .sweep import execute

    root, rungs, budget = plan_ladder(args)
    folder = root.location
    stored = root.read_json(LADDER_FILE)
    if stored:
        args = restored_args(args, stored.get("args", {}))
    if args.dry_run or args.ladder_max_seconds:
        costs = _dry_runs(args, rungs, folder, budget, build_plan)
        too_long = [(r, c) for r, c in zip(rungs, costs)
                    if args.ladder_max_seconds and c["est_wall_seconds"] > args.ladder_max_seconds]
        if too_long:
            r, c = too_long[0]
            raise ValueError(f"--ladder rung {r.index} ({_size(r)}) is estimated at "
                             f"{c['est_wall_seconds']:.0f} s for its first look, above "
                             f"--ladder-max-seconds={args.ladder_max_seconds:g}; drop the rung "
                             "or raise the limit")
        if args.dry_run:
            return 0
    if not root.exists(LADDER_FILE):
        from ..spec.io import redact

        flags = {k: redact(v) if isinstance(v, str) else _plain(v)
                 for k, v in given_flags(args).items()}
        root.write_json({"mults": [r.mult for r in rungs], "budget": budget,
                         "rungs": [r.to_dict() for r in rungs], "args": flags}, LADDER_FILE)
    for rung in rungs:
        state = _state(folder, rung)
        log(f"event=ladder_rung rung={rung.index} state={state} {_size(rung).replace(', ', ' ')}")
        if state == "done":
            continue
        a = rung_args(args, rung, folder, budget)
        a.resume = state == "started"
        outcome = execute(a, "grid", build_plan)
        if outcome.error is not None:
            raise ValueError(f"ladder rung {rung.index}: {outcome.error}")
        if outcome.code:
            log(f"event=ladder_rung_failed rung={rung.index} code={outcome.code}")
            return outcome.code
    return 0


def _dry_runs(args, rungs: list[Rung], folder: str, budget: str, build_plan) -> list[dict]:
    """Every rung's plan (its trials, steps, FLOPs and estimated seconds), then one line per
    rung: the cost table of the whole ladder."""
    import contextlib
    import io

    from .grid_plan import cost
    from .sweep import execute

    costs = []
    for rung in rungs:
        a = rung_args(args, rung, folder, budget)
        a.dry_run, a.resume, a.name, a.json = True, False, None, False
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):
            outcome = execute(a, "grid", build_plan)
        if outcome.error is not None:
            raise ValueError(f"ladder rung {rung.index} ({_size(rung)}): {outcome.error}")
        text = buf.getvalue()
        if args.dry_run and not args.json:
            say(f"# rung {rung.index}: {_size(rung)}")
            say(text.rstrip())
        c = _total(text)
        c["baseline_flops"] = cost(_baseline(outcome.plan))
        costs.append(c)
    if args.dry_run:
        base = costs[0]["baseline_flops"]
        for rung, c in zip(rungs, costs):
            line = {"rung": rung.index, "mult": rung.mult, **rung.sets,
                    "params_ratio": round(rung.params_ratio, 3), "steps": rung.steps,
                    "baseline_flops": c["baseline_flops"], "pflop": c["pflop"],
                    "compute_ratio": round(c["baseline_flops"] / base, 2),
                    "est_wall_seconds": c["est_wall_seconds"]}
            say(json_line(line) if args.json else
                f"ladder rung={rung.index} {_size(rung).replace(', ', ' ')} "
                f"steps={rung.steps} baseline_flops={c['baseline_flops']:.3g} "
                f"compute={line['compute_ratio']}x trials_PFLOP={c['pflop']:.4g} "
                f"est_wall_seconds={c['est_wall_seconds']:.0f}")
        total = sum(c["pflop"] for c in costs)
        (log if args.json else say)(
            f"ladder total PFLOP={total:.4g} est_wall_seconds="
            f"{sum(c['est_wall_seconds'] for c in costs):.0f} (first looks; more seeds for "
            "undecided arms may follow)")
    return costs


def _baseline(plan) -> RunConfig:
    """The resolved baseline run of a rung's plan (settings only)."""
    from ..training.resolved import Resolver

    spec = replace(plan.base, ablation="baseline", seed=0, params=())
    return Resolver(prepare=False).config(spec)


def json_line(obj: dict) -> str:
    import json

    return json.dumps(obj)


def _total(text: str) -> dict[str, float]:
    """PFLOP and est_wall_seconds from a plan's total line (`plan.print_plan`)."""
    for line in text.splitlines():
        if line.startswith("total "):
            fields = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
            return {"pflop": float(fields["PFLOP"]),
                    "est_wall_seconds": float(fields["est_wall_seconds"])}
    raise AssertionError(f"no total line in the plan: {text[-300:]!r}")
