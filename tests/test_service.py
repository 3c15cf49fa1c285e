"""Sweeps as a service: a local Ray head with its dashboard (and job server) on 127.0.0.1; a
smoke grid submitted as a Ray Job, followed with `status` to the end, its results read; a longer
one stopped mid-way and resumed."""

import json
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def head():
    pytest.importorskip("ray.dashboard")
    from ray.cluster_utils import Cluster

    port = _free_port()
    c = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 2, "gcs_server_port": _free_port(), "include_dashboard": True,
        "dashboard_host": "127.0.0.1", "dashboard_port": port})
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
    yield address
    c.shutdown()


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_submit_follow_and_read(head, corpus_dir, tmp_path):
    out = _cli("tune_ablations.submit", "grid", "--job-address", head, "--python",
               sys.executable, "--smoke-test", "--data", str(corpus_dir), "--set",
               "vocab_size=300", "--storage", str(tmp_path), "--name", "svc")
    assert out.returncode == 0, out.stderr[-2000:]
    assert "event=submitted job=" in out.stdout and "experiment=svc" in out.stdout
    watch = _cli("tune_ablations.status", "svc", "--storage", str(tmp_path), "--json",
                 "--watch", "--interval", "1")
    assert watch.returncode == 0, watch.stderr[-2000:]
    updates = [json.loads(line) for line in watch.stdout.splitlines() if line.startswith("{")]
    last = updates[-1]
    assert last["finished"] and last["statuses"] == {"completed": 2}
    assert last["job"] in ("SUCCEEDED", "RUNNING")  # the driver may still be exiting
    assert last["tokens_done"] == last["tokens_planned"] and last["best"]["val_loss"] > 0
    df = pd.read_parquet(tmp_path / "svc" / "results.parquet")
    assert len(df) == 2 and set(df["status"].astype(str)) == {"completed"}


def test_bad_input_is_refused_before_submitting(head, tmp_path):
    out = _cli("tune_ablations.submit", "grid", "--job-address", head, "--set", "lr=-1",
               "--storage", str(tmp_path))
    assert out.returncode == 2 and "lr=-1 must be > 0" in out.stderr
    assert "Traceback" not in out.stderr


def test_stop_then_resume(head, corpus_dir, tmp_path):
    args = ("--preset", "tiny", "--data", str(corpus_dir), "--set", "vocab_size=300",
            "text_samples=0", "max_steps=3000", "eval_every=100", "--ablations", "baseline",
            "--storage", str(tmp_path), "--name", "long")
    out = _cli("tune_ablations.submit", "grid", "--job-address", head, "--python",
               sys.executable, *args)
    assert out.returncode == 0, out.stderr[-2000:]
    exp = tmp_path / "long"
    deadline = time.time() + 180
    while not list(exp.glob("*/checkpoint_*")):
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.5)
    time.sleep(2)
    stopped = _cli("tune_ablations.submit", "stop", "long")
    assert stopped.returncode == 0 and "state=STOPPED" in stopped.stdout, stopped.stdout
    status = _cli("tune_ablations.status", "long", "--storage", str(tmp_path), "--json")
    s = json.loads(status.stdout.strip().splitlines()[-1])
    assert not s["finished"] and s["job"] == "STOPPED"
    assert 0 < s["tokens_done"] < s["tokens_planned"]
    again = _cli("tune_ablations.submit", "grid", "--job-address", head, "--python",
                 sys.executable, "--resume", "--name", "long", "--storage", str(tmp_path))
    assert again.returncode == 0, again.stderr[-2000:]
    watch = _cli("tune_ablations.status", "long", "--storage", str(tmp_path), "--json",
                 "--watch", "--interval", "1")
    last = json.loads(watch.stdout.strip().splitlines()[-1])
    assert last["finished"] and last["statuses"] == {"completed": 1}
    outcome = json.loads(next(exp.glob("*/outcome.json")).read_text())
    assert outcome["resumed_from"] and outcome["steps"] == 3000
