"""`python -m tune_ablations.analysis <experiment> [--out DIR]`: the report (opening with the
answer), plots and tables of any experiment, a local folder or a URI. Needs no Ray.

In Python, `tune_ablations.load_experiment("results/grid-cpu-...")` (or a URI) gives the same
experiment with its results and answer as DataFrames.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from .cli import build_parser
from .spec.io import fail, say
from .spec.names import FIT_FILE


def parser() -> argparse.ArgumentParser:
    ap = build_parser("analysis", "Report, plots and tables (CSV/Parquet) of an experiment.")
    ap.add_argument("path", nargs="?", help="experiment: a folder or a URI (s3://..., "
                    "file://...)")
    ap.add_argument("--out", help="report folder (default: <experiment>/report; for a URI "
                    "also a local copy in ./<name>-report)")
    ap.add_argument("--no-plots", action="store_true", help="tables and report.md only")
    ap.add_argument("--smoke-test", action="store_true",
                    help="a tiny real experiment without Ray, then its report")
    ap.add_argument("--fit", action="store_true", help="fit a scaling law over the completed "
                    "runs (see the report's scaling section); writes fit.json")
    return ap


def _out_folder(exp, out: str | None) -> Path:
    if out:
        return Path(out).expanduser()
    from .spec.names import REPORT_DIR

    if exp.local_dir is not None:
        return Path(exp.path(REPORT_DIR))
    return Path.cwd() / f"{exp.name}-report"


def main(argv: list[str] | None = None) -> int:
    from .results.experiment import Experiment, ExperimentError
    from .results.frames import load, write_tables
    from .results.report import write_report
    from .spec.names import REPORT_DIR
    from .sweeps.smoke import smoke_experiment

    args = parser().parse_args(argv)
    if args.smoke_test and not args.path:
        args.path = str(smoke_experiment(Path(tempfile.mkdtemp(prefix="ta-smoke-"))))
    if not args.path:
        return fail("the experiment (a folder or a URI) is required (or --smoke-test)")
    try:
        exp = Experiment(args.path)
        res = load(exp)
    except (FileNotFoundError, ExperimentError) as exc:
        return fail(f"experiment {args.path!r} does not exist ({exc})"
                    if isinstance(exc, FileNotFoundError) else exc)
    out = _out_folder(exp, args.out)
    if out.exists() and not out.is_dir():
        return fail(f"--out {str(out)!r} is a file; give a folder for the report")
    if args.fit:
        code = _fit(res, out)
        if code:
            return code
    report = write_report(res, exp, out, plots=not args.no_plots)
    local = Experiment(out)
    tables = write_tables(res, local)
    if exp.remote and not args.out:
        exp.upload_dir(out, REPORT_DIR)
        say(f"event=report path={exp.where(REPORT_DIR, 'report.md')} local={report}")
    else:
        say(f"event=report path={report} tables={','.join(sorted(tables))}")
    return 0


def _fit(res, out: Path) -> int:
    from .results.scaling import fit_experiment

    try:
        fit = fit_experiment(res)
    except ValueError as exc:
        return fail(exc)
    out.mkdir(parents=True, exist_ok=True)
    (out / FIT_FILE).write_text(json.dumps(fit, indent=2))
    say(f"event=fit {fit['summary']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
