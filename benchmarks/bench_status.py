"""Bytes one `status` poll reads from a sweep on S3 (a moto server started here on 127.0.0.1).

    python benchmarks/bench_status.py [--seeds 3]

Runs the six-arm grid at the tiny preset with `--seeds 3` (18 trials) twice, with small and with
larger checkpoints, then counts the bytes `status` reads per poll: for the finished sweep (its
results table), and through every trial's own files (what a poll of a running sweep reads).
For comparison, what mirroring the experiment with each trial's latest checkpoint (the previous
design) would download. Target: under 1 MB per poll, independent of checkpoint size.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

SIZES = {"small checkpoints (tiny preset)": [],
         "larger checkpoints (d_model 192, 3 layers)": ["d_model=192", "n_heads=6",
                                                        "n_layers=3", "d_ff=768"]}


def _server() -> dict[str, str]:
    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False).start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                 aws_access_key_id="bench", aws_secret_access_key="bench"
                 ).create_bucket(Bucket="bench")
    os.environ.update(env)
    return env


def measure(name: str, seeds: int, extra: list[str]) -> dict:
    from tune_ablations.results.experiment import Experiment
    from tune_ablations.results.frames import load
    from tune_ablations.results.progress import sweep_status

    uri = f"s3://bench/status/{name}"
    with tempfile.TemporaryDirectory() as tmp:
        flags = [e for e in extra if e.startswith("--")]
        sets = [e for e in extra if not e.startswith("--")]
        out = subprocess.run([sys.executable, "-m", "tune_ablations.grid", "--preset", "tiny",
                              "--seeds", str(seeds), *flags, "--set", "text_samples=0", *sets,
                              "--storage", "s3://bench/status", "--name", name],
                             cwd=tmp, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    exp = Experiment(uri)
    trials = exp.trials()
    latest = sum(len(exp.read_bytes(t, c, "checkpoint.pt")) for t in trials
                 for c in exp.checkpoints(t)[-1:])
    files = sum(len(exp.read_bytes(t, n)) for t in trials for n, d in exp.listdir(t)
                if not d)
    finished = Experiment(uri)
    sweep_status(finished)
    running = Experiment(uri)
    load(running)
    return {"trials": len(trials), "finished_poll": finished.bytes_read,
            "running_poll": running.bytes_read, "latest_checkpoints": latest,
            "old_mirror": latest + files}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    print(f"machine {machine()}")
    _server()
    for i, (label, extra) in enumerate(SIZES.items()):
        r = measure(f"s{i}", args.seeds, extra)
        print(f"{label}: trials={r['trials']} "
              f"status_poll_finished_kb={r['finished_poll'] / 1e3:.1f} "
              f"status_poll_per_trial_files_kb={r['running_poll'] / 1e3:.1f} "
              f"(target < 1000) latest_checkpoints_kb={r['latest_checkpoints'] / 1e3:.0f} "
              f"old_mirror_per_poll_kb={r['old_mirror'] / 1e3:.0f}")


if __name__ == "__main__":
    main()
