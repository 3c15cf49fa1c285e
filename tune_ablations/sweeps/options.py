"""What a sweep is besides its RunSpec, as typed options: its resources (`ResourceOptions`), a
grid's arms and seeds (`GridOptions`) and a search's sampler and scheduler (`SearchOptions`).

Design choices:
- Each option is a dataclass field that carries its flag, help and argparse type, so the
  parser, the user's given options, sweep.json and `--resume`'s comparison all come from one
  definition: there is no hand-kept list of flags.
- A resumed sweep is the same sweep: its spec and options come back from sweep.json. With
  `--resume`, an option or spec field the user gave is accepted when it equals the stored value
  (the same command with `--resume` appended) and refused by name, with both values, when it
  differs (Ray restores a sweep with its original settings; nothing is silently ignored).
"""

from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any

from ..results.sequential import FIRST_LOOK
from ..spec.io import REDACTED, redact
from ..spec.names import TUNING_SEEDS_FROM
from ..spec.runspec import RunSpec


class SweepError(RuntimeError):
    """A sweep that cannot start; the message says why and what to do."""


def option(default: Any, flag: str, help: str, **argparse_kw: Any):
    """A field with its command-line flag (argparse default None: a given flag is known)."""
    return field(default=default, metadata={"flag": flag, "help": help, "kw": argparse_kw})


def add_options(ap: argparse.ArgumentParser, cls, title: str) -> None:
    """One argument group for the options of `cls`, each help ending with its default."""
    g = ap.add_argument_group(title)
    for f in fields(cls):
        meta = f.metadata
        if "flag" not in meta:
            continue
        kw = dict(meta["kw"])
        default = f.default if f.default is not MISSING else f.default_factory()
        shown = kw.pop("shown", default)
        if kw.get("action") == "store_true":
            kw["default"] = None
        g.add_argument(meta["flag"], dest=f.name, help=f"{meta['help']} (default: {shown})",
                       **kw)


def options_from_args(cls, args: argparse.Namespace, **extra: Any) -> tuple[Any, set[str]]:
    """(options, the names the user gave)."""
    given = {f.name: getattr(args, f.name) for f in fields(cls)
             if "flag" in f.metadata and getattr(args, f.name, None) is not None}
    return cls(**{**given, **extra}), set(given)


def _flag(f) -> str:
    return f.metadata.get("flag", f.name)


def _show(v: Any) -> str:
    return redact(repr(v))


def refuse_changes(stored: Any, given: Any, names: set[str], *, what: str) -> None:
    """With --resume: refuse every given option whose value differs from the stored one (a
    value stored with its credentials redacted matches the given one it redacts to)."""
    for f in fields(stored):
        if f.name not in names:
            continue
        old, new = getattr(stored, f.name), getattr(given, f.name)
        if f.name == "overrides":
            _refuse_overrides(dict(old), dict(new))
        elif old != new and not (isinstance(new, str) and redact(new) == old):
            raise SweepError(f"--resume: {_flag(f)} {_show(new)} differs from the stored "
                             f"sweep's {_show(old)} ({what}); a resumed sweep keeps its own "
                             f"settings (see sweep.json): drop {_flag(f)}, or start a new "
                             "sweep with another --name")


def _refuse_overrides(old: dict, new: dict) -> None:
    for key, value in new.items():
        if old.get(key, MISSING) != value:
            was = _show(old[key]) if key in old else "nothing"
            raise SweepError(f"--resume: --set {key}={_show(value)} differs from the stored "
                             f"sweep's {key}: {was}; a resumed sweep keeps its own settings "
                             f"(see sweep.json): drop --set {key}, or start a new sweep with "
                             "another --name")


def refuse_spec_changes(stored: RunSpec, given: RunSpec, names: set[str]) -> None:
    """The RunSpec half of `--resume`'s comparison (every spec field the user gave)."""
    refuse_changes(stored, given, names, what="what the sweep trains")


@dataclass(frozen=True, kw_only=True)
class ResourceOptions:
    """Where and how robustly a sweep's trials run."""
    cpus_per_trial: float = option(1.0, "--cpus-per-trial", "CPUs (and torch threads) per "
                                   "trial", type=float)
    gpus_per_trial: float | None = option(None, "--gpus-per-trial", "fraction of a GPU per "
                                          "trial", type=float, shown="packs trials on the GPUs")
    trial_resources: dict = option(None, "--trial-resource", "custom Ray resource per trial, "
                                   "e.g. worker_node=0.5; repeatable", nargs="+",
                                   action="extend", metavar="NAME=AMOUNT", shown="none")
    max_failures: int = option(2, "--max-failures", "retries of a crashed trial from its "
                               "checkpoint", type=int)
    keep_checkpoints: int = option(2, "--keep-checkpoints", "checkpoints kept per trial (plus "
                                   "any one Ray's last snapshot names)", type=int)

    def __post_init__(self) -> None:
        object.__setattr__(self, "trial_resources", parse_resources(self.trial_resources))
        if self.cpus_per_trial <= 0:
            raise SweepError(f"--cpus-per-trial={self.cpus_per_trial} must be > 0")
        gpus = self.gpus_per_trial
        if gpus is not None and (gpus < 0 or (gpus > 1 and gpus != int(gpus))):
            raise SweepError(f"--gpus-per-trial={gpus} must be >= 0, and a whole number above 1")
        if self.keep_checkpoints < 1:
            raise SweepError(f"--keep-checkpoints={self.keep_checkpoints} must be >= 1 (a trial "
                             "resumes from its latest checkpoint)")
        if self.max_failures < 0:
            raise SweepError(f"--max-failures={self.max_failures} must be >= 0")


def parse_resources(items: Any) -> dict[str, float]:
    """`["worker_node=0.5"]` (or a stored dict) -> {"worker_node": 0.5}."""
    if isinstance(items, dict):
        return {str(k): float(v) for k, v in items.items()}
    out: dict[str, float] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        try:
            amount = float(value)
        except ValueError:
            amount = -1.0
        if not sep or not key or amount <= 0 or key.upper() in ("CPU", "GPU"):
            raise SweepError(f"--trial-resource {item!r} must be NAME=AMOUNT with AMOUNT > 0 "
                             "(CPUs and GPUs have their own flags)")
        out[key] = amount
    return out


def _seeds(text: str) -> int | str:
    return "auto" if text == "auto" else int(text)


@dataclass(frozen=True, kw_only=True)
class GridOptions:
    """Which of the question's arms a grid runs and how many seeds each gets."""
    ablations: tuple = option(None, "--ablations", "which arms of the question to run, "
                              "baseline included", nargs="+", metavar="NAME",
                              shown="all of them")
    seeds: int | str = option("auto", "--seeds", f"seeds per arm: N, or auto ({FIRST_LOOK}, then "
                              "more for arms still undecided, by a group-sequential test)",
                              type=_seeds)
    max_seeds: int = option(5, "--max-seeds", "with --seeds auto: the most seeds an arm gets",
                            type=int)
    time_budget: float = option(None, "--time-budget", "with --seeds auto: seconds the sweep "
                                "may spend before it stops adding seeds (0: none; with "
                                "--tune-lr, counted from the seeding phase)", type=float,
                                shown="300 at the cpu preset, else none")
    tune_lr: int = option(0, "--tune-lr", "each arm trains at K (odd) learning rates around "
                          "its own, evenly in log scale, with early stopping within the arm; "
                          "then its best lr runs with seeds (0: off)", type=int)
    lr_span: float = option(4.0, "--lr-span", "with --tune-lr: the factor each way around an "
                            "arm's configured lr", type=float)

    def __post_init__(self) -> None:
        if self.ablations is not None:
            object.__setattr__(self, "ablations", tuple(self.ablations))
        if isinstance(self.seeds, int) and self.seeds < 1:
            raise ValueError(f"--seeds={self.seeds} must be >= 1 (or auto)")
        for flag, n in (("--seeds", self.seeds), ("--max-seeds", self.max_seeds)):
            if isinstance(n, int) and n > TUNING_SEEDS_FROM:
                raise ValueError(f"{flag}={n} must be <= {TUNING_SEEDS_FROM}: seeds from "
                                 f"{TUNING_SEEDS_FROM} on belong to runs that tune settings")
        if self.max_seeds < FIRST_LOOK:
            raise ValueError(f"--max-seeds={self.max_seeds} must be >= {FIRST_LOOK} (the seeds "
                             "every arm gets before the first look)")
        if self.time_budget is not None and self.time_budget < 0:
            raise ValueError(f"--time-budget={self.time_budget} must be >= 0 (0: none)")
        if self.tune_lr != 0 and (self.tune_lr < 3 or self.tune_lr % 2 == 0):
            raise ValueError(f"--tune-lr={self.tune_lr} must be 0 (off) or an odd number >= 3 "
                             "(each arm's configured lr sits at the centre, so the fixed-lr "
                             "comparison is measured, not interpolated)")
        if self.lr_span <= 1:
            raise ValueError(f"--lr-span={self.lr_span} must be > 1 (a factor each way)")


@dataclass(frozen=True, kw_only=True)
class SearchOptions:
    """A search's space, sampler and early stopping."""
    space: str = option(None, "--space", "a shipped space by name (lr, lr_batch, ...) or a TOML "
                        "file", shown="required")
    num_samples: int = option(None, "--num-samples", "trials", type=int,
                              shown="the space's, else 16")
    max_concurrent: int = option(None, "--max-concurrent", "trials at once", type=int,
                                 shown="what fits")
    sampler: str = option("tpe", "--sampler", "Optuna sampler",
                          choices=("tpe", "random", "qmc"))
    sampler_seed: int = option(0, "--sampler-seed", "seed of the Optuna sampler", type=int)
    scheduler: str = option("asha", "--scheduler", "early stopping", choices=("asha", "none"))
    reduction_factor: int = option(3, "--reduction-factor", "ASHA eta (an integer, so rungs "
                                   "fall on evaluation milestones)", type=int)
    evals: int = option(8, "--evals", "evaluations per reference run: ASHA can only stop a "
                        "trial when it reports (ignored if eval_every is set)", type=int)
    asha_probes: str = option("auto", "--asha-probes", "rank trials at each ASHA rung by a "
                              "cooldown probe's decayed loss (auto: on with a schedule that "
                              "decays: wsd, cosine, linear)", choices=("auto", "on", "off"))
    study_storage: str = option(None, "--study-storage", "Optuna storage URL the searcher "
                                "writes as trials report (e.g. postgresql+psycopg://...)",
                                shown="sqlite study.db in the experiment")

    def __post_init__(self) -> None:
        for name, low in (("evals", 1), ("num_samples", 1), ("reduction_factor", 2),
                          ("max_concurrent", 1)):
            v = getattr(self, name)
            if v is not None and v < low:
                raise ValueError(f"--{name.replace('_', '-')}={v} must be "
                                 + (f"an integer >= {low}" if name == "reduction_factor"
                                    else f">= {low}"))


def with_secrets(stored: Any, given: Any, names: set[str]) -> Any:
    """The stored options with the values sweep.json keeps redacted (a URL with credentials)
    taken from the command line, which must give them again on --resume."""
    fixes = {}
    for f in fields(stored):
        old = getattr(stored, f.name)
        if not (isinstance(old, str) and REDACTED in old):
            continue
        if f.name not in names:
            raise SweepError(f"--resume: {_flag(f)} was stored with its credentials redacted "
                             f"({old}); give {_flag(f)} again")
        fixes[f.name] = getattr(given, f.name)
    return replace(stored, **fixes) if fixes else stored


def stored(options: Any) -> dict[str, Any]:
    """An options object as sweep.json stores it."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(options).items()}


def restore(cls, record: dict[str, Any]):
    """Options back from sweep.json (fields it lacks take their defaults)."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in record.items()
                  if k in names})
