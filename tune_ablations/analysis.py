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
    holm,
    lr_sensitivity,
    rung_agreement,
    summarize,
    t_interval,
)

__all__ = ["load_results", "load_history", "load_outcomes", "summarize", "compare_to_baseline",
           "at_tokens", "equal_budgets", "holm", "lr_sensitivity", "rung_agreement",
           "t_interval", "write_tables", "main"]


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
            result = train(cfg, report=lambda m, save, lines=lines, tid=tid: lines.append(
                json.dumps(m | {"trial_id": tid})))
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
    return ap


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
    tables = write_tables(path, out)
    report = write_report(path, out, plots=not args.no_plots)
    print(f"event=report path={report} tables={','.join(sorted(tables))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
