"""The Python API: run a grid or a search from a notebook or a script with the same arguments as
the command line, and read any experiment back, with its results and its answer as DataFrames.

    from tune_ablations import load_experiment, run_grid

    sweep = run_grid(arm=["swiglu:ffn=swiglu,match_params=true"])  # grid --arm ...
    sweep.answer     # one row per arm: diff, ci_low, ci_high, verdict, n, confounds, ...
    sweep.results    # one row per trial
    load_experiment("results/grid-cpu-...")  # or "s3://bucket/sweeps/grid-cpu-..."

Design choices:
- One code path with the commands: keyword arguments become the command line (each keyword is
  an option's name: `seeds=2` is `--seeds 2`, `set={"lr": 1e-3}` is `--set lr=0.001`,
  `arm={"big": {"d_model": "x2"}}` is `--arm big:d_model=x2`), parsed by the command's own
  parser and run by the command's own `run`. A keyword that names no option is refused with
  the closest one.
- Bad input raises `ValueError` with the command's one-line message, before any compute.
- Frames are read from the experiment on first use and kept (`refresh()` reads again), so the
  same object serves a finished sweep and one still running elsewhere.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .results.experiment import Experiment


@dataclass
class Sweep:
    """A sweep's experiment and what it holds, as DataFrames."""
    experiment: Experiment
    """Where it lives (a local folder or a URI): every file of the sweep."""
    exit_code: int = 0
    """The command's exit code (1: some trials failed; their rows say why)."""
    _cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def refresh(self) -> Sweep:
        """Forget what was read, so the next access reads the experiment again."""
        self._cache.clear()
        return self

    def _load(self):
        if "res" not in self._cache:
            from .results.frames import load
            from .results.verdicts import experiment_answer

            res = load(self.experiment)
            self._cache["res"] = res
            self._cache["answer"] = experiment_answer(self.experiment, res)
        return self._cache["res"]

    @property
    def results(self):
        """One row per trial: arm, seed, status, every config field, final and best metrics."""
        return self._load().trials

    @property
    def history(self):
        """One row per trial per evaluation."""
        return self._load().history

    @property
    def answer(self):
        """One row per arm against the baseline (a grid's answer; empty for a search)."""
        from .results.verdicts import answer_frame

        self._load()
        return answer_frame(*self._cache["answer"])

    def answer_records(self) -> list[dict[str, Any]]:
        """The answer as JSON-ready dicts, one per arm (what `grid --json` prints)."""
        from .results.verdicts import answer_records

        self._load()
        ans, decisions = self._cache["answer"]
        return answer_records(ans, decisions) if ans is not None else []

    def report(self, out: str | os.PathLike | None = None, *, plots: bool = True) -> Path:
        """Write report.md (and plots) as `python -m tune_ablations.analysis` does."""
        from .results.report import write_report
        from .spec.names import REPORT_DIR

        target = Path(out) if out else (Path(self.experiment.path(REPORT_DIR))
                                        if self.experiment.local_dir is not None
                                        else Path.cwd() / f"{self.experiment.name}-report")
        return write_report(self._load(), self.experiment, target, plots=plots)


def load_experiment(location: str | os.PathLike) -> Sweep:
    """An existing sweep: a local folder or a URI (`s3://...`, `file://...`)."""
    exp = Experiment(location)
    exp.read_sweep()  # refuses, naming the location, what holds no sweep
    return Sweep(exp)


def run_grid(**options: Any) -> Sweep | None:
    """`python -m tune_ablations.grid` with `options` as its flags; the finished sweep (None
    for `dry_run=True`, which prints the plan)."""
    from . import grid

    return _run(grid, options)


def run_search(**options: Any) -> Sweep | None:
    """`python -m tune_ablations.search` with `options` as its flags (`space="lr"`, ...)."""
    from . import search

    return _run(search, options)


def _run(command, options: dict[str, Any]) -> Sweep | None:
    ap = command.parser()
    ap.raise_errors = True
    args = ap.parse_args(to_argv(ap, options))
    outcome = command.run(args, ap)
    if outcome.error is not None:
        raise ValueError(outcome.error)
    return None if outcome.experiment is None else Sweep(outcome.experiment, outcome.code)


def to_argv(ap: argparse.ArgumentParser, options: dict[str, Any]) -> list[str]:
    """Keyword arguments -> the command line they stand for."""
    from .spec.config import unknown_key_error

    actions = {}
    for a in ap._actions:
        if a.option_strings and a.dest != "help":  # by dest, and by the flag's own name
            actions[a.dest] = a
            actions[max(a.option_strings, key=len).lstrip("-").replace("-", "_")] = a
    argv: list[str] = []
    for key, value in options.items():
        if key not in actions:
            raise unknown_key_error(key, sorted(actions), what="option")
        action = actions[key]
        flag = max(action.option_strings, key=len)
        if action.nargs == 0:  # a switch
            argv += [flag] if value else []
        elif value is not None:
            argv += _values(flag, key, value, repeat=action.nargs is None and
                            isinstance(action, argparse._AppendAction))
    return argv


def _values(flag: str, key: str, value: Any, *, repeat: bool) -> list[str]:
    from .spec.arms import Arm

    if isinstance(value, dict) and key == "arm":
        value = [f for name, changes in value.items() for f in Arm(name, changes).to_flags()]
    elif isinstance(value, dict):
        value = [f"{k}={_text(v)}" for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        items = [_text(v) for v in value]
        return [x for item in items for x in (flag, item)] if repeat else [flag, *items]
    return [flag, _text(value)]


def _text(v: Any) -> str:
    return "true" if v is True else "false" if v is False else repr(v) if isinstance(
        v, float) else str(v)
