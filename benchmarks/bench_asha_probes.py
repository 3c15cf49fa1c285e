"""Schedule-aware early stopping: does ranking trials at each ASHA rung by a cooldown probe's
decayed loss keep the true best trial more often than plain ASHA (mid-schedule loss)?

    python benchmarks/bench_asha_probes.py [--seeds 3] [--samples 8] [--preset tiny]

For each sampler seed, the same random draws of `lr` (wsd schedule) are trained three ways: to
the end without early stopping (the truth: the best final loss), with plain ASHA and with
probe-ranked ASHA. Prints, per seed and in total, whether each ASHA variant let the true best
trial finish, and the tokens each trained (probe cooldowns counted).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402


def search(tmp: str, name: str, seed: int, samples: int, preset: str, mode: str) -> pd.DataFrame:
    extra = {"none": ["--scheduler", "none"], "plain": ["--asha-probes", "off"],
             "probes": ["--asha-probes", "on"]}[mode]
    cmd = [sys.executable, "-m", "tune_ablations.search", "--space", "lr", "--preset", preset,
           "--set", "schedule=wsd", "text_samples=0", "max_steps=240", "--sampler", "random",
           "--sampler-seed", str(seed), "--num-samples", str(samples), "--max-concurrent", "2",
           "--storage", tmp, "--name", name, *extra]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    df = pd.read_parquet(Path(tmp, name, "results.parquet"))
    probe = [json.loads(p.read_text()).get("probe_tokens_trained", 0)
             for p in Path(tmp, name).glob("*/outcome.json")]
    df.attrs["tokens"] = int(df["tokens_seen"].sum()) + sum(probe)
    return df


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--preset", default="tiny")
    args = ap.parse_args()
    print(f"machine {machine()}")
    kept = {"plain": 0, "probes": 0}
    tokens = {"none": 0, "plain": 0, "probes": 0}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.seeds):
            runs = {m: search(tmp, f"{m}{seed}", seed, args.samples, args.preset, m)
                    for m in ("none", "plain", "probes")}
            truth = runs["none"].sort_values("val_loss").iloc[0]["lr"]
            line = [f"seed={seed} true_best_lr={truth:.3g}"]
            for m, df in runs.items():
                tokens[m] += df.attrs["tokens"]
                if m == "none":
                    continue
                done = df[df["status"].astype(str) == "completed"]
                ok = bool((done["lr"] - truth).abs().min() < 1e-12) if len(done) else False
                kept[m] += ok
                line.append(f"{m}_kept_best={ok} {m}_completed={len(done)}")
            print(" ".join(line), flush=True)
    for m in ("plain", "probes"):
        print(f"asha={m} kept_true_best={kept[m]}/{args.seeds} "
              f"tokens_vs_no_asha={tokens[m] / tokens['none']:.2f}")


if __name__ == "__main__":
    main()
