"""tune_ablations: Ray Tune sweeps for fast, honest pretraining ablations of small Transformer LMs.

Entry points: `python -m tune_ablations.grid`, `.search`, `.analysis`, `.train`, `.export`
(or `tune-ablations <command>`). Importing the
package does no work: Ray, Optuna and matplotlib load only inside the functions that use them.
"""

__version__ = "0.1.0"


def load_pretrained(path, device: str = "cpu"):
    """A model exported by `python -m tune_ablations.export` (see `export.load_pretrained`)."""
    from .export import load_pretrained as _load

    return _load(path, device)
