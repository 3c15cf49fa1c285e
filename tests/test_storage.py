"""Where a sweep lives: one Experiment over a local folder, a `file://` URI or an `s3://` URI on a
real S3-compatible server (moto's server mode, started here on 127.0.0.1). Every command works
the same on each: {folder, file://, s3://} x {grid, search} x {status, resume, analysis,
export}, through the command line as a user runs it."""

import json
import os
import subprocess
import sys
import time

import pytest

from tune_ablations.results.experiment import Experiment, open_experiment

pytestmark = pytest.mark.slow
KINDS = ["folder", "file", "s3"]


def _run(args, env, timeout=600):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=timeout)


@pytest.fixture(scope="module")
def where(s3_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("storage")
    return {"folder": (str(root / "plain"), {}), "file": (f"file://{root / 'uri'}", {}),
            "s3": ("s3://sweeps/matrix", s3_server)}


def _sweep_args(kind: str, corpus) -> list[str]:
    common = ["--preset", "tiny", "--data", str(corpus), "--set", "vocab_size=300",
              "text_samples=0", "max_steps=40", "eval_every=20"]
    if kind == "grid":
        return ["tune_ablations.grid", *common, "--ablations", "baseline", "high_lr",
                "--seeds", "1"]
    return ["tune_ablations.search", *common, "--space", "lr", "--num-samples", "2",
            "--scheduler", "none"]


@pytest.fixture(scope="module")
def swept(where, corpus_dir):
    """One grid and one search on each storage, each run once."""
    out = {}
    for storage_kind in KINDS:
        storage, env = where[storage_kind]
        for kind in ("grid", "search"):
            args = [*_sweep_args(kind, corpus_dir), "--storage", storage, "--name", kind]
            r = _run(args, env)
            assert r.returncode == 0, (storage_kind, kind, r.stderr[-3000:])
            out[(storage_kind, kind)] = args
    return out


@pytest.mark.parametrize("kind", ["grid", "search"])
@pytest.mark.parametrize("storage_kind", KINDS)
def test_status_reads_the_sweep(where, swept, storage_kind, kind):
    storage, env = where[storage_kind]
    r = _run(["tune_ablations.status", kind, "--storage", storage, "--json"], env)
    assert r.returncode == 0, r.stderr[-2000:]
    s = json.loads(r.stdout)
    assert s["finished"] and sum(s["statuses"].values()) == 2 and s["statuses"]["completed"]
    assert s["best"]["val_loss"] > 0 and 0 < s["tokens_done"] <= s["tokens_planned"]


@pytest.mark.parametrize("kind", ["grid", "search"])
@pytest.mark.parametrize("storage_kind", KINDS)
def test_the_same_command_resumes(where, swept, storage_kind, kind):
    """The sweep's own command with --resume appended: accepted, nothing trained again."""
    storage, env = where[storage_kind]
    exp = Experiment(f"{storage}/{kind}") if storage_kind != "s3" else None
    before = None if exp is None else {t: exp.read_bytes(t, "outcome.json") for t in exp.trials()}
    r = _run([*swept[(storage_kind, kind)], "--resume"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "event=sweep_done trials=2" in r.stderr
    if before is not None:  # finished trials were not rerun
        assert {t: exp.read_bytes(t, "outcome.json") for t in exp.trials()} == before


@pytest.mark.parametrize("kind", ["grid", "search"])
@pytest.mark.parametrize("storage_kind", KINDS)
def test_analysis_and_export_read_the_sweep(where, swept, storage_kind, kind, tmp_path):
    storage, env = where[storage_kind]
    r = _run(["tune_ablations.analysis", f"{storage}/{kind}", "--out", str(tmp_path / "rep")],
             env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "## Search" in (tmp_path / "rep" / "report.md").read_text() if kind == "search" \
        else "## Answer" in (tmp_path / "rep" / "report.md").read_text()
    r = _run(["tune_ablations.export", f"{storage}/{kind}", "--out", str(tmp_path / "model"),
              "--cache-dir", str(tmp_path / "no-cache-here")], env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "model" / "model.safetensors").stat().st_size > 0
    assert (tmp_path / "model" / "tokenizer.json").exists()  # it travelled with the sweep


def test_status_of_a_bucket_reads_no_checkpoint(where, swept, s3_server, monkeypatch):
    """`status` (and `--watch`, every poll) reads small files only: never a checkpoint."""
    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    from tune_ablations.results.progress import sweep_status

    storage, _ = where["s3"]
    exp = open_experiment(storage, "grid")
    checkpoint_bytes = sum(len(exp.read_bytes(t, c, "checkpoint.pt")) for t in exp.trials()
                           for c in exp.checkpoints(t))
    poll = Experiment(exp.location)
    sweep_status(poll)
    assert 0 < poll.bytes_read < 100_000 < checkpoint_bytes


def test_the_newest_experiment_is_the_last_created(where, s3_server, monkeypatch):
    """Object stores have no folder mtimes: the newest sweep is the one sweep.json says was
    created last, whatever the names' order."""
    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    for storage_kind in ("folder", "s3"):
        root = f"{where[storage_kind][0]}-newest"
        for name, created in (("zzz-old", "2026-01-01T00:00:00"),
                              ("aaa-new", "2026-06-01T00:00:00")):
            Experiment(f"{root}/{name}").write_json({"kind": "grid", "name": name,
                                                     "created": created}, "sweep.json")
        assert open_experiment(root).name == "aaa-new"
        assert open_experiment(root, kind="grid").name == "aaa-new"
        time.sleep(0.01)


def test_the_best_trial_is_one_definition(synthetic_exp):
    """status, the summary, the report and export all take the best *completed* trial by its
    *final* loss in the metric's direction, never the best loss at any evaluation."""
    from tune_ablations.results.export import locate_trial
    from tune_ablations.results.frames import best_completed, load
    from tune_ablations.results.progress import sweep_status

    res = load(synthetic_exp)
    best = best_completed(res.trials)
    assert best["ablation"] == "large_batch" and best["status"] == "completed"
    assert sweep_status(Experiment(synthetic_exp))["best"]["trial_id"] == best["trial_id"]
    assert locate_trial(synthetic_exp)[1] == best["folder"]
    # A running trial whose loss at some evaluation was lower is not the best.
    assert res.history[METRIC_COL].min() < best[METRIC_COL]


METRIC_COL = "val_loss"


@pytest.fixture
def synthetic_exp(tmp_path):
    from synthetic import make_synthetic_experiment

    exp = make_synthetic_experiment(tmp_path)
    Experiment(exp).write_json({"kind": "grid", "name": "synthetic", "spec": {},
                                "created": "2026-01-01T00:00:00"}, "sweep.json")
    running = next(p for p in exp.iterdir() if (p / "run.json").exists() and json.loads(
        (p / "run.json").read_text())["ablation"] == "short_seq")
    lines = (running / "result.json").read_text().splitlines()
    first = json.loads(lines[0]) | {"val_loss": 1.0}  # lower than any completed trial's
    (running / "result.json").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    return exp


def test_credentials_in_the_uri_are_written_nowhere(s3_server, corpus_dir, tmp_path):
    """`s3://KEY:SECRET@bucket/...` works (pyarrow reads the credentials from the URI) and the
    secret reaches no object in the bucket, no log line and no output."""
    import boto3

    secret = "Sec" + "ret" + "9f3a1c"  # never a literal that could match this file's own text
    env = {k: v for k, v in s3_server.items() if k not in ("AWS_ACCESS_KEY_ID",
                                                            "AWS_SECRET_ACCESS_KEY")}
    uri = f"s3://KEYID123:{secret}@sweeps/secrets"
    r = _run([*_sweep_args("grid", corpus_dir), "--seeds", "2", "--storage", uri, "--name",
              "g"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert secret not in r.stdout + r.stderr
    rep = _run(["tune_ablations.status", "g", "--storage", uri, "--json"], env)
    assert rep.returncode == 0 and secret not in rep.stdout + rep.stderr
    s3 = boto3.client("s3", endpoint_url=s3_server["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket="sweeps", Prefix="secrets/") for o in page.get("Contents", [])]
    assert any(k.endswith("sweep.json") for k in keys) and len(keys) > 10
    for key in keys:
        body = s3.get_object(Bucket="sweeps", Key=key)["Body"].read()
        assert secret.encode() not in body, key
    sweep = json.loads(s3.get_object(Bucket="sweeps", Key="secrets/g/sweep.json")["Body"].read())
    assert "s3://***@sweeps/secrets" in " ".join(sweep["argv"])
