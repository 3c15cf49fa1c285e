"""The shipped questions, answered as a user asks them: `python -m tune_ablations.grid --arms
NAME` with the default procedure (the `cpu` preset on a CPU: equal tokens, `--seeds auto`, the
300 s time budget), start-up and data preparation included.

    python benchmarks/bench_questions.py [positional ffn schedule] [--tune-lr 5]

Prints, per question, the wall seconds, the trials it ran, the looks the seeds procedure took,
why it stopped, and the answer: the grid's own lines, then its `--json` records' key fields.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402


def run_once(question: str, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "tune_ablations.grid", "--arms", question,
                              "--storage", str(Path(tmp) / "results"), "--name", question,
                              "--json", *extra], cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            raise SystemExit(out.stderr[-3000:])
        from tune_ablations import load_experiment
        from tune_ablations.results.verdicts import answer_text, experiment_answer

        sweep = load_experiment(Path(tmp) / "results" / question)
        decisions = json.loads((sweep.experiment.local_dir / "decisions.json").read_text())
        ans, _ = experiment_answer(sweep.experiment, sweep._load())
        lines = answer_text(ans, decisions, sweep._load())
        records = [json.loads(line) for line in out.stdout.splitlines()]
    return {"wall_s": round(wall, 1), "trials": decisions["trials"], "looks": decisions["looks"],
            "stopped_because": decisions["stopped_because"] or "every arm decided",
            "lines": lines, "records": records}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("questions", nargs="*", default=["positional", "ffn", "schedule"])
    ap.add_argument("--preset", help="another preset (default: the machine's, cpu here)")
    ap.add_argument("--tune-lr", type=int, help="every arm at its own best lr (grid --tune-lr)")
    args = ap.parse_args()
    print(f"machine {machine()}")
    extra = (["--preset", args.preset] if args.preset else []) + (
        ["--tune-lr", str(args.tune_lr)] if args.tune_lr else [])
    for q in args.questions:
        r = run_once(q, extra)
        print(f"question={q} wall_s={r['wall_s']} trials={r['trials']} looks={r['looks']} "
              f"stopped={r['stopped_because']!r}")
        for line in r["lines"]:
            if line.strip():
                print(f"  {line.strip()}")
        for rec in r["records"]:
            print("  json " + json.dumps({k: rec[k] for k in (
                "arm", "verdict", "n", "diff", "ci_low", "ci_high", "p_adj", "confounds")}))


if __name__ == "__main__":
    main()
