import json
import math

import numpy as np
import pandas as pd
import pytest
from synthetic import make_synthetic_experiment

from tune_ablations import analysis
from tune_ablations.results import frames as F
from tune_ablations.results import stats as S
from tune_ablations.results.experiment import Experiment
from tune_ablations.results.report import write_report
from tune_ablations.spec.config import field_names


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return make_synthetic_experiment(tmp_path_factory.mktemp("syn"))


@pytest.fixture(scope="module")
def real_grid(ray_session, corpus_dir, tmp_path_factory):
    """A small experiment folder made by a real tiny grid run, built once."""
    from tune_ablations import grid

    root = tmp_path_factory.mktemp("real")
    assert grid.main(["--preset", "tiny", "--data", str(corpus_dir), "--set", "vocab_size=300",
                      "--ablations", "baseline", "large_batch", "--seeds", "1", "--storage",
                      str(root), "--name", "g"]) == 0
    return root / "g"


def test_results_frame_from_real_run(real_grid):
    df = F.load_results(real_grid)
    assert len(df) == 2 and set(df["status"]) == {"completed"}
    for col in ["trial_id", "ablation", "seed", *field_names(), "val_loss", "val_ppl",
                "val_acc", "val_top5", "val_confidence", "val_entropy", "best_val_loss",
                "train_loss", "tokens_seen", "step", "epoch", "wall_time_s", "tokens_per_s",
                "mfu", "params", "non_embedding_params", "status"]:
        assert col in df, col
    assert df["status"].dtype == "category" and str(df["seed"].dtype) == "Int64"
    assert df["val_loss"].dtype == float and df["tokens_seen"].dtype == "Int64"
    big = df.set_index("ablation").loc["large_batch"]
    assert big["batch_size"] == 2 * df.set_index("ablation").loc["baseline", "batch_size"]
    assert big["tokens_seen"] == big["step"] * big["batch_size"] * big["seq_len"]
    hist = F.load_history(real_grid)
    # Equal tokens by default, and both arms evaluate at the same token milestones: large_batch
    # (2x tokens per step, half the steps) reports at exactly the baseline's milestones.
    per = {a: set(g["tokens_seen"]) for a, g in hist.groupby("ablation")}
    assert per["baseline"] == per["large_batch"] and len(per["baseline"]) == 3
    assert (df["unigram_val_loss"] > 0).all() and (df["val_loss_se"] > 0).all()
    assert set(df["run_precision"]) <= {"fp32", "bfloat16", "float16"}  # what each run used


def test_statuses_of_a_partial_sweep(synthetic):
    df = F.load_results(synthetic)
    assert len(df) == 7
    got = dict(zip(zip(df["ablation"], df["seed"]), df["status"]))
    assert got[("baseline", 0)] == "completed" and got[("high_lr", 0)] == "diverged"
    assert got[("low_lr", 0)] == "error" and got[("short_seq", 0)] == "running"
    assert math.isnan(df.set_index("ablation").loc["high_lr", "val_loss"])  # no sentinel


def test_early_stopped_from_ray_state(synthetic, tmp_path):
    import shutil

    exp = tmp_path / "e"
    shutil.copytree(synthetic, exp)
    (exp / "trials.json").write_text(json.dumps({"syn_00006": {"status": "TERMINATED"}}))
    df = F.load_results(exp)
    assert df.set_index("trial_id").loc["syn_00006", "status"] == "early_stopped"


def test_t_interval_against_hand_computation():
    mean, half, std, n = S.t_interval([1.0, 2.0, 3.0, 4.0])
    assert (mean, n) == (2.5, 4)
    assert std == pytest.approx(math.sqrt(5 / 3))
    assert half == pytest.approx(3.182446305 * math.sqrt(5 / 3) / 2, rel=1e-6)
    assert math.isnan(S.t_interval([3.0])[1])


def test_summarize_and_compare(synthetic):
    df = F.load_results(synthetic)
    s = S.summarize(df)
    assert list(s["ablation"][:2]) == ["large_batch", "baseline"]  # sorted by val_loss
    row = s.set_index("ablation").loc["baseline"]
    vals = df[(df["ablation"] == "baseline")]["val_loss"].astype(float)
    assert row["n_completed"] == 2 and row["val_loss_mean"] == pytest.approx(vals.mean())
    assert row["val_loss_ci_high"] - row["val_loss_mean"] == pytest.approx(
        12.70620474 * vals.std() / math.sqrt(2), rel=1e-6)
    c = S.compare_to_baseline(df).set_index("ablation")
    assert bool(c.loc["large_batch", "exceeds_noise"]) is True
    noisy = df.copy()
    noisy.loc[noisy["ablation"] == "large_batch", "val_loss"] = [5.0, 7.0]
    noisy.loc[noisy["ablation"] == "baseline", "val_loss"] = [5.9, 6.1]
    c2 = S.compare_to_baseline(noisy).set_index("ablation")
    assert bool(c2.loc["large_batch", "exceeds_noise"]) is False
    assert c2.loc["large_batch", "ci_low"] < 0 < c2.loc["large_batch", "ci_high"]


def test_at_tokens_reads_evaluations_never_interpolates():
    h = pd.DataFrame({"trial_id": ["a", "a", "b", "b"], "ablation": ["x", "x", "y", "y"],
                      "seed": [0, 0, 0, 0], "tokens_seen": [100, 300, 200, 400],
                      "step": [1, 3, 1, 2], "val_loss": [5.0, 3.0, 4.0, 2.0],
                      "diverged": [False] * 4})
    r = S.at_tokens(h, 200).set_index("trial_id")["val_loss"]
    assert math.isnan(r["a"]) and r["b"] == 4.0  # a has no evaluation within a step of 200
    r = S.at_tokens(h, 290).set_index("trial_id")["val_loss"]
    assert r["a"] == 3.0 and r["b"] == 2.0  # each within one of its own steps
    r = S.at_tokens(h, 450).set_index("trial_id")["val_loss"]
    assert math.isnan(r["a"]) and math.isnan(r["b"])  # no extrapolation


def test_lr_sensitivity_on_a_known_curve():
    df = pd.DataFrame({"lr": [1e-4, 3e-4, 1e-3, 3e-3, 3e-4, 1e-2],
                       "val_loss": [4.0, 3.0, 3.5, np.nan, 3.0, 3.2],
                       "status": ["completed", "completed", "completed", "diverged",
                                  "completed", "early_stopped"],
                       "initial_loss": [6.0, 6.2, 6.1, 6.0, 6.1, 6.0]})
    assert S.lr_sensitivity(df, initial_loss=5.0) == pytest.approx((1 + 0 + 0.5 + 2) / 4)
    # The measured initial loss (median of the full-budget runs: 6.1); the early-stopped
    # trial's rung loss does not count as a final loss.
    assert S.lr_sensitivity(df) == pytest.approx((1 + 0 + 0.5 + 3.1) / 4)
    with pytest.raises(ValueError, match="at least 2 learning rates"):
        S.lr_sensitivity(df[df["lr"] == 3e-4])
    with pytest.raises(ValueError, match="measured initial_loss"):
        S.lr_sensitivity(df.drop(columns="initial_loss"))


def test_rung_agreement():
    rows = []
    for i, (early, final) in enumerate([(5.0, 3.0), (5.5, 3.2), (6.0, 3.4), (6.5, 3.6)]):
        rows += [{"trial_id": f"t{i}", "tokens_seen": 100, "val_loss": early},
                 {"trial_id": f"t{i}", "tokens_seen": 400, "val_loss": final}]
    rows += [{"trial_id": "stopped", "tokens_seen": 100, "val_loss": 9.0}]
    h = pd.DataFrame(rows).assign(ablation="a", seed=0, diverged=False)
    ra = S.rung_agreement(h)
    assert list(ra["rung_tokens"]) == [100.0] and ra["n_trials"][0] == 4
    assert ra["spearman"][0] == pytest.approx(1.0)
    h.loc[(h["trial_id"] == "t0") & (h["tokens_seen"] == 400), "val_loss"] = 3.7
    assert S.rung_agreement(h)["spearman"][0] < 0.5


def test_report_folder_has_every_plot_and_table(synthetic, tmp_path):
    report = write_report(F.load(synthetic), Experiment(synthetic), tmp_path / "r")
    text = report.read_text()
    for name in ("curves.png", "forest.png", "throughput.png"):
        assert (tmp_path / "r" / name).stat().st_size > 1000
        assert name in text
    assert not (tmp_path / "r" / "final_metrics.png").exists()  # no bars starting at zero
    for heading in ("## Answer", "Final metrics per ablation", "Equal-token comparison",
                    "Throughput", "What the data supports", "Text samples"):
        assert heading in text
    assert text.index("## Answer") < text.index("Final metrics per ablation")  # answer first
    assert "Omitted: completed runs ended at different budgets" in text
    assert "1 trial(s) diverged" in text and "n_diverged" in text
    assert "large_batch" in text.split("## Answer")[1].split("##")[0]


def test_cli_writes_report_and_exports(real_grid, tmp_path, capsys):
    assert analysis.main([str(real_grid), "--out", str(tmp_path / "out")]) == 0
    assert "event=report" in capsys.readouterr().out
    for name in ("report.md", "results.csv", "results.parquet", "history.csv",
                 "history.parquet", "curves.png"):
        assert (tmp_path / "out" / name).exists(), name
    text = (tmp_path / "out" / "report.md").read_text()
    assert "n=1" in text and "Text samples" in text
    assert analysis.main([str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_export_reloads_identical_logits(real_grid, tmp_path):
    import torch

    from tune_ablations import load_pretrained
    from tune_ablations.export import main as export_main
    from tune_ablations.training.step import load_checkpoint

    out = tmp_path / "model"
    assert export_main([str(real_grid), "--out", str(out)]) == 0
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in
                                                                        out.iterdir()}
    model = load_pretrained(out)
    meta = json.loads((out / "config.json").read_text())["tune_ablations"]
    trial = real_grid / meta["trial"]
    ckpt = sorted(trial.glob("checkpoint_*"))[-1]
    from tune_ablations.spec.config import from_flat_dict
    from tune_ablations.training.model import TransformerLM

    ref = TransformerLM(from_flat_dict(meta["config"]).model, model.vocab_size)
    ref.load_state_dict(load_checkpoint(ckpt)["model"])
    ref.eval()
    x = torch.randint(0, model.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(x), ref(x))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.pad_token == "<|endoftext|>" and tok.model_max_length == meta["config"]["seq_len"]
    assert tok.decode(tok("residual norm")["input_ids"]) == "residual norm"


def test_fit_refuses_too_few_runs(synthetic, tmp_path, capsys):
    assert analysis.main([str(synthetic), "--fit", "--out", str(tmp_path / "f")]) == 2
    assert "a scaling fit needs at least 5 completed runs" in capsys.readouterr().err


def test_the_equal_token_table_reads_only_exact_probes_of_the_trials_compared():
    """Probes are runs of their budget only under wsd; under cosine (the rungs of a --tune-lr
    sweep or of ASHA) they are decay branches and never stand in for a budget's loss."""
    from tune_ablations.results.frames import Results
    from tune_ablations.results.report import _equal_token_section

    df = pd.DataFrame({"trial_id": ["w", "c"], "ablation": ["baseline", "short_seq"],
                       "status": ["completed"] * 2, "tokens_seen": [1000, 1000],
                       "step": [10, 10], "val_loss": [4.0, 4.1]})
    probe = {"budget_tokens": 500, "branch_step": 4, "cooldown_steps": 1, "tokens": 500,
             "val_loss_se": 0.01, "val_bpb": 2.0}
    outcomes = {"w": {"name": "baseline", "seed": 0, "config": {"schedule": "wsd"},
                      "probes": [{**probe, "val_loss": 4.5}]},
                "c": {"name": "short_seq", "seed": 0, "config": {"schedule": "cosine"},
                      "probes": [{**probe, "val_loss": 4.6}]}}
    text = "\n".join(_equal_token_section(df, Results(df, pd.DataFrame(), outcomes)))
    assert "From cooldown probes" in text and "baseline" in text and "short_seq" not in text
    cosine = "\n".join(_equal_token_section(df.iloc[1:], Results(df, pd.DataFrame(), outcomes)))
    assert "From cooldown probes" not in cosine and "same token budget" in cosine
