"""`python -m tune_ablations.analysis <experiment> [--out DIR]`: the report (opening with the
answer), plots and tables of any experiment, a local folder or a URI. Needs no Ray.

In Python, the same numbers come from the results layer:

    from tune_ablations.results.frames import load_results
    from tune_ablations.results.stats import summarize
    df = load_results("results/grid-cpu-...")        # or "s3://bucket/sweeps/grid-cpu-..."
    summarize(df)
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from .cli import build_parser
from .spec.io import fail, say


def smoke_experiment(root: Path, overrides: dict | None = None, data: str | None = None
                     ) -> Path:
    """A real tiny experiment without Ray, in the results layout: baseline and high_lr x 2 seeds
    at the tiny preset on the embedded corpus (or `data`; seconds on a CPU), with `overrides`
    shared."""
    from dataclasses import replace

    from .results.experiment import Experiment
    from .spec.names import OUTCOME_FILE, RAY_RESULT_FILE, SWEEP_FILE, TOKENIZER_DIR
    from .spec.resolve import resolve
    from .spec.runspec import RunSpec
    from .sweeps.trainable import run_metadata
    from .training.data import prepare_data
    from .training.trainer import train

    exp = Experiment(root / "smoke")
    base = RunSpec(preset="tiny", overrides={"text_samples": 0, **(overrides or {})},
                   **({"data": data} if data else {}))
    data = prepare_data(resolve(base).data, log=lambda s: None)
    for ablation in ("baseline", "high_lr"):
        for seed in (0, 1):
            spec = replace(base, ablation=ablation, seed=seed)
            cfg = resolve(spec, vocab_size=data.vocab_size)
            trial = f"{spec.label}-smoke"
            lines: list[str] = []

            def report(m, save, lines=lines, trial=trial):
                lines.append(json.dumps(m | {"trial_id": trial}))
                save(Path(exp.path(trial, f"checkpoint_{len(lines):06d}")))

            result = train(cfg, report=report, data=data)
            exp.write_json(run_metadata(spec, cfg, data, trial_id=trial), trial, "run.json")
            exp.write_bytes("\n".join(lines) + "\n", trial, RAY_RESULT_FILE)
            exp.write_json(result | {"trial_id": trial}, trial, OUTCOME_FILE)
    exp.write_bytes(data.tokenizer_json, TOKENIZER_DIR, data.key, "tokenizer.json")
    exp.write_json({"kind": "grid", "name": exp.name, "spec": base.to_dict(),
                    "grid": {"ablations": ["baseline", "high_lr"], "seeds": 2},
                    "planned_trials": 4, "created": "2000-01-01T00:00:00"}, SWEEP_FILE)
    return Path(exp.root)


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
    (out / "fit.json").write_text(json.dumps(fit, indent=2))
    say(f"event=fit {fit['summary']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
