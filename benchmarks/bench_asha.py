"""ASHA savings: the `lr.toml` search with and without ASHA at equal samples. Reports the best
val loss each found and the total tokens each trained.

    python benchmarks/bench_asha.py [--samples 16] [--preset cpu] [--sampler random]

With `--sampler random` (the default here) both runs draw the same learning rates, so the
comparison isolates the scheduler.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

SPACE = Path(__file__).resolve().parent.parent / "tune_ablations" / "search_spaces" / "lr.toml"


def run(scheduler: str, args, root: Path) -> dict:
    import pandas as pd

    from tune_ablations import search

    t0 = time.perf_counter()
    code = search.main(["--space", str(SPACE), "--preset", args.preset, "--num-samples",
                        str(args.samples), "--sampler", args.sampler, "--scheduler", scheduler,
                        "--seed", "0", "--storage", str(root), "--name", scheduler,
                        "--set", "text_samples=0"])
    assert code == 0, f"search exited {code}"
    df = pd.read_parquet(root / scheduler / "results.parquet")
    return {"best": float(df["val_loss"].min()), "tokens": int(df["tokens_seen"].sum()),
            "seconds": time.perf_counter() - t0,
            "statuses": df["status"].astype(str).value_counts().to_dict()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--preset", default="cpu")
    ap.add_argument("--sampler", default="random")
    args = ap.parse_args()
    print(f"machine {machine()}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        full = run("none", args, root)
        asha = run("asha", args, root)
    for name, r in (("none", full), ("asha", asha)):
        print(f"scheduler={name} samples={args.samples} best_val_loss={r['best']:.4f} "
              f"tokens_trained={r['tokens']} seconds={r['seconds']:.0f} statuses={r['statuses']}")
    print(f"asha_vs_full best_loss_gap={(asha['best'] - full['best']) / full['best']:+.2%} "
          f"token_fraction={asha['tokens'] / full['tokens']:.2f} "
          f"(target: gap <= 1%, fraction <= 0.40)")


if __name__ == "__main__":
    main()
