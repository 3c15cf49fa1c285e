"""`grid --ladder`: the sizes by the documented rule (known answers), every bad ladder refused
in one line before anything is written, the dry run's plan and cost of every rung (the largest
included), and (extended) the ladder run end to end, resumed, reported and read by the API."""

import json
import math

import pytest

from tune_ablations import grid
from tune_ablations.spec.config import RunConfig, with_overrides
from tune_ablations.spec.flops import count_params
from tune_ablations.sweeps.ladder import build_rungs, parse_ladder, plan_ladder


@pytest.mark.parametrize("text, want", [("3", [1, 2, 4]), ("2", [1, 2]),
                                        ("1,4,16", [1, 4, 16]), ("0.5, 2", [0.5, 2])])
def test_parse_ladder(text, want):
    assert parse_ladder(text) == want


@pytest.mark.parametrize("text", ["1", "x", "4,1", "1,1", "0,2", "1"])
def test_parse_ladder_refuses(text):
    with pytest.raises(ValueError, match="--ladder="):
        parse_ladder(text)


def _ref(**kw) -> RunConfig:
    return with_overrides(RunConfig(), {"d_model": 64, "n_heads": 4, "d_ff": 256, "n_layers": 2,
                                        "max_steps": 60, "warmup_steps": 6, "eval_every": 10,
                                        "vocab_size": 1024, **kw})


def test_rungs_follow_the_rule():
    ref = _ref()
    rungs = build_rungs(ref, [1, 2, 4, 8], "iso_tokens")
    n0 = count_params(ref.model, 1024)["non_embedding_params"]
    assert rungs[0].sets == {"d_model": 64, "n_heads": 4, "n_layers": 2, "d_ff": 256,
                             "warmup_steps": 6, "eval_every": 10} and rungs[0].steps == 60
    for r in rungs:
        s = r.sets
        assert s["d_model"] % 16 == 0 and s["n_heads"] == s["d_model"] // 16  # head_dim kept
        assert s["d_ff"] == 4 * s["d_model"]
        m = with_overrides(ref, {k: s[k] for k in ("d_model", "n_heads", "n_layers", "d_ff")})
        ratio = count_params(m.model, 1024)["non_embedding_params"] / n0
        assert r.params_ratio == pytest.approx(ratio)
        assert abs(math.log(ratio / r.mult)) < math.log(1.5), (r.mult, ratio)
        assert r.steps == round(60 * ratio)  # tokens per parameter fixed
        assert s["warmup_steps"] == round(6 * ratio) and s["eval_every"] == round(10 * ratio)
    widths = [r.sets["d_model"] for r in rungs]
    depths = [r.sets["n_layers"] for r in rungs]
    assert widths == sorted(widths) and depths == sorted(depths)
    assert widths[-1] > widths[0] and depths[-1] > depths[0]  # both grow
    mup = build_rungs(_ref(parametrization="mup"), [1, 4], "iso_tokens")
    assert mup[1].sets["mup_base_width"] == 64  # rung 0's lr transfers
    assert "mup_base_depth" not in mup[1].sets
    cp = build_rungs(_ref(parametrization="completep"), [1, 4], "iso_tokens")
    assert (cp[1].sets["mup_base_width"], cp[1].sets["mup_base_depth"]) == (64, 2)  # rung 0's
    assert cp[1].sets["n_layers"] > 2  # the depth rule is needed: the ladder deepens


def test_rungs_refused():
    with pytest.raises(ValueError, match="--published-steps"):
        build_rungs(_ref(), [1, 2], "steps")
    with pytest.raises(ValueError, match="rungs 0 and 1 .* build the same model"):
        build_rungs(_ref(), [1, 1.05], "iso_tokens")
    with pytest.raises(ValueError, match="no width .* where every arm"):
        build_rungs(_ref(), [1, 4], "iso_tokens", builds=lambda rung: rung.index == 0)


def _args(argv):
    return grid.parser().parse_args(argv)


def test_bad_ladders_refused_before_anything_is_written(tmp_path, capsys):
    base = ["--preset", "tiny", "--storage", str(tmp_path), "--name", "l"]
    cases = [(["--ladder", "1"], "--ladder='1' must be"),
             (["--ladder", "2", "--published-steps"], "--published-steps"),
             (["--ladder", "2", "--arm", "odd:n_heads=3"],
              "--ladder rung 0 (multiple 1): no width")]
    for extra, message in cases:
        assert grid.main(base + extra) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        assert not (tmp_path / "l").exists()
    assert grid.main(base + ["--ladder", "2", "--resume"]) == 2
    assert "no ladder 'l'" in capsys.readouterr().err


def test_resume_keeps_the_stored_ladder(tmp_path):
    from tune_ablations.results.experiment import Experiment

    root = Experiment(tmp_path / "l")
    root.write_json({"mults": [1.0, 2.0], "budget": "iso_tokens", "rungs": [
        {"index": 0, "mult": 1.0, "sets": {"d_model": 32}, "steps": 30, "params_ratio": 1.0},
        {"index": 1, "mult": 2.0, "sets": {"d_model": 48}, "steps": 67,
         "params_ratio": 2.2}]}, "ladder.json")
    base = ["--preset", "tiny", "--storage", str(tmp_path), "--name", "l"]
    with pytest.raises(ValueError, match="already exists; add --resume"):
        plan_ladder(_args(base + ["--ladder", "2"]))
    with pytest.raises(ValueError, match="differs from the stored ladder's multiples"):
        plan_ladder(_args(base + ["--ladder", "3", "--resume"]))
    _, rungs, _ = plan_ladder(_args(base + ["--resume"]))
    assert [r.steps for r in rungs] == [30, 67] and grid.is_ladder(_args(base + ["--resume"]))


def test_resume_trains_the_stored_flags_and_refuses_others():
    from tune_ablations.results.experiment import ExperimentError
    from tune_ablations.sweeps.ladder import given_flags, restored_args

    started = _args(["--ladder", "2", "--preset", "tiny", "--seeds", "2", "--ablations",
                     "baseline", "high_lr", "--name", "l"])
    stored = given_flags(started)
    assert stored == {"preset": "tiny", "seeds": 2, "ablations": ["baseline", "high_lr"]}
    plain = _args(["--resume", "--name", "l"])  # the rungs not yet started train the same
    assert vars(restored_args(plain, stored))["ablations"] == ["baseline", "high_lr"]
    same = _args(["--resume", "--name", "l", "--seeds", "2"])
    assert restored_args(same, stored).seeds == 2
    with pytest.raises(ExperimentError, match="--seeds 3 differs from the stored ladder's 2"):
        restored_args(_args(["--resume", "--name", "l", "--seeds", "3"]), stored)


def test_status_of_a_ladder_lists_its_rungs(tmp_path, capsys):
    from tune_ablations import status
    from tune_ablations.results.experiment import Experiment

    Experiment(tmp_path / "l").write_json({"mults": [1.0, 2.0], "budget": "iso_tokens",
                                           "rungs": [{"index": k, "mult": m,
                                                      "sets": {"d_model": d}, "steps": 1,
                                                      "params_ratio": m}
                                                     for k, m, d in ((0, 1.0, 32),
                                                                     (1, 2.0, 48))]},
                                          "ladder.json")
    assert status.main(["l", "--storage", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["ladder=l rung=0 mult=1 not started", "ladder=l rung=1 mult=2 not started"]
    assert status.main(["l", "--storage", str(tmp_path), "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["rung"], r["d_model"], r["status"]) for r in rows] == [(0, 32, None),
                                                                      (1, 48, None)]


def test_dry_run_shows_every_rung_and_its_cost(tmp_path, capsys):
    argv = ["--ladder", "3", "--preset", "tiny", "--seeds", "2", "--ablations", "baseline",
            "high_lr", "--storage", str(tmp_path), "--name", "l", "--dry-run"]
    assert grid.main(argv) == 0
    out = capsys.readouterr().out
    for k in range(3):
        assert f"# rung {k}: d_model=" in out and f"ladder rung={k} " in out
    assert out.count("baseline-s1") == 3 and "ladder total PFLOP=" in out
    assert not (tmp_path / "l").exists()
    assert grid.main(argv + ["--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["rung"] for r in rows] == [0, 1, 2]
    assert rows[0]["compute_ratio"] == 1.0 and rows[2]["compute_ratio"] > 4
    assert rows[2]["baseline_flops"] > rows[1]["baseline_flops"] > rows[0]["baseline_flops"]


def test_a_rung_over_the_time_limit_is_refused_before_training(tmp_path, capsys,
                                                               monkeypatch):
    from tune_ablations.training import probes

    # a step estimated at 1 s: rung 1 (67 steps x 4 trials on 2 slots) is 134 s
    monkeypatch.setattr(probes, "estimate_step_seconds", lambda *a, **k: 1.0)
    argv = ["--ladder", "2", "--preset", "tiny", "--seeds", "2", "--ablations", "baseline",
            "high_lr", "--storage", str(tmp_path), "--name", "l", "--ladder-max-seconds", "100"]
    assert grid.main(argv) == 2
    err = capsys.readouterr().err
    assert "--ladder rung 1 (" in err and "estimated at 134 s" in err
    assert "above --ladder-max-seconds=100" in err
    assert not (tmp_path / "l" / "ladder.json").exists()


@pytest.mark.extended
def test_ladder_end_to_end_resume_report_and_api(tmp_path, capsys):
    from tune_ablations import api

    argv = ["--smoke-test", "--ladder", "2", "--storage", str(tmp_path), "--name", "l"]
    assert grid.main(argv) == 0
    out = capsys.readouterr().out
    assert "high_lr:" in out and "rung 0's verdict" in out and "rank agreement" in out
    ladder = api.load_ladder(tmp_path / "l")
    frame = ladder.answer
    assert list(frame["rung"]) == [0, 1] and set(frame["arm"]) == {"high_lr"}
    assert frame["compute"].iloc[1] > 3 * frame["compute"].iloc[0]
    n = len(ladder.rung(1).results)
    assert grid.main(argv + ["--resume"]) == 0  # every rung done: nothing new runs
    err = capsys.readouterr().err
    assert "state=done" in err and "event=sweep_start" not in err
    assert len(ladder.rung(1).refresh().results) == n
    from tune_ablations import status

    assert status.main(["l", "--storage", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("finished=True" in line for line in lines)
    report = ladder.report(tmp_path / "report")
    text = report.read_text()
    assert "rung 0's verdict" in text and (tmp_path / "report" / "ladder.png").exists()


def test_api_runs_the_same_path(tmp_path, capsys):
    from tune_ablations import api

    assert api.run_ladder(ladder=2, preset="tiny", seeds=2, ablations=["baseline", "high_lr"],
                          storage=str(tmp_path), name="l", dry_run=True) is None
    assert "ladder rung=1 " in capsys.readouterr().out
    with pytest.raises(ValueError, match="run_ladder needs ladder=N"):
        api.run_ladder(preset="tiny")
    with pytest.raises(ValueError, match="--ladder='1' must be"):
        api.run_ladder(ladder=1, storage=str(tmp_path))
    with pytest.raises(ValueError, match="holds no ladder"):
        api.load_ladder(tmp_path)
