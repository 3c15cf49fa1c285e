"""What every entry point shares: the parser, the run-spec options and their one meaning, and
turning the project's own errors into one clear line with exit code 2.

One meaning per flag, everywhere: `--seed` is a run's seed (the grid's `--seeds N` runs seeds
0..N-1; a search's sampler has `--sampler-seed`), `--tokens` is a token budget that also
rescales warmup (`token_budget`), `--max-steps` the reference step count, `--out` a folder or
a file, `--set` repeats and adds up, and `--data` beats a config file's corpus.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .overrides import load_config_file, parse_overrides
from .resolve import data_overrides, default_preset

PRESET_CHOICES = ("cpu", "seed", "tiny")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage block: the same shape as our errors
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        raise SystemExit(2)


def build_parser(command: str, description: str) -> argparse.ArgumentParser:
    return _Parser(prog=f"python -m tune_ablations.{command}", description=description)


def log(msg: str) -> None:
    """One progress or result line on stdout, flushed (logs of concurrent processes interleave)."""
    print(msg, flush=True)


def fail(exc: BaseException | str) -> int:
    """One line on stderr, exit code 2: bad input, never a traceback."""
    print(f"error: {exc}", file=sys.stderr)
    return 2


def add_spec_args(ap: argparse.ArgumentParser, *, single: bool) -> None:
    """Options that make a run spec. `single`: one run (`--ablation`, `--seed`)."""
    if single:
        ap.add_argument("--ablation", help="reference ablation (default: baseline, or the "
                        "config file's)")
        ap.add_argument("--seed", type=int, help="seed of initialisation and batch order")
    ap.add_argument("--preset", choices=PRESET_CHOICES,
                    help="scale (default: the config file's, else seed with a GPU, else cpu)")
    ap.add_argument("--data", help="embedded | pydoc | stdlib | reference | "
                    "hf:<dataset>/<config> | a local path (default: the config file's, else "
                    "embedded); beats a config file's corpus")
    ap.add_argument("--config", help="TOML run file (e.g. a search's best.toml)")
    ap.add_argument("--eval-data", help="extra evaluation domains, comma-separated corpora "
                    "(e.g. pydoc,stdlib): val_loss@<name> at every evaluation")
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--max-steps", type=int, help="steps of the reference run (baseline)")
    budget.add_argument("--tokens", type=int,
                        help="token budget of every run (warmup keeps its fraction)")
    budget.add_argument("--iso-tokens", action="store_true",
                        help="every run trains on the baseline's token count")
    budget.add_argument("--iso-flops", action="store_true",
                        help="every run trains on the baseline's training FLOPs (smaller "
                        "models see more tokens)")
    ap.add_argument("--set", nargs="+", action="extend", metavar="KEY=VALUE",
                    help="override config fields or selectors; repeatable")
    ap.add_argument("--force-set", action="store_true",
                    help="allow overriding a key that an ablation defines (collapses that arm)")


def spec_from_args(args: argparse.Namespace, *, smoke: bool = False, n_gpus: int | None = None
                   ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run spec shared by every run, the user's overrides in it). Precedence: the config
    file < `--set` < explicit flags; `--data` beats the file's corpus. The default preset
    follows `n_gpus` (a cluster's GPUs), else this machine's."""
    from .runtime import local_gpus

    file = load_config_file(args.config) if args.config else {}
    gpus = local_gpus() if n_gpus is None else n_gpus
    preset = "tiny" if smoke else (args.preset or file.pop("preset", None)
                                   or default_preset(gpus))
    file.pop("preset", None)
    file_ablation = file.pop("ablation", None)
    overrides: dict[str, Any] = {**file, **parse_overrides(args.set)}
    if args.data is not None:
        overrides.update(data_overrides(args.data))
    if args.eval_data:
        overrides["eval_data"] = ",".join(
            c if c in ("embedded", "pydoc", "stdlib") or c.startswith("hf:")
            else data_overrides(c)["corpus"] for c in args.eval_data.split(",") if c.strip())
    if args.max_steps is not None:
        _positive("--max-steps", args.max_steps)
        overrides["max_steps"] = args.max_steps
    if args.tokens is not None:
        _positive("--tokens", args.tokens)
        overrides.pop("iso_tokens", None)
        overrides["token_budget"] = args.tokens
    for flag in ("iso_tokens", "iso_flops"):
        if getattr(args, flag):
            for other in ("token_budget", "iso_tokens", "iso_flops"):
                overrides.pop(other, None)
            overrides[flag] = True
    spec: dict[str, Any] = {"preset": preset, **overrides}
    if hasattr(args, "ablation"):
        spec["ablation"] = args.ablation or file_ablation or "baseline"
        if args.seed is not None:
            spec["seed"] = args.seed
    return spec, overrides


def _positive(flag: str, value: int) -> None:
    if value <= 0:
        raise ValueError(f"{flag}={value} must be > 0")
