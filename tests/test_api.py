"""The Python API: README's example runs as written (read from README.md the way CI reads the
Quick start), keywords are the command's flags on the command's own path, bad input raises
the command's one-line message before any compute, and any experiment (a folder or an S3 URI)
loads with its results and its answer as DataFrames."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tune_ablations import grid
from tune_ablations.api import Sweep, load_experiment, run_grid, run_search, to_argv
from tune_ablations.results.sequential import FIRST_LOOK

ROOT = Path(__file__).resolve().parent.parent


def _readme_example(name: str) -> str:
    spec = importlib.util.spec_from_file_location("readme_commands",
                                                  ROOT / ".ci" / "readme_commands.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.example(name)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    from tune_ablations.sweeps.smoke import smoke_experiment

    return smoke_experiment(tmp_path_factory.mktemp("api"))


def test_importing_the_package_loads_no_api_ray_or_torch():
    code = ("import sys, tune_ablations\n"
            "from tune_ablations import run_grid\n"
            "print('tune_ablations.api' in sys.modules, 'ray' in sys.modules, "
            "'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code.replace(
        "from tune_ablations import run_grid\n", "")], capture_output=True, text=True,
        timeout=60)
    assert out.stdout.split() == ["False", "False", "False"], out.stderr
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.split() == ["True", "False", "False"], out.stderr


def test_keywords_are_the_commands_flags():
    ap = grid.parser()
    argv = to_argv(ap, {"arm": {"big": {"d_model": "x2"}}, "seeds": 2, "preset": "tiny",
                        "set": {"lr": 1e-3, "compile": True}, "ablations": ["baseline", "big"],
                        "iso_flops": True, "dry_run": False, "trial_resource": ["x=1"]})
    assert argv == ["--arm", "big:d_model=x2", "--seeds", "2", "--preset", "tiny", "--set",
                    "lr=0.001", "compile=true", "--ablations", "baseline", "big",
                    "--iso-flops", "--trial-resource", "x=1"]
    assert to_argv(ap, {"arm": ["a:lr=x2", "b:lr=x3"]}) == ["--arm", "a:lr=x2", "--arm",
                                                           "b:lr=x3"]
    with pytest.raises(ValueError, match="unknown option 'sed'; did you mean 'seeds'"):
        to_argv(ap, {"sed": 2})


@pytest.mark.parametrize("call, message", [
    (lambda s: run_grid(seeds="x", storage=s), "grid: argument --seeds: invalid _seeds value"),
    (lambda s: run_grid(set={"lr": -1}, preset="tiny", storage=s), "lr=-1 must be > 0"),
    (lambda s: run_grid(arm=["same:lr=x1"], preset="tiny", storage=s),
     "arm 'same' (lr=x1) resolves to the baseline's config"),
    (lambda s: run_search(space="nope", storage=s), "unknown search space"),
    (lambda s: run_grid(preset="tiny", storage=s, speed=3), "unknown option 'speed'"),
])
def test_bad_input_raises_the_commands_message_before_any_compute(call, message, tmp_path,
                                                                  capsys):
    with pytest.raises(ValueError) as err:
        call(str(tmp_path / "out"))
    assert message in str(err.value)
    assert not (tmp_path / "out").exists() and "error:" not in capsys.readouterr().err


def test_dry_run_returns_nothing_and_prints_the_plan(tmp_path, capsys):
    assert run_grid(arm=["no_rope:pos_encoding=none"], preset="tiny", dry_run=True, json=True,
                    storage=str(tmp_path)) is None
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(r["ablation"], r["seed"]) for r in rows} == {
        (a, s) for a in ("baseline", "no_rope") for s in range(FIRST_LOOK)}
    assert not list(tmp_path.iterdir())


def test_an_experiment_loads_with_its_results_and_answer(smoke):
    sweep = load_experiment(smoke)
    assert isinstance(sweep, Sweep) and len(sweep.results) == 4
    assert set(sweep.history["trial_id"]) == set(sweep.results["trial_id"])
    ans = sweep.answer
    assert list(ans["arm"]) == ["high_lr"] and int(ans["n"].iloc[0]) == 2
    for col in ("diff", "ci_low", "ci_high", "verdict", "confounds", "p_adj", "baseline_loss",
                "procedure", "metric"):
        assert col in ans.columns, col
    records = sweep.answer_records()
    assert json.loads(json.dumps(records, allow_nan=False)) == records  # valid JSON, no NaN
    r = records[0]
    losses = sweep.results.groupby("ablation")["val_loss"].mean()  # the answer's own numbers
    assert math.isclose(r["diff"], losses["high_lr"] - losses["baseline"], abs_tol=1e-9)
    assert r["ci_low"] <= r["diff"] <= r["ci_high"]
    with pytest.raises(ValueError, match="no sweep at"):
        load_experiment(smoke.parent / "nothing-here")


def test_status_reads_the_plan_the_sweep_stored(smoke, monkeypatch):
    """Planned tokens come from sweep.json's plan (each arm's tokens x the seeds of the latest
    look), never from resolving the spec again."""
    import tune_ablations.spec.resolve as resolve_module
    from tune_ablations.results.experiment import Experiment
    from tune_ablations.results.progress import sweep_status

    plan = json.loads((smoke / "sweep.json").read_text())["plan"]
    assert plan["arms"] == ["baseline", "high_lr"] and plan["first_seeds"] == 2
    assert set(plan["arm_tokens"].values()) == {3840}  # tiny: 30 steps of 4 x 32 tokens

    def refuse(*a, **k):
        raise AssertionError("status resolved a spec")

    monkeypatch.setattr(resolve_module, "resolve", refuse)
    s = sweep_status(Experiment(smoke))
    assert s["tokens_planned"] == 2 * 2 * 3840 and s["tokens_done"] == 4 * 3840
    (smoke / "decisions.json").write_text(json.dumps({"looks": [2, 3]}))  # a third look
    try:
        assert sweep_status(Experiment(smoke))["tokens_planned"] == 3 * 2 * 3840
    finally:
        (smoke / "decisions.json").unlink()


def test_an_experiment_on_s3_loads_the_same(smoke, s3_server, monkeypatch):
    from tune_ablations.results.experiment import Experiment

    for k, v in s3_server.items():
        monkeypatch.setenv(k, v)
    Experiment("s3://sweeps/api/smoke").upload_dir(smoke)
    remote, local = load_experiment("s3://sweeps/api/smoke"), load_experiment(smoke)
    assert remote.answer_records() == local.answer_records()
    assert len(remote.results) == 4


@pytest.mark.slow
def test_the_readme_example_runs_as_written(ray_session, tmp_path, monkeypatch, capsys):
    """The example as README shows it; then the same sweep from the command line with
    --resume --json: the answer as one JSON object per arm on stdout, nothing else there,
    equal to the API's records."""
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(_readme_example("api"), "README.md:example:api", "exec"), scope)
    sweep = scope["sweep"]
    assert sweep.exit_code == 0 and len(sweep.results) == 4
    assert set(sweep.results["status"].astype(str)) == {"completed"}
    assert list(sweep.answer["arm"]) == ["swiglu"]
    exp = tmp_path / "results" / "swiglu"
    assert (exp / "question.toml").read_text().startswith("[arms.swiglu]")
    assert "swiglu" in capsys.readouterr().out
    code = grid.main(["--arm", "swiglu:ffn=swiglu,match_params=true", "--preset", "tiny",
                      "--seeds", "2", "--storage", "results", "--name", "swiglu", "--resume",
                      "--json"])
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    records = [json.loads(line) for line in out.out.splitlines()]
    assert records == sweep.refresh().answer_records()
    assert records[0]["arm"] == "swiglu" and records[0]["verdict"] in (
        "better", "worse", "not resolved")
    assert f"results: {exp}" in out.err
    report = sweep.report(tmp_path / "report", plots=False).read_text()
    assert "## Answer" in report and "swiglu" in report
