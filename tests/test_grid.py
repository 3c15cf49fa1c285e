"""The grid end to end on one session-scoped local Ray, plus a driver killed mid-sweep."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tune_ablations import grid

pytestmark = pytest.mark.slow


def _args(corpus, storage, name, *extra):
    return ["--preset", "tiny", "--data", str(corpus), "--set", "vocab_size=300",
            "text_samples=1", "--storage", str(storage), "--name", name, *extra]


def test_two_ablation_grid_end_to_end(ray_session, corpus_dir, tmp_path, capsys):
    code = grid.main(_args(corpus_dir, tmp_path, "two", "--ablations", "baseline", "high_lr",
                           "--seeds", "2"))
    assert code == 0
    exp = tmp_path / "two"
    df = pd.read_parquet(exp / "results.parquet")
    assert len(df) == 4 and len(pd.read_csv(exp / "results.csv")) == 4
    assert sorted(zip(df["ablation"], df["seed"])) == [("baseline", 0), ("baseline", 1),
                                                       ("high_lr", 0), ("high_lr", 1)]
    assert set(df["status"]) == {"completed"}
    assert (df.loc[df["ablation"] == "high_lr", "lr"] > df.loc[df["ablation"] == "baseline",
                                                              "lr"].max()).all()
    hist = pd.read_parquet(exp / "history.parquet")
    assert len(hist) == 4 * 3
    assert hist.groupby("trial_id")["tokens_seen"].is_monotonic_increasing.all()
    for trial in df["path"]:
        run = json.loads((Path(trial) / "run.json").read_text())
        assert {"config", "seed", "versions", "git_sha", "data"} <= set(run)
    out = capsys.readouterr().out
    assert "val_loss" in out and "+-" in out  # summary with mean +- std across seeds
    assert json.loads((exp / "sweep.json").read_text())["seeds"] == 2


def test_fractional_gpu_scheduling(ray_session, corpus_dir, tmp_path):
    """num_gpus=1 is logical here: two trials at 0.5 GPU each are placed and run."""
    code = grid.main(_args(corpus_dir, tmp_path, "frac", "--ablations", "baseline", "low_lr",
                           "--gpus-per-trial", "0.5", "--set", "max_steps=10", "eval_every=5"))
    assert code == 0
    run = json.loads(next((tmp_path / "frac").glob("*/run.json")).read_text())
    assert run["gpu_fraction"] == 0.5


def test_gpu_preflight_fails_fast(ray_session, corpus_dir, tmp_path, capsys):
    code = grid.main(_args(corpus_dir, tmp_path, "nogpu", "--gpus-per-trial", "2"))
    assert code == 2
    assert "PENDING forever" in capsys.readouterr().err
    assert not (tmp_path / "nogpu").exists()


def test_diverging_and_failing_trials_are_recorded(ray_session, corpus_dir, tmp_path):
    """A diverged trial and a crashing one (bad device, like an OOM) do not stop the sweep."""
    from ray import tune

    from tune_ablations.config import METRIC, MODE
    from tune_ablations.results import load_results
    from tune_ablations.sweep import finish, run_tuner
    from tune_ablations.trainable import build_trainable

    exp = tmp_path / "mixed"
    space = {"preset": "tiny", "corpus": str(corpus_dir), "vocab_size": 300, "text_samples": 0,
             "warmup_steps": 0, "grad_clip": 0.0,
             "lr": tune.grid_search([3e-3, 10.0]), "device": tune.grid_search(["cpu", "cuda:7"])}
    results = run_tuner(build_trainable(cpus=1, gpus=0, cache_dir=None, sha=None), space,
                        exp=exp, resume=False, tune_config=tune.TuneConfig(metric=METRIC,
                                                                           mode=MODE),
                        max_failures=0, keep_checkpoints=1, parameter_columns=["lr"])
    df, code = finish(exp, results, started=time.perf_counter())
    assert code == 1
    by = {(r.lr, r.device): r.status for r in load_results(exp).itertuples()}
    assert by[(3e-3, "cpu")] == "completed"
    assert by[(10.0, "cpu")] == "diverged"
    assert by[(3e-3, "cuda:7")] == by[(10.0, "cuda:7")] == "error"
    err = load_results(exp).query("status == 'error'")
    assert err["error"].str.len().min() > 0
    assert all((Path(p) / "error.txt").exists() for p in err["path"])


def test_dry_run_prints_plan_and_writes_nothing(corpus_dir, tmp_path, capsys):
    assert grid.main(_args(corpus_dir, tmp_path, "plan", "--dry-run")) == 0
    out = capsys.readouterr().out
    for name in ("baseline", "high_lr", "low_lr", "large_batch", "short_seq", "small_model"):
        assert name in out
    assert "est_wall_seconds=" in out and "PFLOP=" in out
    assert not (tmp_path / "plan").exists()


@pytest.mark.parametrize("extra, message", [
    (["--ablations", "baseline", "hi_lr"], "unknown ablation 'hi_lr'; did you mean 'high_lr'"),
    (["--seeds", "0"], "--seeds=0 must be >= 1"),
    (["--set", "lr=-1"], "lr=-1 must be > 0"),
    (["--set", "d_model=250", "n_heads=4"], "d_model=250 must be divisible by n_heads=4"),
    (["--set", "seq_len=100000"], "must be <= max_seq_len"),
    (["--data", "/no/such/corpus"], "is not an embedded corpus"),
    (["--tokens", "0"], "--tokens=0 must be > 0"),
    (["--resume"], "--resume: no sweep at"),
])
def test_bad_input_rejected_before_ray(corpus_dir, tmp_path, capsys, extra, message):
    args = _args(corpus_dir, tmp_path, "bad", *extra)
    if extra[0] == "--data":
        args[args.index(str(corpus_dir))] = extra[1]
        extra = []
    assert grid.main(args + extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_existing_name_refused_without_resume(corpus_dir, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "sweep.json").write_text("{}")
    assert grid.main(_args(corpus_dir, tmp_path, "taken")) == 2
    assert "already exists; add --resume" in capsys.readouterr().err


def _reports(trial: Path) -> list[dict]:
    try:
        return [json.loads(x) for x in (trial / "result.json").read_text().splitlines() if x]
    except (OSError, ValueError):
        return []


def _run_until(args, exp, condition, timeout=240):
    """Start the grid CLI in its own process group; SIGKILL the group once `condition()`."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tune_ablations.grid", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            found = condition()
            if found:
                return found
            assert proc.poll() is None, "sweep ended before it could be killed"
            time.sleep(0.1)
        pytest.fail("the kill point was never reached")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended by itself: the assertion above says so
            pass
        proc.wait()
        time.sleep(1)


def test_killed_sweep_resumes_from_checkpoints(ray_session, corpus_dir, tmp_path):
    """SIGKILL the driver (and its local Ray) twice: once when a trial has finished and another
    is part-way, again part-way through the resumed sweep. --resume then finishes every trial,
    reruns no finished one, and continues the other from its checkpoints."""
    exp = tmp_path / "killed"
    # Tiny trials checkpoint several times a second: keep enough that the checkpoint named by
    # Ray's last experiment snapshot (every second) still exists after the kill.
    args = _args(corpus_dir, tmp_path, "killed", "--ablations", "baseline", "high_lr",
                 "small_model", "--keep-checkpoints", "6", "--set", "max_steps=2000",
                 "eval_every=100", "text_samples=0")

    def finished_and_partial():
        trials = list(exp.glob("run_trial_*")) if exp.exists() else []
        done = {t: (t / "outcome.json").stat().st_mtime for t in trials
                if (t / "outcome.json").exists()}
        part = next((t for t in trials if t not in done and 300 <= max(
            [r["step"] for r in _reports(t)] or [0]) <= 1000), None)  # room left to kill again
        return (done, part) if done and part else None

    finished, partial = _run_until(args, exp, finished_and_partial)
    first_kill = max(r["step"] for r in _reports(partial))
    assert first_kill < 2000

    def further():
        steps = [r["step"] for r in _reports(partial)]
        return max(steps) if steps and max(steps) >= first_kill + 200 and not (
            partial / "outcome.json").exists() else None

    second_kill = _run_until(["--storage", str(tmp_path), "--name", "killed", "--resume"], exp,
                             further)
    assert second_kill < 2000
    assert grid.main(["--storage", str(tmp_path), "--name", "killed", "--resume"]) == 0
    df = pd.read_parquet(exp / "results.parquet")
    assert len(df) == 3 and set(df["status"]) == {"completed"}
    for t, mtime in finished.items():  # finished trials were not rerun
        assert (t / "outcome.json").stat().st_mtime == mtime
    outcome = json.loads((partial / "outcome.json").read_text())
    resumed = outcome["resumed_from"]
    assert resumed[0] >= 100 and resumed[0] <= first_kill
    assert resumed[-1] > first_kill and resumed[-1] <= second_kill
    assert outcome["steps"] == 2000


def test_resume_refuses_changed_flags(corpus_dir, tmp_path, capsys):
    """A flag given with --resume that differs from the stored sweep is refused by name."""
    from tune_ablations.sweep import write_sweep_file

    exp = tmp_path / "r"
    write_sweep_file(exp, {"kind": "grid", "shared": {"preset": "tiny"}, "ablations":
                           ["baseline"], "seeds": 1, "cpus_per_trial": 1.0,
                           "gpus_per_trial": 0.0, "max_failures": 2, "keep_checkpoints": 2,
                           "trial_resources": {}})
    base = ["--storage", str(tmp_path), "--name", "r", "--resume"]
    for extra, message in ((["--max-failures", "5"], "--max-failures=5 differs from the "
                            "stored sweep's 2"),
                           (["--keep-checkpoints", "4"], "--keep-checkpoints=4 differs"),
                           (["--trial-resource", "fast=1"], "--trial-resource={'fast': 1.0}"),
                           (["--set", "lr=1e-3"], "--set would change what the stored sweep "
                            "trains"),
                           (["--seeds", "3"], "--seeds would change")):
        assert grid.main([*base, *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def test_preflight_names_a_missing_custom_resource(ray_session, corpus_dir, tmp_path, capsys):
    code = grid.main(_args(corpus_dir, tmp_path, "res", "--ablations", "baseline",
                           "--trial-resource", "worker_node=0.5"))
    assert code == 2
    err = capsys.readouterr().err
    assert "--trial-resource worker_node=0.5 but the Ray cluster has 0 of 'worker_node'" in err
    assert not (tmp_path / "res" / "sweep.json").exists()
