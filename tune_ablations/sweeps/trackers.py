"""Experiment trackers: `--tracker mlflow|wandb` logs every trial of a sweep to MLflow or Weights &
Biases. This module holds the option, the checks made before Ray starts and `build_tracker`, the
one function (plain arguments) that makes the Ray Tune callback; the callbacks themselves are in
`sweeps.tracker_callbacks` (they import Ray).

Design choices:
- Never required: mlflow and wandb are imported only when `--tracker` names them. A missing
  package is one line naming the extra to install, before anything else runs; the store is
  opened (MLflow: its experiment found or created; W&B: credentials, unless offline) before
  any data is prepared or Ray starts (not by `--dry-run`), so a bad URI costs no compute.
- Where runs go follows each tool's own conventions: MLflow's tracking URI is `--tracker-uri`,
  else `$MLFLOW_TRACKING_URI`, else MLflow's default; its experiment is the sweep's name. W&B's
  project is `--tracker-project`, else `$WANDB_PROJECT`, else `tune-ablations`, with the sweep's
  name as the run group; `WANDB_MODE=offline` logs locally (under `$WANDB_DIR`, else the
  directory the sweep starts in) for a later `wandb sync`. The locations used are resolved when
  the sweep starts and stored in sweep.json; `--resume` compares a given value like any other
  setting and logs to the stored locations.
- A URI holding credentials (`http://user:password@host`) is refused: it would be stored in
  sweep.json and in Ray's `tuner.pkl`. Both tools read credentials from their environment
  (`MLFLOW_TRACKING_USERNAME`/`_PASSWORD`/`_TOKEN`, `WANDB_API_KEY`) or their login files.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, fields, replace

from ..spec.io import redact
from .options import SweepError, option, options_from_args, refuse_changes, restore

TRACKERS = ("mlflow", "wandb")
PACKAGES = {"mlflow": ("mlflow", "mlflow-skinny"), "wandb": ("wandb", "wandb")}
"""tracker -> (module it imports, the package that provides it)."""
EXTRA = "pip install 'tune-ablations[trackers]'"
WANDB_PROJECT = "tune-ablations"
"""The W&B project when neither --tracker-project nor $WANDB_PROJECT names one."""


@dataclass(frozen=True, kw_only=True)
class TrackerOptions:
    """Where each trial is logged besides the experiment folder."""
    tracker: str | None = option(None, "--tracker", "log every trial to MLflow or Weights & "
                                 "Biases (needs " + EXTRA + ")", shown="none",
                                 metavar="mlflow|wandb")
    tracker_uri: str | None = option(None, "--tracker-uri", "MLflow's tracking URI (a server, "
                                     "sqlite:///FILE or a folder); W&B's server URL",
                                     shown="$MLFLOW_TRACKING_URI or MLflow's default; "
                                     "$WANDB_BASE_URL or W&B's", metavar="URI")
    tracker_project: str | None = option(None, "--tracker-project", "MLflow experiment or W&B "
                                         "project", shown="MLflow: the sweep's name; W&B: "
                                         f"$WANDB_PROJECT or {WANDB_PROJECT}", metavar="NAME")

    def __post_init__(self) -> None:
        if self.tracker is not None and self.tracker not in TRACKERS:
            raise ValueError(f"--tracker={self.tracker!r} must be one of {', '.join(TRACKERS)}")
        if self.tracker is None and (self.tracker_uri or self.tracker_project):
            flag = "--tracker-uri" if self.tracker_uri else "--tracker-project"
            raise ValueError(f"{flag} needs --tracker ({' or '.join(TRACKERS)})")
        if self.tracker_uri and redact(self.tracker_uri) != self.tracker_uri:
            raise ValueError(f"--tracker-uri={redact(self.tracker_uri)!r} must not hold "
                             "credentials (it is stored in sweep.json and Ray's tuner.pkl): "
                             f"{_CREDENTIALS_FROM[self.tracker or 'mlflow']}")
        if self.tracker_project is not None and not self.tracker_project.strip():
            raise ValueError(f"--tracker-project={self.tracker_project!r} must name an MLflow "
                             "experiment or a W&B project")


_CREDENTIALS_FROM = {
    "mlflow": "MLflow reads them from MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD, "
              "or MLFLOW_TRACKING_TOKEN",
    "wandb": "W&B reads its key from WANDB_API_KEY or `wandb login`",
}


def tracker_from_args(args, record: dict | None) -> TrackerOptions:
    """The tracker a sweep logs to: from the command line, or (resume: `record` is the stored
    sweep.json) the stored one, refusing a given value that differs. Checks that the package
    is installed."""
    if record is None:
        opts, _ = options_from_args(TrackerOptions, args)
    else:  # each given value is compared with the stored one (alone it may be incomplete)
        opts = restore(TrackerOptions, record.get("tracker") or {})
        names = {f.name for f in fields(TrackerOptions) if getattr(args, f.name, None) is not None}
        refuse_changes(opts, args, names, what="the experiment tracker")
    check_installed(opts.tracker)
    return opts


def check_installed(tracker: str | None) -> None:
    """One line naming what to install when the tracker's package is missing."""
    if tracker is None:
        return
    module, package = PACKAGES[tracker]
    if importlib.util.find_spec(module) is None:
        raise SweepError(f"--tracker {tracker} needs the {package} package, which is not "
                         f"installed: {EXTRA} (or pip install {package})")


def open_tracker(opts: TrackerOptions | None, sweep: str) -> TrackerOptions:
    """Resolve where the runs go (stored in sweep.json) and check that it can be used, before
    Ray starts: MLflow's experiment is found or created; W&B has credentials unless offline."""
    opts = opts or TrackerOptions()
    if opts.tracker == "mlflow":
        return _open_mlflow(opts, sweep)
    if opts.tracker == "wandb":
        return _open_wandb(opts)
    return opts


def _open_mlflow(opts: TrackerOptions, sweep: str) -> TrackerOptions:
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = opts.tracker_uri or mlflow.get_tracking_uri()  # honours $MLFLOW_TRACKING_URI
    if redact(uri) != uri:
        raise SweepError(f"$MLFLOW_TRACKING_URI={redact(uri)!r} must not hold credentials "
                         f"(it would be stored with the sweep): {_CREDENTIALS_FROM['mlflow']}")
    name = opts.tracker_project or sweep
    # A server that does not answer fails this check in seconds, not after MLflow's retries.
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
    saved = {k: os.environ.get(k) for k in quick}
    os.environ.update(quick)
    try:
        client = MlflowClient(tracking_uri=uri)
        found = client.get_experiment_by_name(name)
        if found is None:
            client.create_experiment(name)
        elif found.lifecycle_stage != "active":
            raise SweepError(f"--tracker-project {name!r}: the MLflow experiment is deleted at "
                             f"{redact(uri)}; restore it (mlflow experiments restore) or name "
                             "another")
    except SweepError:
        raise
    except Exception as exc:  # any store MLflow cannot open: one line, before Ray starts
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SweepError(f"--tracker-uri {redact(uri)!r}: MLflow cannot use this tracking "
                         f"store: {type(exc).__name__}: {first}") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return replace(opts, tracker_uri=uri, tracker_project=name)


def _open_wandb(opts: TrackerOptions) -> TrackerOptions:
    uri = opts.tracker_uri or os.environ.get("WANDB_BASE_URL")
    if uri and redact(uri) != uri:
        raise SweepError(f"$WANDB_BASE_URL={redact(uri)!r} must not hold credentials: "
                         f"{_CREDENTIALS_FROM['wandb']}")
    project = opts.tracker_project or os.environ.get("WANDB_PROJECT") or WANDB_PROJECT
    if opts.tracker_uri:  # W&B's own variable, for this process and (see build_tracker) Ray's
        os.environ["WANDB_BASE_URL"] = opts.tracker_uri
    # Ray's own credential check (WANDB_API_KEY, `wandb login`, Ray's key hook; nothing when
    # WANDB_MODE is offline or disabled), which its callback would otherwise make after Ray
    # started.
    from ray.air.integrations.wandb import _set_api_key

    try:
        _set_api_key()
    except ValueError:
        raise SweepError("--tracker wandb: no W&B API key (set WANDB_API_KEY or run `wandb "
                         "login`), or set WANDB_MODE=offline to log locally and `wandb sync` "
                         "later") from None
    return replace(opts, tracker_uri=uri, tracker_project=project)


def build_tracker(tracker: str | None, *, uri: str | None, project: str | None, sweep: str,
                  kind: str, base: dict, vocab: dict[str, int], results: str,
                  choice: dict | None = None):
    """The Ray Tune logger callback for `tracker` (None: no callback).

    uri / project: as `open_tracker` resolved them; sweep / kind: the sweep's name and kind
    (`grid`, `search`); base: the sweep's base RunSpec as a dict; vocab: the real vocabulary
    size of each prepared corpus by data id (so the driver resolves each trial's config as the
    trial does); results: the experiment's location (recorded on each run); choice: the
    sweep's precision and compile decision, pinned into each trial's config as the trial does."""
    if tracker is None:
        return None
    check_installed(tracker)
    from .tracker_callbacks import MLflowTracker, TrialContext, WandbTracker

    context = TrialContext(sweep=sweep, kind=kind, base=base, vocab=dict(vocab),
                           results=redact(results),
                           location=results if redact(results) == results else None,
                           choice=choice)
    if tracker == "mlflow":
        return MLflowTracker(tracking_uri=uri, experiment_name=project or sweep, context=context)
    return WandbTracker(project=project or WANDB_PROJECT, base_url=uri, context=context)
