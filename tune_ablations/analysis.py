"""Results as pandas DataFrames, their statistics, plots and a report. Needs no Ray and no GPU.

`python -m tune_ablations.analysis <experiment> [--out DIR]` writes `report.md`, PNG plots and
the tables; in Python:

    from tune_ablations.analysis import load_results, summarize, compare_to_baseline
    df = load_results("results/grid-cpu-...")
    summarize(df)

The statistics live in `stats.py` (paired comparisons with Holm's correction, trial counts by
status, honest equal-token comparisons), the report in `report.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

from .results import load_history, load_outcomes, load_results, write_tables
from .stats import (
    at_tokens,
    compare_to_baseline,
    equal_budgets,
    fit_scaling,
    holm,
    lr_sensitivity,
    rung_agreement,
    summarize,
    t_interval,
)

__all__ = ["load_results", "load_history", "load_outcomes", "summarize", "compare_to_baseline",
           "at_tokens", "equal_budgets", "holm", "lr_sensitivity", "rung_agreement",
           "t_interval", "write_tables", "fit_scaling", "scaling_fit", "main"]


def smoke_experiment(root: Path) -> Path:
    """A real tiny experiment without Ray, in the results layout: baseline and high_lr x 2 seeds
    at the tiny preset on the embedded corpus (seconds on a CPU)."""
    from .config import OUTCOME_FILE, RUN_FILE, to_flat_dict
    from .resolve import resolve
    from .train import train

    exp = root / "smoke"
    for ablation in ("baseline", "high_lr"):
        for seed in (0, 1):
            cfg = resolve({"preset": "tiny", "ablation": ablation, "seed": seed,
                           "text_samples": 0})
            trial = exp / f"{ablation}_seed{seed}"
            trial.mkdir(parents=True, exist_ok=True)
            tid = trial.name
            lines: list[str] = []
            def report(m, save, lines=lines, tid=tid, trial=trial):
                lines.append(json.dumps(m | {"trial_id": tid}))
                save(trial / f"checkpoint_{len(lines):06d}")  # Ray's checkpoint layout

            result = train(cfg, report=report)
            (trial / RUN_FILE).write_text(json.dumps({
                "trial_id": tid, "ablation": ablation, "seed": seed,
                "config": to_flat_dict(cfg), "data": result["data"]}, default=str))
            (trial / "result.json").write_text("\n".join(lines) + "\n")
            (trial / OUTCOME_FILE).write_text(json.dumps(result | {"trial_id": tid},
                                                         default=str))
    return exp


def parser():
    from .cli import build_parser

    ap = build_parser("analysis", "Report, plots and tables (CSV/Parquet) of an experiment.")
    ap.add_argument("path", nargs="?", help="experiment folder (results/<name>)")
    ap.add_argument("--out", help="report folder (default: <experiment>/report)")
    ap.add_argument("--no-plots", action="store_true", help="tables and report.md only")
    ap.add_argument("--smoke-test", action="store_true",
                    help="a tiny real experiment without Ray, then its report")
    ap.add_argument("--fit", action="store_true", help="fit L(C) = E + A*C^-alpha over the "
                    "completed runs (several sizes), with bootstrap intervals; writes fit.json")
    return ap


def scaling_fit(path: Path, out: Path) -> dict:
    """The compute scaling fit of an experiment's completed runs, into out/fit.json."""
    df = load_results(path)
    done = df[df["status"].astype(str) == "completed"] if len(df) else df
    compute = (done["flops_per_token"].astype(float) * done["tokens_seen"].astype(float)
               ).to_numpy() if len(done) else []
    fit = fit_scaling(compute, done["val_loss"].astype(float).to_numpy() if len(done) else [])
    out.mkdir(parents=True, exist_ok=True)
    (out / "fit.json").write_text(json.dumps(fit, indent=2))
    return fit


def main(argv: list[str] | None = None) -> int:
    """`python -m tune_ablations.analysis <experiment> [--out DIR]`: report, plots, tables."""
    import tempfile

    from .cli import fail
    from .report import write_report
    from .storage import download, is_uri

    args = parser().parse_args(argv)
    if args.smoke_test and not args.path:
        args.path = str(smoke_experiment(Path(tempfile.mkdtemp(prefix="ta-smoke-"))))
    if not args.path:
        return fail("the experiment folder is required (or --smoke-test)")
    if is_uri(args.path):  # s3://, gs://, file://: read through a local mirror
        try:
            args.path = str(download(args.path))
        except (ValueError, OSError) as exc:
            return fail(exc)
    path = Path(args.path).expanduser()
    if not path.is_dir():
        return fail(f"experiment folder {str(path)!r} does not exist")
    out = Path(args.out).expanduser() if args.out else path / "report"
    if out.exists() and not out.is_dir():
        return fail(f"--out {str(out)!r} is a file; give a folder for the report")
    if args.fit:
        try:
            fit = scaling_fit(path, out)
        except ValueError as exc:
            return fail(exc)
        print(f"event=fit alpha={fit['alpha']:.3f} alpha_ci95={fit['alpha_ci95'][0]:.3f}.."
              f"{fit['alpha_ci95'][1]:.3f} E={fit['E']:.3f} predicted_loss_at_"
              f"{fit['extrapolate']:g}x={fit['predicted_loss']:.3f} ci95="
              f"{fit['predicted_loss_ci95'][0]:.3f}..{fit['predicted_loss_ci95'][1]:.3f} "
              f"runs={fit['n']}" + (" warning=E_at_its_bound_0_(too_little_compute_range"
                                     "_to_separate_E)" if fit["E_at_bound"] else ""))
    tables = write_tables(path, out)
    report = write_report(path, out, plots=not args.no_plots)
    print(f"event=report path={report} tables={','.join(sorted(tables))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
