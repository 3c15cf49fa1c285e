"""The cost of comparing every arm at its own best lr: `grid` and `grid --tune-lr K` (the
default `cpu` preset on a CPU), run one after the other in this script, as a user runs them.

    python benchmarks/bench_tune_lr.py [--k 5] [--extra ARG ...]

Prints, for each command: wall seconds (start-up included), trials by status, tokens trained
(every trial's tokens_seen, early-stopped ones at the point they stopped), and the ratios
tune-lr / plain (target for tokens: <= 3). Then the chosen lrs and the conclusions that change.
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


def run(extra: list[str], storage: Path, name: str) -> dict:
    import pandas as pd

    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "tune_ablations.grid", "--storage", str(storage),
                          "--name", name, *extra], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    df = pd.read_parquet(storage / name / "results.parquet")
    answer = out.stdout[out.stdout.find("Answer"):out.stdout.find("results:")]
    return {"wall_s": round(wall, 1), "trials": len(df),
            "by_status": df["status"].astype(str).value_counts().to_dict(),
            "tokens": int(df["tokens_seen"].sum()), "answer": answer.strip()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--extra", nargs="*", default=[])
    args = ap.parse_args()
    print(json.dumps(machine()))
    with tempfile.TemporaryDirectory() as tmp:
        plain = run(args.extra, Path(tmp), "plain")
        print("plain:", json.dumps({k: v for k, v in plain.items() if k != "answer"}))
        print(plain["answer"])
        tuned = run([*args.extra, "--tune-lr", str(args.k)], Path(tmp), "tuned")
        print(f"tune-lr {args.k}:", json.dumps({k: v for k, v in tuned.items() if k != "answer"}))
        print(tuned["answer"])
    print(f"ratio tokens={tuned['tokens'] / plain['tokens']:.2f} (target <= 3) "
          f"wall={tuned['wall_s'] / plain['wall_s']:.2f}")


if __name__ == "__main__":
    main()
