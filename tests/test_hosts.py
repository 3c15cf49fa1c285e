"""Two hosts that share nothing but a network (`hosts.py`): S3 (moto's server), the Ray head, its
job server and PostgreSQL on host A; a Ray worker on host B; the corpus file on host A only. The
commands run as a user runs them on each machine. Kill tests kill on a state (a trial that holds
at a step on host B until the test has acted), never after a sleep.

Run with `python -m pytest -m hosts` (root; skipped with the reason where namespaces are not
available). The README's "Running on a cluster" recipe is this module's fixture, command for
command."""

from __future__ import annotations

import json
import os
import random
import secrets
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, quote_plus

import pytest
from conftest import WORDS
from hosts import Bed, host_env, unavailable

pytestmark = [pytest.mark.hosts, pytest.mark.slow]
WHY = unavailable()
if WHY:
    pytestmark.append(pytest.mark.skip(reason=WHY))

HOLD_STEP = 200
HELD_CHECKPOINT = "checkpoint_000001"  # evaluations (and checkpoints) at steps 100, 200, ...
BUCKET = "s3://sweeps/hosts"
CORPUS = "/tmp/corpus/docs.jsonl"  # on host A only
PG = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)  # Debian's layout


def _corpus() -> str:
    rng = random.Random(0)
    weights = [1 / (i + 1) for i in range(len(WORDS))]
    return "".join(json.dumps({"text": f"Document {i}. " + " ".join(
        rng.choices(WORDS, weights=weights, k=300)) + "."}) + "\n" for i in range(60))


def _wait(what: str, check, timeout: float = 240, every: float = 0.5):
    deadline = time.time() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


class Cluster:
    """The bed with its services; `env` is what a user exports on both machines."""

    def __init__(self):
        self.bed = Bed()
        self.a, self.b = self.bed.a, self.bed.b
        self.hold = self.bed.control / "hold"
        self.hold.mkdir()
        (self.hold / "release").touch()  # no holds until a test removes this
        self.s3 = f"http://{self.a.ip}:5000"
        self.env = host_env(
            AWS_ENDPOINT_URL=self.s3, AWS_ACCESS_KEY_ID="testing",
            AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
            RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
        self.address = f"{self.a.ip}:6379"
        self.jobs = f"http://{self.a.ip}:8265"
        self.a.popen(["moto_server", "-H", self.a.ip, "-p", "5000"], self.env,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.py("import boto3, time\nfor _ in range(200):\n    try:\n"
                "        boto3.client('s3').create_bucket(Bucket='sweeps'); break\n"
                "    except Exception: time.sleep(0.1)")
        self.a.write(CORPUS, _corpus(), self.env)
        # Node death seen in about 2 s instead of 30 (Ray's health check of each raylet).
        fast = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "1000",
                "RAY_health_check_failure_threshold": "4"}
        self.ok(self.a, ["ray", "start", "--head", f"--node-ip-address={self.a.ip}",
                         "--port=6379", "--num-cpus=1", "--include-dashboard=true",
                         f"--dashboard-host={self.a.ip}", "--dashboard-port=8265",
                         "--disable-usage-stats"], env=self.env | fast)
        self.start_worker()

    def start_worker(self) -> None:
        """Host B's Ray worker (2 CPUs, custom resource host_b); its trials hold at HOLD_STEP
        unless `release` (or `release-<trial>`) exists in the control folder."""
        self.ok(self.b, ["ray", "start", f"--address={self.address}",
                         f"--node-ip-address={self.b.ip}", "--num-cpus=2",
                         '--resources={"host_b": 2}', "--disable-usage-stats"],
                env=self.env | {"TUNE_ABLATIONS_TEST_HOLD": f"{HOLD_STEP}:{self.hold}"})

    def ok(self, host, cmd, env=None, timeout=600):
        r = host.run(cmd, env or self.env, timeout=timeout)
        assert r.returncode == 0, f"{cmd[:4]} on {host.name}:\n{r.stdout[-3000:]}\n" \
                                  f"{r.stderr[-3000:]}"
        return r

    def py(self, code: str, host=None) -> str:
        return self.ok(host or self.a, [sys.executable, "-c", code]).stdout

    def cli(self, host, *args, **kw):
        return host.run([sys.executable, "-m", *args], self.env, **kw)

    def read_json(self, exp: str, *parts: str, host=None):
        return json.loads(self.py(
            "import json; from tune_ablations.results.experiment import Experiment\n"
            f"print(json.dumps(Experiment({exp!r}).read_json(*{list(parts)!r})))", host))

    def trials(self, exp: str, host=None) -> list[str]:
        return json.loads(self.py(
            "import json; from tune_ablations.results.experiment import Experiment\n"
            f"print(json.dumps(Experiment({exp!r}).trials()))", host))

    def held(self) -> list[str]:
        return sorted(p.name[len("held-"):] for p in self.hold.glob("held-*"))

    def hold_trials(self) -> None:
        (self.hold / "release").unlink(missing_ok=True)
        for p in self.hold.glob("*-*"):
            p.unlink()

    def release(self, trial: str | None = None) -> None:
        (self.hold / (f"release-{trial}" if trial else "release")).touch()


@pytest.fixture(scope="module")
def cluster():
    c = Cluster.__new__(Cluster)
    try:
        c.__init__()
        yield c
    finally:
        if hasattr(c, "bed"):
            c.bed.close()


@contextmanager
def driver_on_a(c: Cluster, args: list[str], env: dict[str, str] | None = None):
    """A sweep's driver on host A, killed (every process of it) if still running at the end;
    holds are released either way."""
    driver = c.a.popen([sys.executable, "-m", *args], c.env | (env or {}),
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield driver
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        c.release()


def grid_args(c: Cluster, name: str, *extra: str, address: bool = True) -> list[str]:
    return ["tune_ablations.grid", "--preset", "tiny", "--data", CORPUS, "--set",
            "vocab_size=300", "text_samples=0", "max_steps=600", "eval_every=100",
            *(["--address", c.address] if address else []), "--storage", BUCKET, "--name",
            name, *extra]


def test_a_grid_trains_on_host_b_from_data_that_only_host_a_has(cluster):
    c = cluster
    r = c.cli(c.a, *grid_args(c, "onb", "--ablations", "baseline", "high_lr", "--seeds", "1",
                              "--trial-resource", "host_b=1"))
    assert r.returncode == 0, r.stderr[-3000:]
    exp = f"{BUCKET}/onb"
    runtime = c.read_json(exp, "sweep.json")["runtime"]
    assert f"({c.b.ip})" in runtime["machine"]  # probed where the trials train, not on A
    for trial in c.trials(exp):
        run = c.read_json(exp, trial, "run.json")
        assert run["node_ip"] == c.b.ip
        assert run["config"]["precision"] == runtime["precision"]  # one precision per sweep
        assert c.read_json(exp, trial, "outcome.json")["status"] == "completed"
    cached = c.ok(c.b, ["find", "/root/.cache", "-type", "f"]).stdout.split()
    # host B built no token cache and trained no BPE: it measured only its own hardware
    assert {Path(f).name for f in cached} <= {"peaks.json", "precision_probes.json"}, cached
    status = c.cli(c.b, "tune_ablations.status", "onb", "--storage", BUCKET, "--json")
    s = json.loads(status.stdout.strip().splitlines()[-1])
    assert s["finished"] and s["statuses"] == {"completed": 2}, status.stdout
    rep = c.cli(c.b, "tune_ablations.analysis", exp, "--out", "/tmp/report")
    assert rep.returncode == 0, rep.stderr[-2000:]
    export = c.cli(c.b, "tune_ablations.export", exp, "--out", "/tmp/model")
    assert export.returncode == 0, export.stderr[-2000:]


def test_local_storage_is_refused_on_the_two_host_cluster(cluster):
    c = cluster
    r = c.cli(c.a, "tune_ablations.grid", "--preset", "tiny", "--data", CORPUS, "--address",
              c.address, "--storage", "/tmp/results", "--name", "local")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "s3://" in r.stderr.strip().splitlines()[-1]  # the fix is named
    assert "local" not in c.ok(c.b, ["ls", "-A", "/tmp"]).stdout


def test_status_and_stop_of_a_submitted_sweep_from_host_b(cluster):
    c = cluster
    c.hold_trials()
    try:
        sub = c.cli(c.a, "tune_ablations.submit", "grid", "--job-address", c.jobs, "--python",
                    sys.executable, *grid_args(c, "job", "--ablations", "baseline", "--seeds",
                                               "1", "--trial-resource", "host_b=1",
                                               address=False)[1:])
        assert sub.returncode == 0, sub.stderr[-3000:]
        _wait("the job's trial to hold on host B", c.held)
        st = c.cli(c.b, "tune_ablations.status", "job", "--storage", BUCKET, "--json",
                   "--job-address", c.jobs)
        s = json.loads(st.stdout.strip().splitlines()[-1])
        assert s["job"] == "RUNNING" and not s["finished"], st.stdout
        stop = c.cli(c.b, "tune_ablations.submit", "stop", "job", "--job-address", c.jobs)
        assert stop.returncode == 0 and "state=STOPPED" in stop.stdout, stop.stderr[-2000:]
        st = c.cli(c.a, "tune_ablations.status", "job", "--storage", BUCKET, "--json",
                   "--job-address", c.jobs)
        assert json.loads(st.stdout.strip().splitlines()[-1])["job"] == "STOPPED"
    finally:
        c.release()


def _snapshot_names(c: Cluster, exp: str, trial: str) -> list[str]:
    return json.loads(c.py(
        "import json\nfrom tune_ablations.results.experiment import Experiment\n"
        "from tune_ablations.sweeps.tuner import snapshot_checkpoints\n"
        f"print(json.dumps(snapshot_checkpoints(Experiment({exp!r}), {trial!r})))"))


def test_driver_killed_on_host_a_resumes_from_host_b(cluster):
    """One trial finished, one holding on host B with a checkpoint that Ray's last snapshot
    names: the driver dies; `--resume` typed on host B finishes the sweep, the finished trial
    untouched, the other continued from its checkpoint."""
    c = cluster
    c.hold_trials()
    args = grid_args(c, "kd", "--ablations", "baseline", "high_lr", "--seeds", "1",
                     "--trial-resource", "host_b=1")
    exp = f"{BUCKET}/kd"
    with driver_on_a(c, args):  # killed on leaving: a finished trial and a snapshotted one
        held = _wait("both trials to hold on host B", lambda: len(c.held()) == 2 and c.held())
        done, waiting = held
        c.release(done)
        _wait("one trial to finish", lambda: c.read_json(exp, done, "outcome.json"))
        _wait("the snapshot to name the held trial's checkpoint",
              lambda: _snapshot_names(c, exp, waiting)[-1:] == [HELD_CHECKPOINT], every=1)
        finished = c.read_json(exp, done, "outcome.json")
    r = c.cli(c.b, *args, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    assert c.read_json(exp, done, "outcome.json") == finished  # not trained again
    resumed = c.read_json(exp, waiting, "outcome.json")
    assert resumed["status"] == "completed" and resumed["resumed_from"] == [HOLD_STEP]
    assert sorted(c.trials(exp)) == sorted([done, waiting])


def test_a_search_writes_a_shared_postgres_study_live_and_resumes_consistently(cluster):
    """optuna-dashboard's view: the study in PostgreSQL on host A, read from host B while the
    search runs (a trial holding mid-way has its intermediate values there); the driver killed
    and the search resumed from host B leave exactly the trials Ray ran, none twice."""
    c = cluster
    url = _postgres(c)
    c.hold_trials()
    args = ["tune_ablations.search", "--space", "lr", "--preset", "tiny", "--data", CORPUS,
            "--set", "vocab_size=300", "text_samples=0", "max_steps=600", "--num-samples", "4",
            "--max-concurrent", "2", "--trial-resource", "host_b=1", "--address", c.address,
            "--storage", BUCKET, "--name", "pg", "--study-storage", url]
    read = ("import json, optuna\noptuna.logging.set_verbosity(optuna.logging.WARNING)\n"
            f"s = optuna.load_study(study_name='pg', storage={url!r})\n"
            "print(json.dumps([[t.state.name, len(t.intermediate_values),"
            " t.user_attrs.get('ray_trial_id'), t.params] for t in s.trials]))")
    with driver_on_a(c, args):  # killed on leaving, with a trial holding mid-way
        _wait("a trial to hold on host B", c.held)
        live = _wait("the held trial's values in the study", lambda: [
            t for t in json.loads(c.py(read, c.b)) if t[0] == "RUNNING" and t[1] > 0], every=1)
        assert live
    r = c.cli(c.b, *args, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    trials = json.loads(c.py(read, c.b))
    ran = c.py("import pandas as pd\nfrom tune_ablations.results.frames import load\n"
               f"df = load({BUCKET + '/pg'!r}).trials\n"
               "print(df[['trial_id', 'status', 'lr', 'tokens_seen']].to_string())", c.b)
    assert len(trials) == 4, (trials, ran)
    assert {t[0] for t in trials} <= {"COMPLETE", "PRUNED"}, trials
    ids = [t[2] for t in trials]
    assert len(set(ids)) == 4 and None not in ids


PG_USER = "planted"  # the role that needs a password (scram-sha-256); postgres is trusted


def _postgres(c: Cluster) -> str:
    """PostgreSQL from Debian's packages on host A, reachable from host B (started once): the
    superuser trusted (database `optuna`), role PG_USER admitted by its password only
    (`c.pg_password`; it owns database PG_USER)."""
    if PG is None:
        pytest.skip("PostgreSQL is not installed (Debian: apt-get install postgresql; "
                    ".ci/run installs it)")
    url = f"postgresql+psycopg://postgres@{c.a.ip}:5432/optuna"
    if getattr(c, "pg_password", None):
        return url
    net = c.a.ip.rsplit(".", 1)[0] + ".0/24"
    c.ok(c.a, ["sh", "-c", f"mkdir -p /tmp/pg && chown postgres /tmp/pg && su postgres -c "
                           f"'{PG}/initdb -D /tmp/pg -A trust -U postgres' >/dev/null && "
                           f"echo 'host all {PG_USER} {net} scram-sha-256' >> "
                           f"/tmp/pg/pg_hba.conf && "
                           f"echo 'host all all {net} trust' >> /tmp/pg/pg_hba.conf"])
    c.a.popen(["su", "postgres", "-c", f"{PG}/postgres -D /tmp/pg -k /tmp -c "
               f"listen_addresses={c.a.ip}"], c.env, stdout=subprocess.DEVNULL,
              stderr=subprocess.DEVNULL)
    _wait("PostgreSQL", lambda: c.a.run(["pg_isready", "-h", c.a.ip], c.env).returncode == 0)
    c.ok(c.a, ["su", "postgres", "-c", f"createdb -h {c.a.ip} optuna"])
    password = "Pg/" + secrets.token_hex(8) + "@:x%"
    c.ok(c.a, ["psql", "-h", c.a.ip, "-U", "postgres", "-d", "optuna", "-v", "ON_ERROR_STOP=1",
               "-c", f"CREATE ROLE {PG_USER} LOGIN PASSWORD '{password}'"])
    c.ok(c.a, ["su", "postgres", "-c", f"createdb -h {c.a.ip} -O {PG_USER} {PG_USER}"])
    c.pg_password = password
    return url


def test_every_process_of_host_b_killed_mid_trial(cluster):
    """Host B loses power while its trials hold mid-way: the sweep completes, each of those
    trials resumed on host A from its last checkpoint in the bucket, nothing finished lost."""
    c = cluster
    c.hold_trials()
    args = grid_args(c, "kb", "--ablations", "baseline", "--seeds", "2")
    exp = f"{BUCKET}/kb"
    with driver_on_a(c, args) as driver:
        held = _wait("a trial to hold on host B", c.held)
        for trial in held:  # the driver has the held step's checkpoint (its snapshot names it)
            _wait("the snapshot to name the held checkpoint", lambda t=trial: _snapshot_names(
                c, exp, t)[-1:] == [HELD_CHECKPOINT], every=1)
        c.b.kill_all()
        try:
            assert driver.wait(timeout=420) == 0
        finally:  # the tests after this one need host B and its Ray worker back
            c.b = c.bed.restart_b()
            c.start_worker()
    for trial in c.trials(exp):
        outcome = c.read_json(exp, trial, "outcome.json")
        assert outcome["status"] == "completed", (trial, outcome.get("status"))
        if trial in held:
            assert outcome["resumed_from"] == [HOLD_STEP]
            assert c.read_json(exp, trial, "run.json")["node_ip"] == c.a.ip


def _study_rows(c: Cluster, exp: str, name: str, host) -> list:
    """The study the experiment keeps (study.db, uploaded at the end), as [state, ray trial
    id, params] rows."""
    return json.loads(c.py(
        "import json, tempfile, optuna\n"
        "from tune_ablations.results.experiment import Experiment\n"
        "optuna.logging.set_verbosity(optuna.logging.WARNING)\n"
        "path = tempfile.mkdtemp() + '/study.db'\n"
        f"open(path, 'wb').write(Experiment({exp!r}).read_bytes('study.db'))\n"
        f"s = optuna.load_study(study_name={name!r}, storage='sqlite:///' + path)\n"
        "print(json.dumps([[t.state.name, t.user_attrs.get('ray_trial_id'), t.params]"
        " for t in s.trials]))", host))


def _table(c: Cluster, exp: str, host) -> list[dict]:
    return json.loads(c.py(
        "from tune_ablations.results.frames import load\n"
        f"df = load({exp!r}).trials\n"
        "print(df[['trial_id', 'status']].astype(str).to_json(orient='records'))", host))


def _snapshotted(c: Cluster, exp: str, trials: list[str]) -> bool:
    return all(_snapshot_names(c, exp, t)[-1:] == [HELD_CHECKPOINT] for t in trials)


@pytest.mark.parametrize("kill", ["before_first_end", "midway", "after_last"])
def test_a_search_killed_on_host_a_resumes_on_host_b(cluster, kill):
    """The default study (SQLite on the driver's host) and S3 storage: the driver dies on host
    A before any trial ends, mid-way (one finished, two holding) or after the last trial (the
    driver holding once Ray's Tuner returned); the same command with --resume on host B
    finishes it, and the study it keeps holds each trial Ray ran once, COMPLETE."""
    c = cluster
    name, held = f"sr-{kill.replace('_', '-')}", []
    exp = f"{BUCKET}/{name}"
    args = ["tune_ablations.search", "--space", "lr", "--preset", "tiny", "--data", CORPUS,
            "--set", "vocab_size=300", "text_samples=0", "max_steps=400", "eval_every=100",
            "--num-samples", "3", "--max-concurrent", "2", "--scheduler", "none",
            "--trial-resource", "host_b=1", "--address", c.address, "--storage", BUCKET,
            "--name", name]
    if kill == "after_last":
        c.release()  # the trials run through; the driver holds
        with driver_on_a(c, args, env={"TUNE_ABLATIONS_TEST_HOLD_DRIVER": str(c.hold)}):
            _wait("the driver to hold after the last trial",
                  lambda: (c.hold / "held-driver").exists())
        (c.hold / "held-driver").unlink()
    else:
        c.hold_trials()
        with driver_on_a(c, args):
            held = _wait("two trials to hold on host B", lambda: len(c.held()) == 2 and c.held())
            if kill == "midway":
                c.release(held[0])
                _wait("one trial to finish", lambda: c.read_json(exp, held[0], "outcome.json"))
                held = _wait("the third trial to hold", lambda: [
                    t for t in c.held() if t != held[0]] if len(c.held()) == 3 else None)
            _wait("the snapshot to name the held checkpoints",
                  lambda: _snapshotted(c, exp, held), every=1)
    r = c.cli(c.b, *args, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    table = _table(c, exp, c.b)
    assert len(table) == 3 and {t["status"] for t in table} == {"completed"}, table
    study = _study_rows(c, exp, name, c.b)
    assert [row[0] for row in study] == ["COMPLETE"] * 3, study
    assert sorted(row[1] for row in study) == sorted(t["trial_id"] for t in table)
    hint = next(line for line in r.stdout.splitlines() if "optuna-dashboard" in line)
    assert hint.startswith("study: optuna-dashboard sqlite:////") and "s3:" not in \
        hint.split()[2], hint


def test_a_tune_lr_grid_killed_on_host_a_resumes_on_host_b(cluster):
    """--tune-lr: the driver dies on host A mid-way through the lr sweep (one trial finished,
    two holding); --resume on host B runs the rest of the sweep, its second seeds and the seeds
    at each arm's chosen lr, no trial twice."""
    c = cluster
    exp = f"{BUCKET}/tl"
    args = grid_args(c, "tl", "--ablations", "baseline", "high_lr", "--seeds", "1",
                     "--tune-lr", "3", "--trial-resource", "host_b=1")
    c.hold_trials()
    with driver_on_a(c, args):
        held = _wait("two trials to hold on host B", lambda: len(c.held()) == 2 and c.held())
        c.release(held[0])
        _wait("one trial to finish", lambda: c.read_json(exp, held[0], "outcome.json"))
        held = _wait("the next trial to hold", lambda: [
            t for t in c.held() if t != held[0]] if len(c.held()) == 3 else None)
        _wait("the snapshot to name the held checkpoints",
              lambda: _snapshotted(c, exp, held), every=1)
    r = c.cli(c.b, *args, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    table = _table(c, exp, c.b)
    decisions = c.read_json(exp, "decisions.json", host=c.b)
    assert set(decisions["tune_lr"]["chosen"]) == {"baseline", "high_lr"}, decisions
    # 2 arms x (3 lrs, a second seed at the centre and both ends, then 1 seed at the chosen lr)
    assert len(table) == 14 and {t["status"] for t in table} == {"completed"}, table
    assert len({t["trial_id"] for t in table}) == 14


def _job_state(c: Cluster, name: str) -> str | None:
    """The job server's state of a submitted sweep, as `status` on host B reports it (None
    until its driver has written sweep.json)."""
    r = c.cli(c.b, "tune_ablations.status", name, "--storage", BUCKET, "--json",
              "--job-address", c.jobs)
    lines = r.stdout.strip().splitlines()
    return json.loads(lines[-1]).get("job") if lines else None


def _spellings(*values: str) -> list[str]:
    forms = {f for v in values for f in (v, quote(v, safe=""), quote_plus(v, safe=""),
                                         quote(v))}
    return sorted(forms | {f.encode().hex() for f in forms})  # Ray's JSON holds pickles as hex


def _found(c: Cluster, host, patterns: Path) -> str:
    """`file:pattern` for each file on a host (its private /tmp with Ray's logs, its caches and
    ~/.ray) that holds a pattern; empty when none does."""
    r = host.run(["sh", "-c", f"grep -r -a -o -F -f {patterns} /tmp /root/.cache /root/.ray "
                              "2>/dev/null | sort -u; true"], c.env)
    return r.stdout.strip()


def test_planted_secrets_reach_no_byte_the_sweep_writes(cluster):
    """A unique secret in each place a user puts one: an S3 secret inside the --storage URI, an
    S3 secret in the driver's environment, a PostgreSQL password inside --study-storage (a role
    PostgreSQL admits by that password only), and a submitting machine's environment. Searched,
    as is, URL-encoded and hex-encoded: every object in the bucket, every file on both hosts
    (Ray's logs, caches, job records), the job server's records (its job list, drivers'
    entrypoints included, and every job's logs) and each command's output."""
    c = cluster
    _postgres(c)
    uri_s3, env_s3, job_s3 = ("S3uri/" + secrets.token_hex(6) + "@+k", "S3env/" +
                              secrets.token_hex(6) + "+e", "S3job/" + secrets.token_hex(6))
    planted = [uri_s3, env_s3, job_s3, c.pg_password]
    patterns = c.bed.control / "patterns.txt"
    patterns.write_text("\n".join(_spellings(*planted)) + "\n")
    storage = f"s3://KEYID:{quote(uri_s3, safe='')}@sweeps/secrets"
    study = (f"postgresql+psycopg://{PG_USER}:{quote(c.pg_password, safe='')}@{c.a.ip}:5432/"
             f"{PG_USER}")
    outputs = []
    search = c.a.run([sys.executable, "-m", "tune_ablations.search", "--space", "lr",
                      "--preset", "tiny", "--data", CORPUS, "--set", "vocab_size=300",
                      "text_samples=0", "max_steps=200", "--num-samples", "2",
                      "--trial-resource", "host_b=1", "--address", c.address, "--storage",
                      storage, "--name", "planted", "--study-storage", study],
                     c.env | {"AWS_SECRET_ACCESS_KEY": env_s3}, timeout=600)
    outputs.append(search.stdout + search.stderr)
    assert search.returncode == 0, search.stderr[-3000:]
    status = c.cli(c.b, "tune_ablations.status", "planted", "--storage", storage, "--json")
    outputs.append(status.stdout + status.stderr)
    assert status.returncode == 0, status.stderr[-2000:]
    sub_env = c.env | {"AWS_SECRET_ACCESS_KEY": job_s3}
    refused = c.a.run([sys.executable, "-m", "tune_ablations.submit", "search", "--space", "lr",
                       "--job-address", c.jobs, "--storage", BUCKET, "--study-storage",
                       study], sub_env)
    outputs.append(refused.stdout + refused.stderr)
    assert refused.returncode == 2 and "PGPASSWORD" in refused.stderr, refused.stderr[-2000:]
    sub = c.a.run([sys.executable, "-m", "tune_ablations.submit", "grid", "--job-address",
                   c.jobs, "--python", sys.executable, *grid_args(
                       c, "planted-job", "--ablations", "baseline", "--seeds", "1",
                       "--trial-resource", "host_b=1", address=False)[1:]], sub_env)
    outputs.append(sub.stdout + sub.stderr)
    assert sub.returncode == 0, sub.stderr[-3000:]
    _wait("the job to end", lambda: _job_state(c, "planted-job") in (
        "SUCCEEDED", "FAILED", "STOPPED"), every=2)
    records = c.py(  # the job server's own records: every job (drivers too) and its logs
        "from ray.job_submission import JobSubmissionClient\n"
        f"client = JobSubmissionClient({c.jobs!r})\n"
        "for job in client.list_jobs():\n"
        "    print(repr(job))\n"
        "    if job.submission_id:\n"
        "        print(client.get_job_logs(job.submission_id))\n")
    assert "planted-job" in records and "tune_ablations.search" in records
    bucket = c.py(  # every object in the bucket that holds a planted secret
        "import boto3\n"
        f"patterns = [p.encode() for p in open({str(patterns)!r}).read().split()]\n"
        "s3 = boto3.client('s3')\n"
        "keys = [o['Key'] for page in s3.get_paginator('list_objects_v2').paginate("
        "Bucket='sweeps') for o in page.get('Contents', [])]\n"
        "assert any(k.startswith('secrets/planted/') for k in keys), keys\n"
        "bodies = {k: s3.get_object(Bucket='sweeps', Key=k)['Body'].read() for k in keys}\n"
        "print('\\n'.join(k for k, body in bodies.items() if any(p in body for p in patterns)))")
    spellings = _spellings(*planted)
    assert not [s for s in spellings if s in records], "a secret in the job server's records"
    assert not [s for s in spellings for out in outputs if s in out], "a secret in an output"
    assert bucket.strip() == "", f"objects holding a secret: {bucket}"
    for host in c.bed.hosts:
        found = _found(c, host, patterns)
        assert found == "", f"files on host {host.name} hold a secret: {found}"
