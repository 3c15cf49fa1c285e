"""The grid end to end on one session-scoped local Ray, resume (the same command with --resume
accepted, a changed setting refused by name), and a driver killed mid-sweep on a state."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tune_ablations import grid
from tune_ablations.results.experiment import Experiment
from tune_ablations.results.sequential import FIRST_LOOK
from tune_ablations.spec.names import LR_SWEEP_SEED
from tune_ablations.spec.runspec import RunSpec
from tune_ablations.sweeps.grid_plan import build_plan
from tune_ablations.sweeps.options import ResourceOptions, stored
from tune_ablations.training.resolved import Resolver

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
    assert df["folder"].str.match(r"^(baseline|high_lr)-s[01]-\w+$").all()  # readable folders
    hist = pd.read_parquet(exp / "history.parquet")
    assert len(hist) == 4 * 3
    assert hist.groupby("trial_id")["tokens_seen"].is_monotonic_increasing.all()
    for trial in df["path"]:
        run = json.loads((Path(trial) / "run.json").read_text())
        assert {"spec", "config", "seed", "versions", "git_sha", "data", "argv"} <= set(run)
    out = capsys.readouterr().out
    assert "Answer" in out and re.search(
        r"high_lr\s+(better|worse|not resolved): [-+]\d\.\d{3} nats .* 95% interval", out)
    sweep = json.loads((exp / "sweep.json").read_text())
    assert sweep["grid"]["seeds"] == 2 and sweep["spec"]["budget"] == "iso_tokens"
    assert (exp / "tokenizer").is_dir()  # the tokenizer travels with the experiment


def test_fractional_gpu_scheduling(ray_session, corpus_dir, tmp_path):
    """num_gpus=1 is logical here: two trials at 0.5 GPU each are placed and run."""
    code = grid.main(_args(corpus_dir, tmp_path, "frac", "--ablations", "baseline", "low_lr",
                           "--seeds", "1", "--gpus-per-trial", "0.5", "--set", "max_steps=10",
                           "eval_every=5"))
    assert code == 0
    run = json.loads(next((tmp_path / "frac").glob("*/run.json")).read_text())
    assert run["gpu_fraction"] == 0.5


def test_gpu_preflight_fails_fast(ray_session, corpus_dir, tmp_path, capsys):
    code = grid.main(_args(corpus_dir, tmp_path, "nogpu", "--gpus-per-trial", "2"))
    assert code == 2
    assert "PENDING forever" in capsys.readouterr().err
    assert not (tmp_path / "nogpu" / "sweep.json").exists()


def test_diverging_and_failing_trials_are_recorded(ray_session, corpus_dir, tmp_path):
    """A diverged trial and a crashing one (bad device, like an OOM) do not stop the sweep."""
    from ray import tune

    from tune_ablations.results.frames import load_results
    from tune_ablations.spec.names import METRIC, MODE
    from tune_ablations.sweeps.trainable import build_trainable
    from tune_ablations.sweeps.tuner import record_states, run_tuner

    exp = Experiment(tmp_path / "mixed")
    base = RunSpec(preset="tiny", data=str(corpus_dir), budget="steps",
                   overrides={"vocab_size": 300, "text_samples": 0, "warmup_steps": 0,
                              "grad_clip": 0.0})
    trainable = build_trainable(base=base, datasets={}, cpus=1, gpus=0, cache_dir=None,
                                experiment=exp.location, sha=None, argv=[])
    results = run_tuner(trainable, exp=exp, resume=False, max_failures=0, keep_checkpoints=1,
                        tune_config=tune.TuneConfig(metric=METRIC, mode=MODE),
                        parameter_columns=["lr"], param_space={
                            "lr": tune.grid_search([3e-3, 10.0]),
                            "device": tune.grid_search(["cpu", "cuda:7"])})
    record_states(exp, results)
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
    assert "est_wall_seconds=" in out and "PFLOP=" in out and "probe_tokens=0" in out
    assert not (tmp_path / "plan").exists()


@pytest.mark.parametrize("extra, message", [
    (["--ablations", "baseline", "hi_lr"], "unknown ablation 'hi_lr'; did you mean 'high_lr'"),
    (["--seeds", "0"], "--seeds=0 must be >= 1"),
    (["--max-seeds", "2"], "--max-seeds=2 must be >= 3 (the seeds every arm gets before"),
    (["--seeds", "1001"], "--seeds=1001 must be <= 1000: seeds from 1000 on belong to runs"),
    (["--ablations", "high_lr"], "--seeds auto compares every arm with the baseline"),
    (["--set", "lr=-1"], "lr=-1 must be > 0"),
    (["--set", "d_model=250", "n_heads=4"], "d_model=250 must be divisible by n_heads=4"),
    (["--set", "seq_len=100000"], "must be <= max_seq_len"),
    (["--data", "/no/such/corpus"], "is not an embedded corpus"),
    (["--tokens", "0"], "--tokens=0 must be > 0"),
    (["--resume"], "no sweep 'bad' in"),
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


def _stored_sweep(tmp_path, corpus_dir) -> list[str]:
    """A grid stored as sweep.json records it; returns the command that made it."""
    argv = _args(corpus_dir, tmp_path, "r", "--ablations", "baseline", "--seeds", "1")
    args = grid.parser().parse_args(argv)
    plan = build_plan(args, None, 0, ResourceOptions(), Resolver())
    Experiment(tmp_path / "r").write_json({
        **plan.record, "kind": "grid", "name": "r", "resources": stored(ResourceOptions()),
        "created": "2026-01-01T00:00:00"}, "sweep.json")
    return argv


@pytest.mark.parametrize("extra, message", [
    (["--max-failures", "5"], "--max-failures 5 differs from the stored sweep's 2"),
    (["--keep-checkpoints", "4"], "--keep-checkpoints 4 differs from the stored sweep's 2"),
    (["--trial-resource", "fast=1"], "--trial-resource {'fast': 1.0} differs"),
    (["--set", "lr=1e-3"], "--set lr=0.001 differs from the stored sweep's lr: nothing"),
    (["--seeds", "3"], "--seeds 3 differs from the stored sweep's 1"),
    (["--iso-flops"], "budget 'iso_flops' differs from the stored sweep's 'iso_tokens'"),
    (["--preset", "cpu"], "--preset 'cpu' differs from the stored sweep's 'tiny'"),
])
def test_resume_refuses_a_changed_setting_by_name(corpus_dir, tmp_path, capsys, extra, message):
    _stored_sweep(tmp_path, corpus_dir)
    assert grid.main(["--storage", str(tmp_path), "--name", "r", "--resume", *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_the_same_command_with_resume_appended_is_accepted(corpus_dir, tmp_path, capsys):
    """Arrow up, add --resume: every flag equals the stored value, so nothing is refused (the
    dry run stops before Ray)."""
    argv = _stored_sweep(tmp_path, corpus_dir)
    assert grid.main([*argv, "--resume", "--dry-run"]) == 0, capsys.readouterr().err
    assert "baseline-s0" in capsys.readouterr().out
    assert grid.main(["--storage", str(tmp_path), "--resume", "--dry-run"]) == 0  # the newest


def test_a_question_is_stored_verbatim_and_compared_on_resume(corpus_dir, tmp_path, capsys):
    """question.toml holds the file as written (and the --arm additions); --resume takes the
    same question again (a comment changed is the same question) and refuses changed arms by
    name, with both values."""
    q = tmp_path / "q.toml"
    text = '# mine\n[baseline]\nschedule = "cosine"\n\n[arms.wsd]\nschedule = "wsd"\n'
    q.write_text(text)
    argv = _args(corpus_dir, tmp_path, "q", "--arms", str(q), "--arm", "hot:lr=x2",
                 "--seeds", "2")
    plan = build_plan(grid.parser().parse_args(argv), None, 0, ResourceOptions(), Resolver())
    assert {t.ablation for t in plan.trials} == {"baseline", "wsd", "hot"}
    stored_text = plan.files["question.toml"]
    assert stored_text.startswith(text) and "[arms.hot]\nlr = \"x2\"" in stored_text
    exp = Experiment(tmp_path / "q")
    exp.write_bytes(stored_text, "question.toml")
    exp.write_json({**plan.record, "kind": "grid", "name": "q",
                    "resources": stored(ResourceOptions()), "created": "2026-01-01T00:00:00"},
                   "sweep.json")
    q.write_text(text.replace("# mine", "# mine, reworded"))
    assert grid.main([*argv, "--resume", "--dry-run"]) == 0, capsys.readouterr().err
    capsys.readouterr()
    q.write_text(text.replace('schedule = "wsd"', 'schedule = "linear"'))
    assert grid.main([*argv, "--resume", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "--resume: --arms/--arm (wsd(schedule=linear), hot(lr=x2)) differs from the stored " \
           "sweep's (wsd(schedule=wsd), hot(lr=x2))" in err, err
    q.write_text(text)
    changed = _args(corpus_dir, tmp_path, "q", "--arms", str(q), "--arm", "hot:lr=x3",
                    "--seeds", "2")
    assert grid.main([*changed, "--resume", "--dry-run"]) == 2
    assert "hot(lr=x3)" in capsys.readouterr().err


def test_dry_run_of_a_question_lists_its_arms(corpus_dir, tmp_path, capsys):
    assert grid.main(_args(corpus_dir, tmp_path, "plan", "--arms", "positional",
                           "--dry-run", "--json")) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert sorted((r["ablation"], r["seed"]) for r in rows) == [
        (a, s) for a in ("baseline", "no_rope") for s in range(FIRST_LOOK)]
    assert len({r["tokens"] for r in rows}) == 1 and not (tmp_path / "plan").exists()


def test_a_question_plans_iso_flops_and_tune_lr_like_the_default(corpus_dir, tmp_path,
                                                                   capsys):
    """--iso-flops gives the wider arm fewer tokens (the baseline's FLOPs) and the matched one
    the same; --tune-lr sweeps every arm of the question around its own lr."""
    assert grid.main(_args(corpus_dir, tmp_path, "f", "--arms", "ffn", "--iso-flops",
                           "--dry-run", "--json")) == 0
    rows = {r["ablation"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    base, wide, matched = rows["baseline"], rows["swiglu_wide"], rows["swiglu"]
    for arm in (wide, matched):  # the baseline's FLOPs, within one optimizer step
        step_flops = arm["flops"] / arm["tokens"] * arm["tokens_per_step"]
        assert base["flops"] <= arm["flops"] < base["flops"] + step_flops, arm
    assert wide["tokens"] < matched["tokens"] <= base["tokens"]
    assert grid.main(_args(corpus_dir, tmp_path, "t", "--arm", "hot:lr=x2", "--tune-lr", "3",
                           "--dry-run", "--json")) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    swept = [r for r in rows if r["seed"] == LR_SWEEP_SEED]  # the rest: the second seeds
    lrs = {a: sorted(r["lr"] for r in swept if r["ablation"] == a) for a in ("baseline", "hot")}
    assert len(swept) == 6 and lrs["hot"] == pytest.approx([2 * lr for lr in lrs["baseline"]])


def test_preflight_names_a_missing_custom_resource(ray_session, corpus_dir, tmp_path, capsys):
    code = grid.main(_args(corpus_dir, tmp_path, "res", "--ablations", "baseline",
                           "--trial-resource", "worker_node=0.5"))
    assert code == 2
    err = capsys.readouterr().err
    assert "--trial-resource worker_node=0.5 but the Ray cluster has 0 of 'worker_node'" in err
    assert not (tmp_path / "res" / "sweep.json").exists()


def _snapshot_names(exp: Path, folder_prefix: str, checkpoint: str) -> bool:
    """Ray's newest persisted experiment snapshot has `checkpoint` as that trial's latest."""
    from tune_ablations.sweeps.tuner import snapshot_checkpoints

    folders = [p.name for p in exp.glob(f"{folder_prefix}*") if p.is_dir()]
    return any(snapshot_checkpoints(Experiment(exp), f)[-1:] == [checkpoint] for f in folders)


def _run_until_held(argv, exp: Path, hold: Path, spec: str, extra_state=lambda: True):
    """Start the grid CLI with trials holding at `spec`; SIGKILL the driver (and its local
    Ray) once a trial holds and `extra_state()` holds too. Returns the held trial folder."""
    hold.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TUNE_ABLATIONS_TEST_HOLD": spec}
    proc = subprocess.Popen([sys.executable, "-m", "tune_ablations.grid", *argv], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            held = list(hold.glob("held-*"))
            if held and extra_state():
                return exp / held[0].name.removeprefix("held-")
            assert proc.poll() is None, "the sweep ended before its trial held"
            time.sleep(0.1)
        pytest.fail("no trial held")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        (hold / "release").write_text("")


@pytest.mark.extended  # the hosts bed and test_search cover kill and resume
def test_killed_sweep_resumes_from_checkpoints(ray_session, corpus_dir, tmp_path, capfd):
    """SIGKILL the driver (and its local Ray) twice, each time when a trial holds at a step
    and Ray's persisted snapshot names that step's checkpoint (a state, not a sleep), the first
    time also after another trial has finished. --resume then finishes every trial, reruns no
    finished one, and continues the held trial from the checkpoints the snapshots named."""
    exp = tmp_path / "killed"
    argv = _args(corpus_dir, tmp_path, "killed", "--ablations", "baseline", "high_lr",
                 "--seeds", "1", "--set", "max_steps=300", "eval_every=50", "text_samples=0")

    def baseline_finished_and_snapshotted():
        done = list(exp.glob("baseline-*/outcome.json"))
        return done and _snapshot_names(exp, "high_lr-s0", "checkpoint_000001")

    held = _run_until_held(argv, exp, tmp_path / "hold1", "100:" + str(tmp_path / "hold1") +
                           ":high_lr", baseline_finished_and_snapshotted)
    finished = {p: p.stat().st_mtime_ns for p in exp.glob("baseline-*/outcome.json")}
    assert finished and not (held / "outcome.json").exists()
    resume = ["--storage", str(tmp_path), "--name", "killed", "--resume"]
    held = _run_until_held(resume, exp, tmp_path / "hold2", "200:" + str(tmp_path / "hold2") +
                           ":high_lr", lambda: _snapshot_names(exp, "high_lr-s0",
                                                               "checkpoint_000003"))
    capfd.readouterr()
    assert grid.main(resume) == 0
    out = capfd.readouterr()
    assert "Traceback" not in out.err + out.out  # a resume prints no Ray tracebacks
    df = pd.read_parquet(exp / "results.parquet")
    assert len(df) == 2 and set(df["status"]) == {"completed"}
    for path, mtime in finished.items():  # the finished trial was not rerun
        assert path.stat().st_mtime_ns == mtime
    outcome = json.loads((held / "outcome.json").read_text())
    assert outcome["resumed_from"] == [100, 200] and outcome["steps"] == 300


@pytest.mark.slow
def test_resume_where_the_corpus_file_is_gone(ray_session, corpus_dir, tmp_path, capsys):
    """A corpus read from a local path travels with the experiment (its token data), so the
    sweep resumes on a machine (here: after the folder is deleted) that lacks the file."""
    import shutil

    from tune_ablations.spec.names import DATA_DIR

    corpus = shutil.copytree(corpus_dir, tmp_path / "corpus")
    args = ["--preset", "tiny", "--data", str(corpus), "--set", "vocab_size=300",
            "text_samples=0", "--ablations", "baseline", "--seeds", "1", "--storage",
            str(tmp_path / "r"), "--name", "g"]
    assert grid.main(args) == 0
    assert list((tmp_path / "r" / "g" / DATA_DIR).glob("*/train.npy"))
    shutil.rmtree(corpus)
    capsys.readouterr()
    assert grid.main([*args, "--resume"]) == 0
    assert "event=data_from_experiment" in capsys.readouterr().err
