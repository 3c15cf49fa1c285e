"""tune_ablations: Ray Tune sweeps for fast, honest pretraining ablations of small Transformer LMs.

Entry points: `python -m tune_ablations.grid`, `.search`, `.analysis`, `.train`. Importing the
package does no work: Ray, Optuna and matplotlib load only inside the functions that use them.
"""

__version__ = "0.1.0"
