"""Does the small answer survive scale, on this machine? The reference question on a compute
ladder (`grid --ladder`), its top rung used only as the held-out truth: how many of the
smaller rungs' verdicts and pairwise orderings the largest rung confirms (decision accuracy,
with a bootstrap over seeds), with the wall time of every rung.

    flock /work/coord/cpu.lock python benchmarks/bench_ladder.py [--ladder 1,2.5,6,10]
        [--arms activation]     # a shipped question (tune_ablations/questions/) instead

Defaults are sized for about 15 minutes on 2 cores: a base of d_model 64, 2 layers, 40 steps
(the cpu preset's batch and context), four arms of the reference question, three seeds.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

ARMS = ["baseline", "high_lr", "low_lr", "short_seq"]
BASE = ["d_model=64", "n_heads=4", "d_ff=256", "n_layers=2", "warmup_steps=4", "eval_every=10"]


def pairwise(small: dict, truth: dict, rng, draws: int = 2000) -> dict:
    """Share of arm pairs (baseline at 0) the small rung orders as the truth does, and its
    95% bootstrap interval (each rung's seeds resampled)."""
    arms = [a for a in small if a in truth]

    def means(r, pick=None):
        out = {"baseline": 0.0}
        for a in arms:
            v = np.array(list(r[a].values()))
            out[a] = float((v if pick is None else v[pick(len(v))]).mean())
        return out

    def accuracy(ms, mt):
        pairs = list(itertools.combinations(["baseline", *arms], 2))
        return float(np.mean([np.sign(ms[a] - ms[b]) == np.sign(mt[a] - mt[b])
                              for a, b in pairs])), len(pairs)

    point, n = accuracy(means(small), means(truth))
    boot = [accuracy(means(small, lambda k: rng.integers(0, k, k)),
                     means(truth, lambda k: rng.integers(0, k, k)))[0] for _ in range(draws)]
    return {"accuracy": point, "pairs": n, "ci": [float(np.quantile(boot, 0.025)),
                                                  float(np.quantile(boot, 0.975))]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ladder", default="1,2.5,6,10")
    ap.add_argument("--seeds", default="3")
    ap.add_argument("--keep", help="keep the results in this folder")
    ap.add_argument("--arms", help="a question file or shipped question instead of the "
                    f"reference's {' '.join(ARMS)}")
    args = ap.parse_args()
    from tune_ablations.results.ladder import ladder_lines, load_ladder

    storage = args.keep or tempfile.mkdtemp(prefix="bench-ladder-")
    arms = ["--arms", args.arms] if args.arms else ["--ablations", *ARMS]
    cmd = [sys.executable, "-m", "tune_ablations.grid", "--ladder", args.ladder, "--seeds",
           args.seeds, *arms, "--set", *BASE, "--max-steps", "40",
           "--storage", storage, "--name", "ladder"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    rung_s = [float(s) for s in re.findall(r"event=sweep_done trials=\d+ seconds=([\d.]+)",
                                           out.stderr)]
    rungs = load_ladder(Path(storage) / "ladder")
    truth, small = rungs[-1], rungs[:-1]
    rng = np.random.default_rng(0)
    verdict = {a.arm: a.verdict for a in truth.answer.arms}
    result = {"machine": machine(), "command": " ".join(cmd[1:]), "wall_s": round(wall, 1),
              "rung_sweep_s": rung_s, "truth_rung": truth.index, "rungs": []}
    for r in small:
        confirmed = sum(a.verdict == verdict.get(a.arm) for a in r.answer.arms)
        decided = [a for a in r.answer.arms if a.verdict in ("better", "worse")]
        result["rungs"].append({
            "rung": r.index, "d_model": r.sets["d_model"], "n_layers": r.sets["n_layers"],
            "params": r.params, "compute": r.compute,
            "compute_vs_truth": r.compute / truth.compute,
            "verdicts": {a.arm: a.verdict for a in r.answer.arms},
            "verdicts_confirmed": f"{confirmed}/{len(r.answer.arms)}",
            "decided_confirmed": f"{sum(verdict.get(a.arm) == a.verdict for a in decided)}/"
                                 f"{len(decided)}",
            "pairwise": pairwise(r.diffs, truth.diffs, rng)})
    result["truth"] = {"d_model": truth.sets["d_model"], "n_layers": truth.sets["n_layers"],
                       "params": truth.params, "compute": truth.compute, "verdicts": verdict}
    print(json.dumps(result, indent=1))
    print("\n".join(ladder_lines(rungs)))


if __name__ == "__main__":
    main()
