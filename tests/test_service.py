"""Sweeps as a service: a local Ray head with its dashboard (and job server) on 127.0.0.1; a
smoke grid submitted as a Ray Job, followed with `status` to the end, its results read; a longer
one stopped mid-way and resumed."""

import json
import shutil
import subprocess
import sys
import tempfile
import time

import pandas as pd
import pytest
from conftest import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3(s3_server):
    """The S3 server's credentials in this process's environment before the cluster starts,
    so the cluster's job drivers and workers inherit them."""
    import os

    old = {k: os.environ.get(k) for k in s3_server}
    os.environ.update(s3_server)
    yield s3_server
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="module")
def head(s3):
    """A two-node cluster: a head with its dashboard and job server on 127.0.0.1, and a worker
    node with a custom resource."""
    pytest.importorskip("ray.dashboard")
    import ray
    from ray.cluster_utils import Cluster

    # A Ray already running in this test process (the session's local one) keeps a new
    # cluster's job agent from registering; the remaining tests do not need it.
    ray.shutdown()

    # Ray's job server gives each job's driver the cluster's address (RAY_ADDRESS) from the
    # "current cluster" file in the node's temp folder, which every Ray cluster started on this
    # machine with the default folder (/tmp/ray) overwrites, and deletes at its shutdown: with
    # another Ray test running beside this one, a driver joined that other cluster and was
    # refused ("InvalidAuthToken ... Failed to connect to Ray cluster"). This cluster keeps its
    # own folder, and its own address in it.
    temp_dir = tempfile.mkdtemp(prefix="ray-svc-", dir="/tmp")  # short: Ray's socket paths
    port = free_port()
    # Each node's dashboard agent gets its own port: both nodes share this machine's address,
    # and with Ray's default (52365) the second agent fails to bind, leaving the head without
    # the job agent that every submission needs ("No available agent to submit job").
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "temp_dir": temp_dir, "gcs_server_port": free_port(),
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": port,
        "dashboard_agent_listen_port": free_port()})
    worker = c.add_node(num_cpus=2, resources={"worker_node": 2},
                        dashboard_agent_listen_port=free_port())
    c.wait_for_nodes()
    ray._private.utils.write_ray_address(c.head_node.gcs_address, temp_dir)
    address = f"http://127.0.0.1:{port}"
    from ray.job_submission import JobSubmissionClient

    deadline = time.time() + 60
    while True:  # the job server comes up a little after the head
        try:
            JobSubmissionClient(address).list_jobs()
            break
        except Exception:
            assert time.time() < deadline, "the job server did not start"
            time.sleep(1)
    yield address, worker.node_id
    c.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_submit_follow_and_read(head, corpus_dir, tmp_path):
    head, _ = head
    out = _cli("tune_ablations.submit", "grid", "--job-address", head, "--python",
               sys.executable, "--smoke-test", "--data", str(corpus_dir), "--set",
               "vocab_size=300", "--trial-resource", "worker_node=1", "--storage",
               str(tmp_path), "--shared-storage", "--name", "svc")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "event=submitted job=" in out.stdout and "experiment=svc" in out.stdout
    watch = _cli("tune_ablations.status", "svc", "--storage", str(tmp_path), "--json",
                 "--watch", "--interval", "1")
    assert watch.returncode == 0, watch.stderr[-2000:]
    updates = [json.loads(line) for line in watch.stdout.splitlines() if line.startswith("{")]
    last = updates[-1]
    assert last["finished"] and last["statuses"] == {"completed": 4}
    assert last["job"] in ("SUCCEEDED", "RUNNING")  # the driver may still be exiting
    assert last["tokens_done"] == last["tokens_planned"] and last["best"]["val_loss"] > 0
    df = pd.read_parquet(tmp_path / "svc" / "results.parquet")
    assert len(df) == 4 and set(df["status"].astype(str)) == {"completed"}


def test_bad_input_is_refused_before_submitting(head, tmp_path):
    head, _ = head
    out = _cli("tune_ablations.submit", "grid", "--job-address", head, "--set", "lr=-1",
               "--storage", str(tmp_path))
    assert out.returncode == 2 and "lr=-1 must be > 0" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.extended  # the hosts bed covers stop and resume across hosts
def test_stop_then_resume_on_two_nodes_with_s3(head, corpus_dir, tmp_path):
    """The whole service path: submitted to a two-node cluster with results on S3, followed
    with status, stopped, resumed, finished, and reported from the bucket."""
    from tune_ablations.results.experiment import Experiment

    head, worker_id = head
    uri = "s3://sweeps/svc"
    args = ("--preset", "tiny", "--data", str(corpus_dir), "--set", "vocab_size=300",
            "text_samples=0", "max_steps=3000", "eval_every=100", "--ablations", "baseline",
            "--seeds", "1", "--trial-resource", "worker_node=1", "--keep-checkpoints", "6",
            "--storage", uri,
            "--name", "long")
    out = _cli("tune_ablations.submit", "grid", "--job-address", head, "--python",
               sys.executable, *args)
    assert out.returncode == 0, out.stderr[-2000:]
    deadline = time.time() + 180
    while True:  # until a checkpoint has reached the bucket
        lines = _cli("tune_ablations.status", "long", "--storage", uri, "--json"
                     ).stdout.strip().splitlines()
        if lines and json.loads(lines[-1]).get("tokens_done", 0) > 0:
            break
        assert time.time() < deadline, "no progress reached the bucket"
        time.sleep(1)
    stopped = _cli("tune_ablations.submit", "stop", "long")
    assert stopped.returncode == 0 and "state=STOPPED" in stopped.stdout, stopped.stdout
    status = _cli("tune_ablations.status", "long", "--storage", uri, "--json")
    s = json.loads(status.stdout.strip().splitlines()[-1])
    assert not s["finished"] and s["job"] == "STOPPED"
    assert 0 < s["tokens_done"] < s["tokens_planned"]
    again = _cli("tune_ablations.submit", "grid", "--job-address", head, "--python",
                 sys.executable, "--resume", "--name", "long", "--storage", uri)
    assert again.returncode == 0, again.stderr[-2000:]
    watch = _cli("tune_ablations.status", "long", "--storage", uri, "--json", "--watch",
                 "--interval", "1")
    last = json.loads(watch.stdout.strip().splitlines()[-1])
    assert last["finished"] and last["statuses"] == {"completed": 1}
    exp = Experiment(uri + "/long")
    (trial,) = exp.trials()
    outcome = exp.read_json(trial, "outcome.json")
    assert outcome["resumed_from"] and outcome["steps"] == 3000
    run = exp.read_json(trial, "run.json")
    assert run["node_id"] == worker_id  # ran on the worker node, files reached S3
    for text in (exp.read_text("sweep.json"), exp.read_text(trial, "run.json")):
        assert "AWS_SECRET_ACCESS_KEY" not in text and "testing" not in text  # no secrets
    rep = _cli("tune_ablations.analysis", uri + "/long", "--out", str(tmp_path / "rep"))
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert "| completed | 1 |" in (tmp_path / "rep" / "report.md").read_text()
