"""A real sweep decides `precision=auto` once for every trial: the probe (replaced at its
boundary, in the driver) sees both arms' shapes, sweep.json records the decision, every trial
trains in it and says why, and `--resume` reuses it without probing again."""

import json
from pathlib import Path

import pandas as pd

from tune_ablations import grid
from tune_ablations.training import probes as P


def test_one_precision_for_every_trial_of_a_real_sweep(ray_session, corpus_dir, tmp_path,
                                                       monkeypatch, capsys):
    seen = []

    def measure(kind, cfg, vocab, amp):
        # The baseline's shape gains from bf16, small_model's loses: per shape the two arms
        # would train in different precisions; over the sweep bf16 wins (2 x 20 x 0.5 +
        # 2 x 20 x 1.05 = 62 s against 80 s).
        seen.append((kind, cfg.model.d_model))
        return {32: {"fp32": 1.0, "bf16": 0.5}, 16: {"fp32": 1.0, "bf16": 1.05}}[
            cfg.model.d_model]

    monkeypatch.setenv("TUNE_ABLATIONS_CACHE", str(tmp_path / "cache"))  # no cached probes
    monkeypatch.setattr(P, "measure_shape", measure)
    monkeypatch.setattr(P, "cpu_bf16_units", lambda: "amx_bf16")
    argv = ["--preset", "tiny", "--data", str(corpus_dir), "--set", "vocab_size=300",
            "text_samples=0", "max_steps=20", "eval_every=10", "--ablations", "baseline",
            "small_model", "--seeds", "2", "--published-steps", "--storage", str(tmp_path),
            "--name", "one"]
    assert grid.main(argv) == 0, capsys.readouterr().err
    assert sorted(seen) == [("precision_bf16", 16), ("precision_bf16", 32)]  # each shape once
    exp = tmp_path / "one"
    runtime = json.loads((exp / "sweep.json").read_text())["runtime"]
    assert runtime["precision"] == "bf16" and runtime["scope"] == "sweep"
    assert "4 runs at 2 shapes" in runtime["precision_reason"] and runtime["mixed"] == {}
    assert "1.29x faster" in runtime["precision_reason"]  # 80 / 62
    df = pd.read_parquet(exp / "results.parquet")
    assert len(df) == 4 and set(df["precision"]) == {"bf16"}  # the resolved configs say so
    for trial in df["path"]:
        run = json.loads((Path(trial) / "run.json").read_text())
        assert run["config"]["precision"] == "bf16" and "precision=bf16" in run["reproduce"]
        assert run["runtime"]["precision_reason"] == runtime["precision_reason"]
        outcome = json.loads((Path(trial) / "outcome.json").read_text())
        assert outcome["precision"] == "bfloat16"
    assert "event=runtime scope=sweep precision=bf16" in capsys.readouterr().err

    def no_probe(*a, **k):
        raise AssertionError("--resume must reuse the stored decision")

    monkeypatch.setattr(P, "measure_shape", no_probe)
    assert grid.main([*argv, "--resume"]) == 0
    assert json.loads((exp / "sweep.json").read_text())["runtime"] == runtime


def test_a_probe_that_fails_decides_plain_fp32_for_every_trial(tiny_cfg, capsys):
    from tune_ablations.spec.config import with_overrides
    from tune_ablations.sweeps.decide import sweep_choice

    gone = with_overrides(tiny_cfg, {"device": "cuda:7", "precision": "auto"})  # not here
    c = sweep_choice([gone, gone], [300, 300], 1)
    assert (c.precision, c.compiled, c.scope) == ("fp32", False, "sweep")
    assert "the probe failed on cuda:7" in c.precision_reason
    assert "every trial trains in fp32, eager" in capsys.readouterr().err
