"""The default command, timed as a user runs it: `python -m tune_ablations.grid` on the embedded
corpus (the `cpu` preset on a CPU), start-up and data preparation included.

    python benchmarks/bench_default.py [--cold] [--runs 1] [--before PATH]

`--cold` starts from an empty token cache (a fresh machine: the tokenizer is trained first).
`--before PATH` also times the same command from another checkout (e.g. a `git worktree` of
earlier code), alternating with this one, run by run.
Prints wall seconds, the trials it ran, the looks the seeds procedure took, its verdicts and
why it stopped, and the precision the probe chose (bf16 only on CPUs with native bf16 units).
Target: at most 360 s on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402


def run_once(cold: bool, root: Path = ROOT) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONPATH": str(root)}
        if cold:
            env["TUNE_ABLATIONS_CACHE"] = str(Path(tmp) / "cache")
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "tune_ablations.grid", "--storage",
                              str(Path(tmp) / "results")], cwd=root, env=env,
                             capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            raise SystemExit(out.stderr[-3000:])
        exp = next((Path(tmp) / "results").iterdir())
        decisions = json.loads((exp / "decisions.json").read_text())
        precision = sorted({line.split("choice=", 1)[-1].split("precision_reason=", 1)[-1]
                            for line in out.stderr.splitlines()
                            if line.startswith(("event=precision", "event=runtime precision"))})
        answer = out.stdout.split("Answer", 1)[-1].strip().splitlines()[1:]
    return {"wall_s": round(wall, 1), "trials": decisions["trials"],
            "looks": decisions["looks"], "verdicts": decisions["verdicts"],
            "stopped_because": decisions["stopped_because"] or "every arm decided",
            "precision": precision, "answer": answer}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cold", action="store_true", help="an empty token cache")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--before", type=Path, help="also time this checkout, alternating")
    args = ap.parse_args()
    print(f"machine {machine()} load={os.getloadavg()[0]:.1f}")
    roots = [("now", ROOT)] + ([("before", args.before)] if args.before else [])
    for i in range(args.runs):
        for label, root in roots:
            r = run_once(args.cold, root)
            print(f"code={label} run={i} cold={args.cold} wall_s={r['wall_s']} target_s=360 "
                  f"trials={r['trials']} looks={r['looks']} stopped={r['stopped_because']!r}")
            print(f"  verdicts={json.dumps(r['verdicts'])} precision={r['precision']}")
            for line in r["answer"]:
                print(f"  {line.strip()}")


if __name__ == "__main__":
    main()
