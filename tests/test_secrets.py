"""Secrets are never written: redaction of URIs (secrets with `/`, `@`, `:` and URL-encoding)
and of every secret the process knows; a study's PostgreSQL password moved out of the URL that
the searcher keeps (and Ray pickles); a submitted job refused when its entrypoint would hold
one; Ray's job record of the driver's command line redacted. The sweeps' own files, the job
server's records and Ray's logs are searched for planted secrets on the two-host bed
(test_hosts.py)."""

from __future__ import annotations

import os
import pickle
from urllib.parse import quote

import pytest

from tune_ablations.spec.io import redact

SECRET = "pl4NT/ed@x:y+z%2F" + "0d1e"  # `/`, `@`, `:`, `+` and a literal "%2F"


@pytest.mark.parametrize("text, expected", [
    ("s3://AKIA1:abc/def+g@bucket/x", "s3://***@bucket/x"),
    ("s3://AKIA1:abc%2Fdef%2Bg@bucket/x", "s3://***@bucket/x"),
    ("postgresql+psycopg://u:p@ss/w:rd@10.0.0.1:5432/optuna",
     "postgresql+psycopg://***@10.0.0.1:5432/optuna"),
    ("--study-storage=postgresql://u:pw@h/db and s3://k:s@b/p",
     "--study-storage=postgresql://***@h/db and s3://***@b/p"),
    ('{"storage": "s3://k:s@b/p", "other": "a@b"}', '{"storage": "s3://***@b/p", "other": "a@b"}'),
    ("postgresql+psycopg://postgres@10.0.0.1:5432/optuna",  # no password: nothing secret
     "postgresql+psycopg://postgres@10.0.0.1:5432/optuna"),
    ("s3://bucket/path/with@sign", "s3://bucket/path/with@sign"),
    ("plain text: a@b, http://127.0.0.1:8265", "plain text: a@b, http://127.0.0.1:8265"),
])
def test_redact_uris(text, expected):
    assert redact(text) == expected


def test_a_known_secret_is_redacted_in_every_spelling(monkeypatch):
    from tune_ablations.spec import io

    monkeypatch.setattr(io, "_SECRETS", set())
    io.register_secret(SECRET)
    for form in (SECRET, quote(SECRET, safe=""), quote(SECRET)):
        out = redact(f"error: could not connect with {form} (retrying)")
        assert out == "error: could not connect with *** (retrying)", form
    io.register_secret("short")  # too short to search for safely: left alone
    assert redact("a short word") == "a short word"
    monkeypatch.setenv("PGPASSWORD", "env-Secret/42")
    assert redact("password=env-Secret/42") == "password=***"


def test_inline_s3_credentials_with_slash_and_encoding(monkeypatch):
    """A secret written raw (with `/`, `@`, `:`, `+`) or URL-encoded is the same secret."""
    from tune_ablations.results.experiment import has_credentials, strip_credentials

    raw = "abc/def+g@h:ij"
    for uri, secret in ((f"s3://KEYID:{raw}@sweeps/x", raw),
                        (f"s3://KEYID:{quote(SECRET, safe='')}@sweeps/x", SECRET)):
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
        assert has_credentials(uri)
        assert strip_credentials(uri) == "s3://sweeps/x"
        assert os.environ["AWS_SECRET_ACCESS_KEY"] == secret  # what S3 clients read
        assert redact(f"storage={uri}") == "storage=s3://***@sweeps/x"


def test_study_password_moves_to_pgpassword_and_other_databases_are_refused(monkeypatch):
    from tune_ablations.sweeps.study import study_url

    monkeypatch.delenv("PGPASSWORD", raising=False)
    url = f"postgresql+psycopg://planted:{quote(SECRET, safe='')}@10.0.0.1:5432/optuna"
    assert study_url(url) == "postgresql+psycopg://planted@10.0.0.1:5432/optuna"
    assert os.environ["PGPASSWORD"] == SECRET  # what libpq reads
    assert study_url("postgresql+psycopg://planted@10.0.0.1/optuna") == \
        "postgresql+psycopg://planted@10.0.0.1/optuna"
    assert study_url(None) is None and study_url("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(ValueError, match="holds a password") as err:
        study_url("mysql+pymysql://u:hunter2hunter2@h/db")
    assert "hunter2hunter2" not in str(err.value)


def test_the_searcher_ray_pickles_holds_no_password(monkeypatch, corpus_dir, tmp_path):
    """What Ray pickles into tuner.pkl (the search algorithm) and saves as searcher state."""
    from ray import cloudpickle

    from tune_ablations import search
    from tune_ablations.sweeps.options import ResourceOptions
    from tune_ablations.training.resolved import Resolver

    monkeypatch.delenv("PGPASSWORD", raising=False)
    url = f"postgresql+psycopg://planted:{quote(SECRET, safe='')}@127.0.0.1:9/optuna"
    args = search.parser().parse_args(["--space", "lr", "--preset", "tiny", "--data",
                                       str(corpus_dir), "--study-storage", url])
    plan = search.build_plan(args, None, 0, ResourceOptions(), Resolver())
    searcher = plan.searcher(str(tmp_path / "exp"), 1)
    assert searcher.storage == "postgresql+psycopg://planted@127.0.0.1:9/optuna"
    for blob in (cloudpickle.dumps(searcher), pickle.dumps(plan.record)):
        for form in (SECRET, quote(SECRET, safe="")):
            assert form.encode() not in blob


@pytest.mark.parametrize("flag, value", [
    ("--study-storage", f"postgresql+psycopg://u:{quote(SECRET, safe='')}@10.0.0.1/optuna"),
    ("--storage", f"s3://KEYID:{quote(SECRET, safe='')}@sweeps/x"),
])
def test_submit_refuses_a_secret_in_the_entrypoint(capsys, flag, value):
    from tune_ablations import submit

    kind = "search" if flag == "--study-storage" else "grid"
    extra = ["--space", "lr"] if kind == "search" else []
    code = submit.main([kind, *extra, "--preset", "tiny", flag, value, "--job-address",
                        "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert code == 2 and flag in err and "entrypoint" in err, err
    assert quote(SECRET, safe="") not in err and SECRET not in err


def test_job_client_leaves_no_auth_mode_behind(monkeypatch, tmp_path):
    """With ~/.ray/auth_token present the job client authenticates with it, but the token
    mode must not stay in the environment: every Ray this process starts later (a local sweep,
    CI's later test runs) would then demand a token (found by CI: "Failed to start GCS ...
    InvalidAuthToken" in a ladder test after the submit tests)."""
    from tune_ablations.sweeps import jobs

    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("0" * 64)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with pytest.raises(ValueError, match="no Ray job server there"):
        jobs.client("http://127.0.0.1:9")
    assert "RAY_AUTH_MODE" not in os.environ
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a user's own choice is kept
    with pytest.raises(ValueError):
        jobs.client("http://127.0.0.1:9")
    assert os.environ["RAY_AUTH_MODE"] == "disabled"


def test_rays_job_record_gets_the_redacted_command_line(monkeypatch):
    """Ray stores the driver's command line (read from /proc) as the job's entrypoint: while our
    local or joined Ray starts, it reads the redacted one."""
    import sys

    from ray._private import utils

    from tune_ablations.sweeps.cluster import redacted_entrypoint

    monkeypatch.setattr(sys, "argv", ["/x/tune_ablations/search.py", "--storage",
                                      f"s3://K:{quote(SECRET, safe='')}@b/p"])
    with redacted_entrypoint():
        assert utils.get_entrypoint_name() == \
            "python -m tune_ablations.search --storage s3://***@b/p"
    assert "tune_ablations" not in utils.get_entrypoint_name()  # restored


def test_trials_get_no_credentials_in_their_runtime_env(monkeypatch):
    """Ray Tune would copy the driver's AWS credentials into every trial actor's runtime_env
    (kept by the GCS, logged by each node's runtime-env agent: found there by the two-host
    planted-secret test); the sweep keeps them out."""
    from ray.tune.execution import class_cache

    from tune_ablations.sweeps.cluster import CLOUD_CREDENTIALS, keep_credentials_home

    monkeypatch.setattr(class_cache, "ENV_VARS_TO_PROPAGATE",
                        set(class_cache.ENV_VARS_TO_PROPAGATE) | set(CLOUD_CREDENTIALS))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    keep_credentials_home()
    assert not set(CLOUD_CREDENTIALS) & class_cache.ENV_VARS_TO_PROPAGATE


@pytest.mark.parametrize("flag, value, shown", [
    ("--data", "s3://AKIA:planted/se+cret@bucket/c.jsonl", "data='s3://***@bucket/c.jsonl'"),
    ("--eval-data", "https://user:planted@host/x.txt", "eval_data='https://***@host/x.txt'"),
])
def test_a_corpus_url_is_refused_with_its_credentials_redacted(flag, value, shown, capsys):
    """A corpus named by a URL is not read from there (nor taken for a local path, where the
    credentials would reach the error and the trial's record): one line, credentials hidden."""
    from tune_ablations import train

    assert train.main(["--preset", "tiny", flag, value]) == 2
    err = capsys.readouterr().err
    assert shown in err and "is a URL" in err and "planted" not in err
    assert "Traceback" not in err
