"""Does the best learning rate transfer across a ladder? The baseline on a compute ladder with
`--tune-lr` (each rung's own lr grid and choice), once per parametrization: standard, muP and
CompleteP. A parametrization that transfers keeps the chosen lr where rung 0 put it (fitted
exponent of lr in width near 0); the standard one is expected to drift down as the model grows.

    flock /work/coord/cpu.lock python benchmarks/bench_transfer.py [--ladder 1,2.5,6]
        [--parametrizations standard mup completep] [--tune-lr 5] [--seeds 2]

Defaults (about 2-3 minutes per parametrization on 2 cores): the base of `bench_ladder.py`
(d_model 64, 2 layers, 40 steps at rung 0, the `cpu` preset's batch and context), which the
ladder widens and deepens together (64 x 2 -> 80 x 3 -> 112 x 4).
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

from bench_ladder import BASE  # noqa: E402
from common import machine  # noqa: E402


def run(parametrization: str, args, storage: str) -> dict:
    name = f"transfer-{parametrization}"
    cmd = [sys.executable, "-m", "tune_ablations.grid", "--ladder", args.ladder, "--tune-lr",
           str(args.tune_lr), "--seeds", args.seeds, "--ablations", "baseline", "--set", *BASE,
           f"parametrization={parametrization}", "--max-steps", "40", "--storage", storage,
           "--name", name]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    from tune_ablations.results.ladder import load_ladder, lr_width_lines

    rungs = load_ladder(Path(storage) / name)
    return {"parametrization": parametrization, "wall_s": round(wall, 1),
            "command": " ".join(cmd[1:]),
            "rungs": [{"rung": r.index, "d_model": r.sets["d_model"],
                       "n_layers": r.sets["n_layers"], "chosen_lr": r.chosen_lr.get("baseline"),
                       "baseline_val_loss": r.answer.baseline_loss if r.answer else None}
                      for r in rungs],
            "lines": lr_width_lines(rungs)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ladder", default="1,2.5,6")
    ap.add_argument("--parametrizations", nargs="+", default=["standard", "mup", "completep"])
    ap.add_argument("--tune-lr", type=int, default=5)
    ap.add_argument("--seeds", default="2")
    ap.add_argument("--keep", help="keep the results in this folder")
    args = ap.parse_args()
    storage = args.keep or tempfile.mkdtemp(prefix="bench-transfer-")
    print(json.dumps({"machine": machine()}))
    for p in args.parametrizations:
        result = run(p, args, storage)
        lines = result.pop("lines")
        print(json.dumps(result, indent=1))
        print("\n".join(lines))


if __name__ == "__main__":
    main()
