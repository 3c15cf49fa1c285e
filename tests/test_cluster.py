"""A real multi-node Ray cluster on this machine: trials forced onto the non-head node through a
custom resource, the results folder complete (files reach it through Ray's persistence, not
the trial node's disk), each trial's node recorded, and --resume after the driver is killed."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    # A Ray already running in this test process (the session's local one) keeps a new
    # cluster's job agent from registering; the remaining tests do not need it.
    ray.shutdown()

    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "gcs_server_port": free_port(), "include_dashboard": False})
    # The worker's GPU is logical (no CUDA needed): enough for Ray's scheduling and defaults.
    worker = c.add_node(num_cpus=2, num_gpus=1, resources={"worker_node": 2})
    c.wait_for_nodes()
    yield c, worker
    c.shutdown()


def _grid(address, corpus_dir, storage, name, *extra, wait=True):
    cmd = [sys.executable, "-m", "tune_ablations.grid", "--preset", "tiny", "--data",
           str(corpus_dir), "--set", "vocab_size=300", "text_samples=0", "--address", address,
           "--storage", str(storage), "--name", name, *extra]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def test_grid_runs_on_the_worker_node_and_resumes(cluster, corpus_dir, tmp_path):
    c, worker = cluster
    exp = tmp_path / "c"
    args = ("--ablations", "baseline", "high_lr", "small_model", "--trial-resource",
            "worker_node=1", "--gpus-per-trial", "0", "--keep-checkpoints", "6", "--set",
            "max_steps=1500", "eval_every=100")
    # Tiny trials checkpoint several times a second; keeping a few more than the default
    # keeps the checkpoint that Ray's last experiment snapshot (every second) names.
    proc = _grid(c.address, corpus_dir, tmp_path, "c", *args, wait=False)
    deadline = time.time() + 300
    try:  # kill the driver once one trial has finished and another is part-way
        while time.time() < deadline:
            done = list(exp.glob("*/outcome.json"))
            if done and len(list(exp.glob("*/checkpoint_*"))) > len(done) * 2:
                break
            assert proc.poll() is None, "the driver ended before it could be killed"
            time.sleep(0.2)
        time.sleep(2.5)  # Ray snapshots the experiment state every second
        killed_at = time.time()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # Finished in Ray's own state: the final report reached the driver well before the kill.
    finished = {p.parent: p.stat().st_mtime for p in exp.glob("*/outcome.json")
                if p.stat().st_mtime < killed_at - 2.0
                and '"completed"' in (p.parent / "result.json").read_text()}
    assert finished
    out = subprocess.run([sys.executable, "-m", "tune_ablations.grid", "--address", c.address,
                          "--storage", str(tmp_path), "--name", "c", "--resume"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    df = pd.read_parquet(exp / "results.parquet")
    assert len(df) == 3 and set(df["status"].astype(str)) == {"completed"}
    for t, mtime in finished.items():  # finished trials were not rerun
        assert (t / "outcome.json").stat().st_mtime == mtime
    resumed = []
    for path in df["path"]:
        run = json.loads((Path(path) / "run.json").read_text())
        assert run["node_id"] == worker.node_id  # the non-head node
        outcome = json.loads((Path(path) / "outcome.json").read_text())
        assert outcome["steps"] == 1500
        resumed += outcome["resumed_from"]
        assert list(Path(path).glob("checkpoint_*"))
    assert resumed  # at least one trial continued from its checkpoint



def test_defaults_come_from_the_cluster(cluster, corpus_dir):
    """This machine has no GPU, the cluster has one: without --preset the plan takes the GPU
    defaults (preset seed, GPU shares packed on the cluster's GPU)."""
    c, _ = cluster
    code = ("import json, sys\n"
            "from tune_ablations import grid\n"
            "from tune_ablations.sweep import available_gpus, check_sweep_args\n"
            f"args = grid.parser().parse_args(['--address', '{c.address}', '--data', "
            f"'{corpus_dir}'])\n"
            "check_sweep_args(args)\n"
            "args.n_gpus = available_gpus(args.address)\n"
            "plan = grid.build_plan(args, None)\n"
            "print(json.dumps({'preset': plan.record['shared']['preset'], 'gpus': plan.gpus,"
            " 'n_gpus': args.n_gpus}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"preset": "seed", "gpus": round(1 / 6, 4), "n_gpus": 1}
