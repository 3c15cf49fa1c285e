"""A real multi-node Ray cluster on this machine (two raylets, one filesystem; the hosts that
share nothing but a network are in test_hosts.py): trials forced onto the non-head node through
a custom resource, a local --storage refused on a cluster unless shared, each trial's node
recorded, and --resume after the driver is killed on a state."""

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


def _grid(address, corpus_dir, storage, name, *extra, wait=True, env=None):
    cmd = [sys.executable, "-m", "tune_ablations.grid", "--preset", "tiny", "--data",
           str(corpus_dir), "--set", "vocab_size=300", "text_samples=0", "--address", address,
           "--storage", str(storage), "--shared-storage", "--name", name, *extra]
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, env={**os.environ, **(env or {})})
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.mark.extended  # the hosts bed covers a driver kill resumed on another host
def test_grid_runs_on_the_worker_node_and_resumes(cluster, corpus_dir, tmp_path):
    """Trials forced onto the worker node; the driver killed when one trial has finished and
    another holds at a step that Ray's persisted snapshot names (a state, not a sleep);
    --resume finishes without rerunning the finished trial and continues the other there."""
    from tune_ablations.results.experiment import Experiment
    from tune_ablations.sweeps.tuner import snapshot_checkpoints

    c, worker = cluster
    exp, hold = tmp_path / "c", tmp_path / "hold"
    hold.mkdir()
    args = ("--ablations", "baseline", "high_lr", "--seeds", "1", "--trial-resource",
            "worker_node=1", "--gpus-per-trial", "0", "--set", "max_steps=600", "eval_every=100")
    proc = _grid(c.address, corpus_dir, tmp_path, "c", *args, wait=False,
                 env={"TUNE_ABLATIONS_TEST_HOLD": f"300:{hold}:high_lr"})

    def ready():
        held = [h.name.removeprefix("held-") for h in hold.glob("held-*")]
        return held and list(exp.glob("baseline-*/outcome.json")) and \
            snapshot_checkpoints(Experiment(exp), held[0])[-1:] == ["checkpoint_000002"]

    try:
        deadline = time.time() + 300
        while not ready():
            assert proc.poll() is None and time.time() < deadline, "no state to kill on"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        (hold / "release").write_text("")
    finished = {p: p.stat().st_mtime_ns for p in exp.glob("baseline-*/outcome.json")}
    out = subprocess.run([sys.executable, "-m", "tune_ablations.grid", "--address", c.address,
                          "--storage", str(tmp_path), "--name", "c", "--resume"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    df = pd.read_parquet(exp / "results.parquet")
    assert len(df) == 2 and set(df["status"].astype(str)) == {"completed"}
    for path, mtime in finished.items():  # the finished trial was not rerun
        assert path.stat().st_mtime_ns == mtime
    for path in df["path"]:
        run = json.loads((Path(path) / "run.json").read_text())
        assert run["node_id"] == worker.node_id  # the non-head node
        outcome = json.loads((Path(path) / "outcome.json").read_text())
        assert outcome["steps"] == 600
        assert outcome["resumed_from"] == ([300] if "high_lr" in path else [])


def test_local_storage_is_refused_on_a_cluster(cluster, corpus_dir, tmp_path):
    """On several nodes a local folder exists on the driver's node only: refused before any
    compute, with the fix named."""
    c, _ = cluster
    out = subprocess.run([sys.executable, "-m", "tune_ablations.grid", "--preset", "tiny",
                          "--data", str(corpus_dir), "--address", c.address, "--storage",
                          str(tmp_path), "--name", "local"], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 2
    assert "--storage is a local folder but the Ray cluster has 2 nodes" in out.stderr
    assert "s3://" in out.stderr and "--shared-storage" in out.stderr
    assert not list((tmp_path / "local").glob("*-s*"))  # no trial ran


def test_defaults_come_from_the_cluster(cluster, corpus_dir):
    """This machine has no GPU, the cluster has one: without --preset the plan takes the GPU
    defaults (preset seed, GPU shares packed on the cluster's GPU)."""
    c, _ = cluster
    code = ("import json, sys\n"
            "from tune_ablations import grid\n"
            "from tune_ablations.sweeps.cluster import available_gpus\n"
            "from tune_ablations.sweeps.grid_plan import build_plan\n"
            "from tune_ablations.sweeps.options import ResourceOptions\n"
            "from tune_ablations.training.resolved import Resolver\n"
            f"args = grid.parser().parse_args(['--address', '{c.address}', '--data', "
            f"'{corpus_dir}'])\n"
            "n_gpus = available_gpus(args.address)\n"
            "plan = build_plan(args, None, n_gpus, ResourceOptions(), Resolver(prepare=False))\n"
            "print(json.dumps({'preset': plan.base.preset, 'gpus': plan.gpus,"
            " 'n_gpus': n_gpus}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"preset": "seed", "gpus": round(1 / 8, 4), "n_gpus": 1}  # 12 trials on 1
