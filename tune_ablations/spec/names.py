"""Names defined once: trial statuses, the metrics table, report keys and file names. Every
other module imports these instead of spelling them again.

Design choices:
- `Status` is a `str` enum, so a status compares equal to its value in JSON, DataFrames and
  Ray's results (`Status.COMPLETED == "completed"`).
- `METRICS` is the one table of validation metrics: name, direction and the finite value a
  diverged run reports (Ray's schedulers and Optuna need numbers, never NaN). Evaluation,
  results, statistics, the tuner's columns and the report all loop over it.
- File names cover ours and Ray's; only `results.experiment.Experiment` joins them into paths.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum


class Status(str, Enum):
    """How a trial ended (or that it has not)."""
    COMPLETED = "completed"
    """Ran its whole budget."""
    EARLY_STOPPED = "early_stopped"
    """Stopped by the scheduler (ASHA) before its budget."""
    DIVERGED = "diverged"
    """Non-finite or runaway loss."""
    ERROR = "error"
    """Raised an exception (traceback in the trial's error.txt)."""
    STOPPED = "stopped"
    """Asked to stop by its caller."""
    RUNNING = "running"
    """No end recorded yet."""

    __hash__ = str.__hash__  # equal to its value, so hash like it (dict keys, pandas isin)

    def __str__(self) -> str:
        return self.value


STATUSES = tuple(s.value for s in Status)


@dataclass(frozen=True)
class Metric:
    """One validation metric."""
    name: str
    """Key in reports, histories and DataFrames."""
    mode: str
    """`min` or `max`: which direction is better."""
    diverged: float
    """The finite value reported when a run has diverged."""
    doc: str
    """What it measures, with its unit."""


# Reported instead of NaN/inf by a diverged run: ASHA never stops a NaN trial and `inf` breaks its
# cutoffs; Optuna cannot record NaN. 100 nats is far above ln(vocab) for any real tokenizer.
DIVERGED_LOSS = 100.0
METRICS = (
    Metric("val_loss", "min", DIVERGED_LOSS, "mean next-token cross-entropy, nats"),
    Metric("val_loss_se", "min", 0.0, "standard error of val_loss across eval windows, nats"),
    Metric("val_ppl", "min", math.exp(50.0), "perplexity, exp(val_loss)"),
    Metric("val_bpb", "min", DIVERGED_LOSS, "bits per UTF-8 byte of the eval text"),
    Metric("val_acc", "max", 0.0, "top-1 next-token accuracy"),
    Metric("val_top5", "max", 0.0, "top-5 next-token accuracy"),
    Metric("val_confidence", "max", 0.0, "mean probability of the top-1 token"),
    Metric("val_entropy", "min", DIVERGED_LOSS, "mean entropy of the prediction, nats"),
)
METRIC_BY_NAME = {m.name: m for m in METRICS}
METRIC = "val_loss"
"""The metric every sweep optimises and every comparison reads."""
MODE = METRIC_BY_NAME[METRIC].mode
VAL_KEYS = tuple(m.name for m in METRICS)
# ASHA's time attribute: trials are compared at equal tokens, not equal steps.
TIME_ATTR = "tokens_seen"
# What schedule-aware ASHA ranks by: the val_loss of a cooldown probe whose budget is this
# report's tokens (the loss a run of this budget reaches, decayed), else val_loss.
RANK_METRIC = "rank_loss"
# Exactly the keys every report to Ray (and every history row) holds.
REPORT_KEYS = ("step", "tokens_seen", "epoch", "lr", "train_loss", "grad_norm", *VAL_KEYS,
               "rank_loss", "unigram_val_loss", "unigram_val_bpb", "tokens_per_s",
               "steps_per_s", "mfu", "train_time_s", "eval_time_s", "diverged", "status")
SCHEDULED_LR = "scheduled_lr"
"""The name a history (tables, trackers) gives the trainer's reported `lr`: the rate at that step
after warmup and decay, not the configured peak `lr`."""
HISTORY_NAMES = {"lr": SCHEDULED_LR}
"""Reported key -> the name every history of a trial shows it under."""


def context_metric(context: int, metric: str = METRIC) -> str:
    """`val_loss@ctx64`: a run's metric on the windows of another context length (the same
    windows for every run of a sweep, whatever its own seq_len)."""
    return f"{metric}@ctx{context}"


def is_context_metric(column: str) -> bool:
    """True for `context_metric` columns (not an evaluation domain's `val_loss@<corpus>`)."""
    tail = column.partition("@")[2]
    return tail.startswith("ctx") and tail[3:].isdigit()


def mode_of(metric: str) -> str:
    """`min` or `max` for a metric of the table (extra-domain losses `val_loss@x` are `min`)."""
    return METRIC_BY_NAME.get(metric.split("@", 1)[0], METRIC_BY_NAME[METRIC]).mode


# --- files -----------------------------------------------------------------------------------
# Ours, in the experiment folder.
SWEEP_FILE = "sweep.json"
"""The sweep's record: spec, options, versions, git SHA, creation time."""
TRIALS_FILE = "trials.json"
"""Ray's final view of each trial, written when the sweep ends."""
SPACE_FILE, BEST_FILE = "space.toml", "best.toml"
STUDY_FILE, IMPORTANCES_FILE, HOLDOUT_FILE = "study.db", "importances.json", "holdout.json"
DECISIONS_FILE = "decisions.json"
"""The seeds procedure's looks and verdicts (grids with --seeds auto)."""
QUESTION_FILE = "question.toml"
"""A grid's question (its baseline and arms), verbatim as the user gave it."""
RESULTS_TABLE, HISTORY_TABLE = "results", "history"
"""The tables a sweep writes (`<name>.parquet` and `<name>.csv`)."""
FIT_FILE, REPORT_FILE = "fit.json", "report.md"
TUNING_SEEDS_FROM = 1000
"""Runs that choose a setting (the lr sweep of `grid --tune-lr`, the preset's own lr search in
benchmarks/bench_preset_lr.py) use seeds from here on; a grid's comparison uses seeds 0, 1, ...
below it, so the runs that report a comparison never include the runs that chose its settings
(no winner's curse)."""
LR_SWEEP_SEED = TUNING_SEEDS_FROM
"""`grid --tune-lr`: the seed of every lr-sweep trial. The seeding phase then runs seeds 0, 1, ...
at each arm's chosen lr, independent of the runs that chose it (no winner's curse)."""
LR_REPLICATE_SEED = 1001
"""`grid --tune-lr`: the lr sweep's second seed, at each arm's configured lr and at the lowest and
highest lrs that ran to the end: the seed noise the fit weights by, measured across the range."""
DATA_DIR = "data"
"""Token data of a corpus read from a local path, stored with the experiment (by data id), so a
sweep resumes on a machine that lacks the corpus file."""
TOKENIZER_DIR = "tokenizer"
"""The tokenizer, stored with the experiment so export works from any machine."""
TOKENIZER_JSON, MANIFEST_FILE = "tokenizer.json", "manifest.json"
"""A tokenizer's file (Hugging Face's format), and a token cache folder's manifest (written
last: its presence says the folder is complete)."""
REPORT_DIR = "report"
TABLES = (RESULTS_TABLE, HISTORY_TABLE)
# Ours, in each trial folder.
RUN_FILE, OUTCOME_FILE = "run.json", "outcome.json"
CHECKPOINT_FILE = "checkpoint.pt"
# Ray's.
RAY_RESULT_FILE, RAY_PARAMS_FILE, RAY_ERROR_FILE = "result.json", "params.json", "error.txt"
RAY_ERROR_PICKLE = "error.pkl"
RAY_CHECKPOINT_PREFIX = "checkpoint_"
RAY_TUNER_FILE = "tuner.pkl"
RAY_STATE_PREFIX = "experiment_state-"
RAY_TERMINATED, RAY_ERROR = "TERMINATED", "ERROR"
"""Ray Tune's final trial states, as trials.json records them."""
JOB_ENDED = ("STOPPED", "SUCCEEDED", "FAILED")
"""Ray Jobs' terminal job states: a sweep's driver will not write again."""
JOBS_DIR = "jobs"
"""Where `submit` keeps a record of each job it submitted (under the cache folder)."""
