"""`--tracker mlflow|wandb`: options refused before Ray with one line, the MLflow callback fed
synthetic trials (a real MLflow file store, read back with MLflow's client, including a restore
from Ray's pickle), and real tiny grids logged to an MLflow file store and to W&B offline runs,
each read back and compared with the experiment's own records. Nothing reaches the network:
MLflow's telemetry is off, W&B runs offline."""

import glob
import json
import struct
from pathlib import Path

import pytest

from tune_ablations import grid, search
from tune_ablations.results.frames import load
from tune_ablations.spec.config import to_flat_dict
from tune_ablations.spec.resolve import resolve
from tune_ablations.spec.runspec import RunSpec
from tune_ablations.sweeps import trackers
from tune_ablations.sweeps.options import stored
from tune_ablations.sweeps.trackers import TrackerOptions


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network: MLflow without telemetry (its file store allowed), W&B offline with its
    files, settings and login under tmp_path."""
    for key, value in {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
                       "MLFLOW_ALLOW_FILE_STORE": "true", "WANDB_MODE": "offline",
                       "WANDB_DIR": str(tmp_path / "wandb-dir"), "WANDB_SILENT": "true",
                       "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"),
                       "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache")}.items():
        monkeypatch.setenv(key, value)
    for key in ("MLFLOW_TRACKING_URI", "WANDB_API_KEY", "WANDB_PROJECT", "WANDB_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    for name in ("wandb-dir", "wandb-config", "wandb-cache"):  # else wandb writes under cwd
        (tmp_path / name).mkdir()


def _args(corpus, storage, name, *extra):
    return ["--preset", "tiny", "--data", str(corpus), "--set", "vocab_size=300",
            "text_samples=0", "--storage", str(storage), "--name", name, *extra]


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# --- refused before Ray, with one line --------------------------------------------------------

@pytest.mark.parametrize("extra, message", [
    (["--tracker", "neptune"], "--tracker='neptune' must be one of mlflow, wandb"),
    (["--tracker-uri", "sqlite:///x.db"], "--tracker-uri needs --tracker (mlflow or wandb)"),
    (["--tracker", "mlflow", "--tracker-uri", "http://bob:hunter2@127.0.0.1:5000"],
     "--tracker-uri='http://***@127.0.0.1:5000' must not hold credentials"),
    (["--tracker", "wandb", "--tracker-project", " "], "--tracker-project=' ' must name"),
])
def test_bad_tracker_options_fail_with_one_line(corpus_dir, tmp_path, capsys, extra, message):
    assert grid.main(_args(corpus_dir, tmp_path, "bad", *extra)) == 2
    err = capsys.readouterr().err
    assert message in _one_error_line(err) and "hunter2" not in err
    assert not (tmp_path / "bad").exists()


def test_search_takes_the_same_tracker_options(corpus_dir, tmp_path, capsys):
    argv = ["--space", "lr", *_args(corpus_dir, tmp_path, "s")]
    assert search.main([*argv, "--tracker", "mlfow"]) == 2
    assert "--tracker='mlfow' must be one of mlflow, wandb" in _one_error_line(
        capsys.readouterr().err)
    args = search.parser().parse_args([*argv, "--tracker", "wandb", "--tracker-project", "p"])
    assert trackers.tracker_from_args(args, None) == TrackerOptions(tracker="wandb",
                                                                    tracker_project="p")


def test_a_missing_package_names_the_extra(corpus_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(trackers.PACKAGES, "mlflow", ("mlflow_is_not_here", "mlflow-skinny"))
    assert grid.main(_args(corpus_dir, tmp_path, "nopkg", "--tracker", "mlflow")) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "--tracker mlflow needs the mlflow-skinny package" in line
    assert "pip install 'tune-ablations[trackers]'" in line
    assert not (tmp_path / "nopkg").exists()


def test_an_mlflow_store_that_cannot_be_used_fails_before_any_data(corpus_dir, tmp_path, capsys,
                                                                    offline):
    """A server that does not answer (nothing listens on the port) and a scheme MLflow does not
    know: one line each, nothing written, no data prepared."""
    pytest.importorskip("mlflow")
    from conftest import free_port

    for uri in (f"http://127.0.0.1:{free_port()}", "nosuchscheme://x"):
        assert grid.main(_args(corpus_dir, tmp_path, "dead", "--tracker", "mlflow",
                               "--tracker-uri", uri)) == 2
        line = _one_error_line(capsys.readouterr().err)
        assert f"--tracker-uri '{uri}': MLflow cannot use this tracking store" in line
        assert not (tmp_path / "dead").exists()


def test_wandb_online_without_a_key_fails_before_ray(tmp_path, monkeypatch, offline):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: not logged in
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    with pytest.raises(trackers.SweepError, match="no W&B API key .* WANDB_MODE=offline"):
        trackers.open_tracker(TrackerOptions(tracker="wandb"), "sweep")
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert trackers.open_tracker(TrackerOptions(tracker="wandb"), "sweep") == TrackerOptions(
        tracker="wandb", tracker_project="tune-ablations")


def test_open_tracker_resolves_where_mlflow_runs_go(tmp_path, monkeypatch, offline):
    """No --tracker-uri: $MLFLOW_TRACKING_URI; the experiment is the sweep's name, created."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    opts = trackers.open_tracker(TrackerOptions(tracker="mlflow"), "grid-tiny-1")
    assert opts == TrackerOptions(tracker="mlflow", tracker_uri=store,
                                  tracker_project="grid-tiny-1")
    assert MlflowClient(store).get_experiment_by_name("grid-tiny-1").lifecycle_stage == "active"


def _stored_sweep(tmp_path, corpus_dir, *tracker) -> list[str]:
    from tune_ablations.results.experiment import Experiment
    from tune_ablations.sweeps.options import ResourceOptions
    from tune_ablations.training.resolved import Resolver

    argv = _args(corpus_dir, tmp_path, "r", "--ablations", "baseline", "--seeds", "1", *tracker)
    args = grid.parser().parse_args(argv)
    plan = grid.build_plan(args, None, 0, ResourceOptions(), Resolver())
    Experiment(tmp_path / "r").write_json({
        **plan.record, "kind": "grid", "name": "r", "resources": stored(ResourceOptions()),
        "tracker": stored(trackers.tracker_from_args(args, None)),
        "created": "2026-01-01T00:00:00"}, "sweep.json")
    return argv


@pytest.mark.parametrize("extra, message", [
    (["--tracker", "wandb"], "--tracker 'wandb' differs from the stored sweep's 'mlflow'"),
    (["--tracker-uri", "file:///elsewhere"], "--tracker-uri 'file:///elsewhere' differs from "
     "the stored sweep's 'file:///runs'"),
])
def test_resume_refuses_a_changed_tracker(corpus_dir, tmp_path, capsys, extra, message):
    _stored_sweep(tmp_path, corpus_dir, "--tracker", "mlflow", "--tracker-uri", "file:///runs")
    assert grid.main(["--storage", str(tmp_path), "--name", "r", "--resume", *extra]) == 2
    assert message in _one_error_line(capsys.readouterr().err)


def test_resume_accepts_the_same_tracker_and_refuses_one_added(corpus_dir, tmp_path, capsys):
    """The same command with --resume appended, or --resume alone: the stored tracker."""
    argv = _stored_sweep(tmp_path, corpus_dir, "--tracker", "mlflow", "--tracker-uri",
                         "file:///runs")
    record = json.loads((tmp_path / "r" / "sweep.json").read_text())
    want = TrackerOptions(tracker="mlflow", tracker_uri="file:///runs")
    for given in ([*argv, "--resume"], ["--resume"]):
        args = grid.parser().parse_args(given)
        assert trackers.tracker_from_args(args, record) == want
    (tmp_path / "r" / "sweep.json").unlink()
    _stored_sweep(tmp_path, corpus_dir)  # a sweep that started without a tracker
    assert grid.main(["--storage", str(tmp_path), "--name", "r", "--resume", "--tracker",
                      "mlflow"]) == 2
    assert "--tracker 'mlflow' differs from the stored sweep's None" in _one_error_line(
        capsys.readouterr().err)


# --- the MLflow callback, fed synthetic trials -----------------------------------------------

class FakeTrial:
    """What a Ray logger callback reads of a trial: its id, Ray's config, its last result."""

    def __init__(self, trial_id: str, config: dict):
        self.trial_id, self.config, self.last_result = trial_id, config, {}

    __hash__ = object.__hash__


def _report(tokens: int, loss: float, status: str = "running") -> dict:
    """A trial's report as Ray hands it to callbacks: the trainer's keys and Ray's own."""
    return {"step": tokens // 128, "tokens_seen": tokens, "val_loss": loss,
            "val_loss@code": loss + 1.0, "diverged": False, "status": status,
            "training_iteration": 99, "time_this_iter_s": 0.5, "pid": 4242, "done": False}


def _feed(cb, trial, reports, *, end: bool = True, failed: bool = False) -> None:
    cb.log_trial_start(trial)
    for r in reports:
        cb.log_trial_result(1, trial, r)
        trial.last_result = r
    if end:
        cb.log_trial_end(trial, failed=failed)


def _history(client, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_mlflow_callback_logs_configs_metrics_by_tokens_and_statuses(tmp_path, offline, capsys):
    """Synthetic trials as Ray hands them to the callback: a completed one, a search's sample
    stopped by the scheduler, a crashed one, and one whose driver died, continued after the
    callback's round trip through Ray's pickle (what --resume does)."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from ray import cloudpickle

    store = (tmp_path / "mlruns").as_uri()
    base = RunSpec(preset="tiny")
    cb = trackers.build_tracker("mlflow", uri=store, project="grid-x", sweep="grid-x",
                                kind="grid", base=base.to_dict(), vocab={},
                                results="s3://KEY:SECRET@bucket/grid-x")
    cb.setup()
    done = FakeTrial("aaaa_00000", {"ablation": "high_lr", "seed": 1})
    _feed(cb, done, [_report(128, 5.0), _report(256, 4.0), _report(384, 3.5, "completed")])
    sampled = {"ablation": "baseline", "seed": 0, "lr": 1e-3, "batch_size": 8}  # a search's
    stopped = FakeTrial("aaaa_00001", sampled)
    _feed(cb, stopped, [_report(128, 6.0)])  # ended by the scheduler while running
    crashed = FakeTrial("aaaa_00002", {"ablation": "baseline", "seed": 1})
    _feed(cb, crashed, [_report(128, 6.5)], failed=True)
    killed = FakeTrial("aaaa_00003", {"ablation": "low_lr", "seed": 0})
    _feed(cb, killed, [_report(128, 7.0), _report(256, 6.0)], end=False)  # the driver died

    # --resume: Ray unpickles the callback from tuner.pkl and sets it up again.
    again = cloudpickle.loads(cloudpickle.dumps(cb))
    again.setup()
    _feed(again, FakeTrial("aaaa_00003", {"ablation": "low_lr", "seed": 0}),
          [_report(256, 6.0), _report(384, 5.5, "completed")])

    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("grid-x").experiment_id])
    by_id = {r.data.tags["trial_id"]: r for r in runs}
    assert len(runs) == 4 and set(by_id) == {f"aaaa_0000{i}" for i in range(4)}
    run = by_id["aaaa_00000"]
    expected = to_flat_dict(resolve(RunSpec(preset="tiny", ablation="high_lr", seed=1)))
    assert run.data.params == {k: str(v) for k, v in expected.items()}
    assert float(run.data.params["lr"]) > to_flat_dict(resolve(base))["lr"]  # high_lr's own lr
    assert run.info.run_name.startswith("high_lr-s1-aaaa_00000")
    assert {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")} == {
        "sweep": "grid-x", "kind": "grid", "ablation": "high_lr", "seed": "1",
        "trial_id": "aaaa_00000", "status": "completed", "results": "s3://***@bucket/grid-x"}
    assert run.info.status == "FINISHED"
    assert _history(client, run.info.run_id, "val_loss") == [(128, 5.0), (256, 4.0), (384, 3.5)]
    assert _history(client, run.info.run_id, "val_loss.code") == [(128, 6.0), (256, 5.0),
                                                                  (384, 4.5)]
    assert _history(client, run.info.run_id, "diverged") == [(128, 0.0), (256, 0.0), (384, 0.0)]
    assert set(run.data.metrics) == {"step", "tokens_seen", "val_loss", "val_loss.code",
                                     "diverged"}  # nothing of Ray's bookkeeping
    stopped = by_id["aaaa_00001"]
    assert stopped.data.tags["status"] == "early_stopped"
    assert stopped.data.params == {k: str(v) for k, v in to_flat_dict(resolve(RunSpec(
        preset="tiny").with_params(lr=1e-3, batch_size=8))).items()}
    assert (stopped.data.params["lr"], stopped.data.params["batch_size"]) == ("0.001", "8")
    assert stopped.info.run_name.startswith("baseline-s0-batch_size8-lr0.001-aaaa_00001")
    assert (by_id["aaaa_00002"].data.tags["status"], by_id["aaaa_00002"].info.status) == (
        "error", "FAILED")
    resumed = by_id["aaaa_00003"]
    assert resumed.data.tags["resumed"] == "true" and resumed.data.tags["status"] == "completed"
    assert resumed.info.status == "FINISHED"
    assert _history(client, resumed.info.run_id, "val_loss") == [(128, 7.0), (256, 6.0),
                                                                 (384, 5.5)]  # 256 once
    assert "tracker_error" not in capsys.readouterr().err


def test_a_tracker_error_is_one_line_and_the_sweep_goes_on(tmp_path, offline, capsys):
    pytest.importorskip("mlflow")
    from tune_ablations.sweeps.tracker_callbacks import MLflowTracker, TrialContext

    context = TrialContext(sweep="g", kind="grid", base=RunSpec(preset="tiny").to_dict(),
                           vocab={}, results="r")
    cb = MLflowTracker(tracking_uri=(tmp_path / "mlruns").as_uri(), experiment_name="g",
                       context=context)
    cb.setup()
    bad = FakeTrial("bbbb_00000", {"ablation": "no_such_arm", "seed": 0})
    _feed(cb, bad, [_report(128, 5.0), _report(256, 4.0)])  # raises nothing
    err = [line for line in capsys.readouterr().err.splitlines() if "tracker_error" in line]
    assert len(err) == 1 and "tracker=mlflow trial=bbbb_00000 error=ValueError" in err[0]


# --- real sweeps ------------------------------------------------------------------------------

def _history_by_trial(exp: Path, trial_id: str):
    res = load(exp)
    hist = res.history[res.history["trial_id"] == trial_id].drop(
        columns=["trial_id", "ablation", "seed"])
    return hist.dropna(axis=1, how="all")


@pytest.mark.slow
def test_grid_logs_every_trial_to_an_mlflow_file_store(ray_session, corpus_dir, tmp_path,
                                                       offline):
    """One run per trial: params equal the resolved config in the trial's run.json, the metric
    histories keyed by tokens_seen equal the experiment's history table, tags with the arm,
    seed and final status; sweep.json stores where the runs went."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = (tmp_path / "mlruns").as_uri()
    assert grid.main(_args(corpus_dir, tmp_path, "tracked", "--ablations", "baseline",
                           "high_lr", "--seeds", "1", "--set", "max_steps=20", "eval_every=10",
                           "--tracker", "mlflow", "--tracker-uri", store)) == 0
    exp = tmp_path / "tracked"
    assert json.loads((exp / "sweep.json").read_text())["tracker"] == {
        "tracker": "mlflow", "tracker_uri": store, "tracker_project": "tracked"}
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("tracked").experiment_id])
    trials = load(exp).trials
    assert len(runs) == len(trials) == 2
    by_id = {r.data.tags["trial_id"]: r for r in runs}
    for _, row in trials.iterrows():
        run = by_id[row["trial_id"]]
        config = json.loads((Path(row["path"]) / "run.json").read_text())["config"]
        assert run.data.params == {k: str(v) for k, v in config.items()}
        tags = run.data.tags
        assert (tags["ablation"], tags["seed"], tags["status"]) == (
            row["ablation"], str(row["seed"]), str(row["status"]))
        assert (tags["sweep"], tags["kind"], run.info.run_name, run.info.status) == (
            "tracked", "grid", row["folder"], "FINISHED")
        hist = _history_by_trial(exp, row["trial_id"])
        assert len(hist) == 2
        for key in hist.columns:
            assert _history(client, run.info.run_id, key) == [
                (int(t), float(v)) for t, v in zip(hist["tokens_seen"], hist[key])], key
    assert set(trials["status"].astype(str)) == {"completed"}


def read_wandb_run(folder: Path) -> dict:
    """A W&B offline run folder, read from the records wandb wrote (its `run-<id>.wandb` file:
    LevelDB-log framing around wandb's own protobuf `Record`s): the run, its config, history
    rows and summary."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = next(folder.glob("run-*.wandb")).read_bytes()
    assert struct.unpack("<4sHB", data[:7])[:2] == (b":W&B", 0xBEE1)
    block, header = 32768, 7
    out: dict = {"run": None, "config": {}, "history": [], "summary": {}}
    pos, chunks = 7, b""
    while pos + header <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos:pos + header]) if left >= header else \
            (0, 0, 0)
        if kind == 0:  # the rest of the block is padding
            pos += left
            continue
        chunks += data[pos + header:pos + header + length]
        pos += header + length
        if kind in (1, 4):  # a full record, or the last chunk of one
            record, chunks = pb.Record.FromString(chunks), b""
            _read_record(record, out)
    return out


def _items(items) -> dict:
    """wandb's key/value items (a key is `key`, or the path `nested_key`), without its own."""
    out = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}
    return {k: v for k, v in out.items() if not k.startswith("_")}


def _read_record(record, out: dict) -> None:
    kind = record.WhichOneof("record_type")
    if kind == "run":
        out["run"] = record.run
        out["config"].update(_items(record.run.config.update))
    elif kind == "history":
        out["history"].append(_items(record.history.item))
    elif kind == "summary":
        out["summary"].update(_items(record.summary.update))


@pytest.mark.slow
def test_grid_logs_every_trial_to_wandb_offline(ray_session, corpus_dir, tmp_path, offline):
    """WANDB_MODE=offline: one offline run folder per trial under $WANDB_DIR, whose config is
    the resolved config (plus arm, trial id, sweep), whose history rows are the experiment's
    history table (tokens_seen the step metric) and whose tags end with the trial's status."""
    pytest.importorskip("wandb")
    assert grid.main(_args(corpus_dir, tmp_path, "wtracked", "--ablations", "baseline",
                           "high_lr", "--seeds", "1", "--set", "max_steps=20", "eval_every=10",
                           "--tracker", "wandb", "--tracker-project", "ablations")) == 0
    exp = tmp_path / "wtracked"
    trials = load(exp).trials
    for _, row in trials.iterrows():
        folders = glob.glob(str(tmp_path / "wandb-dir" / "wandb" / f"offline-run-*-"
                                f"{row['trial_id']}"))
        assert len(folders) == 1, folders
        got = read_wandb_run(Path(folders[0]))
        run = got["run"]
        assert (run.run_id, run.project, run.run_group, run.job_type, run.display_name) == (
            row["trial_id"], "ablations", "wtracked", "grid", row["folder"])
        assert list(run.tags) == ["grid", "wtracked", "completed"]
        config = json.loads((Path(row["path"]) / "run.json").read_text())["config"]
        assert got["config"] == {**config, "ablation": row["ablation"],
                                 "trial_id": row["trial_id"], "sweep": "wtracked",
                                 "kind": "grid", "results": str(exp)}
        hist = _history_by_trial(exp, row["trial_id"])
        assert [{k: r[k] for k in hist.columns} for r in got["history"]] == [
            {k: float(v) for k, v in r.items()} for r in hist.to_dict("records")]
        assert got["summary"]["status"] == "completed"


def _kill_while_held(corpus_dir, tmp_path, *tracker) -> Path:
    """A one-trial grid whose driver (and local Ray) is SIGKILLed while the trial holds at step
    40 of 60 and Ray's persisted snapshot names that step's checkpoint; returns its folder."""
    from test_grid import _run_until_held, _snapshot_names

    exp = tmp_path / "killed"
    argv = _args(corpus_dir, tmp_path, "killed", "--ablations", "baseline", "--seeds", "1",
                 "--set", "max_steps=60", "eval_every=20", *tracker)
    hold = tmp_path / "hold"
    _run_until_held(argv, exp, hold, f"40:{hold}:baseline",
                    lambda: _snapshot_names(exp, "baseline-s0", "checkpoint_000001"))
    return exp


def _resume(tmp_path) -> None:
    assert grid.main(["--storage", str(tmp_path), "--name", "killed", "--resume"]) == 0


@pytest.mark.extended  # a driver killed and resumed: test_grid covers the kill itself
def test_a_resumed_sweep_continues_its_mlflow_runs(ray_session, corpus_dir, tmp_path, offline):
    """After a driver kill, `--resume`: Ray restores the callback, which finds the trial's
    MLflow run again and continues it to the end; the run's history equals the experiment's,
    each evaluation once (repeats after a checkpoint: the synthetic test above)."""
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    store = (tmp_path / "mlruns").as_uri()
    exp = _kill_while_held(corpus_dir, tmp_path, "--tracker", "mlflow", "--tracker-uri", store)
    client = MlflowClient(store)
    experiment_id = client.get_experiment_by_name("killed").experiment_id
    before = client.search_runs([experiment_id])
    assert len(before) == 1 and before[0].info.status == "RUNNING"
    _resume(tmp_path)
    runs = client.search_runs([experiment_id])
    assert [r.info.run_id for r in runs] == [before[0].info.run_id]  # the same run, continued
    run, trials = runs[0], load(exp).trials
    assert (run.data.tags["resumed"], run.data.tags["status"], run.info.status) == (
        "true", "completed", "FINISHED")
    hist = _history_by_trial(exp, trials["trial_id"].iloc[0])
    assert list(hist["step"]) == [20, 40, 60]
    for key in ("val_loss", "train_loss", "step"):
        assert _history(client, run.info.run_id, key) == [
            (int(t), float(v)) for t, v in zip(hist["tokens_seen"], hist[key])], key


@pytest.mark.extended
def test_a_resumed_sweep_continues_its_wandb_runs(ray_session, corpus_dir, tmp_path, offline):
    """After a driver kill, `--resume` with W&B offline: a second offline folder with the same
    run id, sent first what Ray had recorded (the killed driver took W&B's unflushed records
    with it), then the rest to the end: between the two folders every evaluation of the
    experiment's history, each equal to its row."""
    pytest.importorskip("wandb")
    exp = _kill_while_held(corpus_dir, tmp_path, "--tracker", "wandb")
    _resume(tmp_path)
    trial_id = load(exp).trials["trial_id"].iloc[0]
    folders = sorted(glob.glob(str(tmp_path / "wandb-dir" / "wandb" / f"*-{trial_id}")))
    assert len(folders) == 2, folders
    first, second = (read_wandb_run(Path(f)) for f in folders)
    assert second["run"].run_id == trial_id and second["summary"]["status"] == "completed"
    hist = _history_by_trial(exp, trial_id)
    by_tokens = {int(r["tokens_seen"]): r for r in hist.to_dict("records")}
    tokens = [int(r["tokens_seen"]) for r in second["history"]]
    assert tokens == sorted(set(tokens)) and tokens[-1] == max(by_tokens)  # once each, to the end
    rows = first["history"] + second["history"]
    assert {int(r["tokens_seen"]) for r in rows} == set(by_tokens)
    for r in rows:
        assert {k: r[k] for k in hist.columns} == {
            k: float(v) for k, v in by_tokens[int(r["tokens_seen"])].items()}
