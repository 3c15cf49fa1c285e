"""tune_ablations: Ray Tune sweeps for fast, honest pretraining ablations of small Transformer LMs.

Layers, each importing only the ones before it (tests/test_layers.py checks the rule):
  spec/      what a run is: RunSpec, the resolver, RunConfig, names (statuses, metrics, files)
  training/  corpus, tokenizer, token cache, model, step, probes, evaluation, train(); no Ray
  results/   Experiment (a sweep's folder, local or remote), DataFrames, statistics, report,
             export; needs no running Ray
  sweeps/    the Ray bridge, searchers, schedulers, the Optuna study, the one sweep skeleton
  commands:  the top-level modules grid, search, analysis, train, export, status, submit,
             cache (`python -m tune_ablations.<command>` or `tune-ablations <command>`)
  api        the Python functions below: `run_grid`, `run_search`, `load_experiment` (the
             commands' own code path; `tune_ablations.api`)
Importing the package does no work: Ray, Optuna and matplotlib load only inside the
functions that use them, and the API module loads on first use.
"""

__version__ = "0.1.0"
__all__ = ["Sweep", "load_experiment", "load_pretrained", "run_grid", "run_search"]
_API = ("Sweep", "load_experiment", "run_grid", "run_search")


def __getattr__(name: str):
    """`from tune_ablations import run_grid` loads the API module then, not at import."""
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'tune_ablations' has no attribute {name!r}")


def load_pretrained(path, device: str = "cpu"):
    """A model exported by `python -m tune_ablations.export` (see `export.load_pretrained`)."""
    from .results.export import load_pretrained as _load

    return _load(path, device)
