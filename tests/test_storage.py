"""Cloud storage: a grid whose results live on a real S3-compatible server (moto's server mode,
started here on 127.0.0.1), resumed from it, and analysed from it."""

import os
import subprocess
import sys

import pandas as pd
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def s3_env(s3_server):
    return s3_server


def _run(args, env, timeout=600):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=timeout)


def test_grid_on_s3_resumes_and_analyses(s3_env, corpus_dir, tmp_path):
    import boto3

    uri = "s3://sweeps/results"
    grid = ["tune_ablations.grid", "--preset", "tiny", "--data", str(corpus_dir), "--set",
            "vocab_size=300", "text_samples=0", "--ablations", "baseline", "high_lr",
            "--storage", uri, "--name", "g"]
    out = _run(grid, s3_env)
    assert out.returncode == 0, out.stderr[-3000:]
    s3 = boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="sweeps", Prefix="results/g/")
            ["Contents"]}
    for name in ("sweep.json", "results.parquet", "history.csv", "trials.json", "tuner.pkl"):
        assert f"results/g/{name}" in keys, name
    assert sum(k.endswith("/run.json") for k in keys) == 2
    assert sum(k.endswith("/outcome.json") for k in keys) == 2
    # The same name is refused without --resume; --resume restores the sweep from S3.
    again = _run(grid, s3_env)
    assert again.returncode == 2 and "already exists" in again.stderr
    resumed = _run(["tune_ablations.grid", "--storage", uri, "--name", "g", "--resume"], s3_env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rep = _run(["tune_ablations.analysis", f"{uri}/g", "--out", str(tmp_path / "rep")], s3_env)
    assert rep.returncode == 0, rep.stderr[-3000:]
    text = (tmp_path / "rep" / "report.md").read_text()
    assert "| completed | 2 |" in text
    df = pd.read_parquet(tmp_path / "rep" / "results.parquet")
    assert set(df["status"].astype(str)) == {"completed"} and len(df) == 2
