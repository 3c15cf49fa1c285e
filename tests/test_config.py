import dataclasses

import pytest

from tune_ablations.spec.config import (
    PRESETS,
    RunConfig,
    check_paths,
    field_names,
    from_flat_dict,
    to_flat_dict,
    with_overrides,
)
from tune_ablations.spec.names import DIVERGED_LOSS, METRIC, METRICS, MODE, Status
from tune_ablations.spec.presets import CPU_LR_SCALE, build_ablation
from tune_ablations.spec.questions import reference
from tune_ablations.spec.resolve import resolve, with_token_budget
from tune_ablations.spec.runspec import RunSpec, load_spec_file, parse_sets

ABLATIONS = ["baseline", *reference().names]


def test_metric_named_once():
    assert (METRIC, MODE) == ("val_loss", "min")
    assert DIVERGED_LOSS > 20  # above ln(vocab) for any real tokenizer, and finite
    by_name = {m.name: m for m in METRICS}
    assert by_name["val_acc"].mode == "max" and by_name["val_acc"].diverged == 0.0
    assert all(m.diverged == m.diverged and abs(m.diverged) < float("inf") for m in METRICS)
    assert Status.COMPLETED == "completed" and {"completed": 1}[Status.COMPLETED] == 1


def test_reference_ablations_as_published():
    base = build_ablation("baseline", "seed")
    m, o, d = base.model, base.optim, base.data
    assert (m.d_model, m.n_heads, m.n_layers, m.d_ff) == (384, 6, 12, 1536)
    assert (d.batch_size, o.lr, d.seq_len, base.steps, base.eval.eval_every) == (
        8, 3e-4, 512, 2000, 400)
    assert d.num_documents == 0  # the whole corpus (a Hub corpus is sized by resolve)
    assert (o.weight_decay, o.beta1, o.beta2, o.grad_clip, o.min_lr_ratio) == (
        0.1, 0.9, 0.95, 1.0, 0.1)
    got = {n: build_ablation(n, "seed") for n in ABLATIONS}
    assert list(got) == ["baseline", "high_lr", "low_lr", "large_batch", "short_seq",
                         "small_model"]
    assert got["high_lr"].optim.lr == 1e-3
    assert got["low_lr"].optim.lr == 1e-4
    assert (got["large_batch"].data.batch_size, got["large_batch"].optim.lr) == (16, 5e-4)
    assert (got["short_seq"].data.seq_len, got["short_seq"].data.batch_size) == (256, 12)
    sm = got["small_model"]
    assert (sm.model.d_model, sm.model.n_heads, sm.model.n_layers, sm.model.d_ff,
            sm.data.batch_size) == (256, 4, 8, 1024, 12)
    # Everything not named in an ablation equals the baseline.
    for name, cfg in got.items():
        diff = {k for k, v in to_flat_dict(cfg).items() if to_flat_dict(base)[k] != v}
        defined = dict(reference().arms[ABLATIONS.index(name) - 1].changes) if name != \
            "baseline" else {}
        assert diff <= set(defined) | {"name"}, (name, diff)


def test_warmup_zero_reproduces_reference_schedule():
    cfg = build_ablation("baseline", "seed", warmup_steps=0)
    assert cfg.optim.warmup_steps == 0


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_cpu_preset_keeps_relations(name):
    seed_b, cpu_b = build_ablation("baseline", "seed"), build_ablation("baseline", "cpu")
    seed_a, cpu_a = build_ablation(name, "seed"), build_ablation(name, "cpu")
    assert cpu_a.optim.lr / cpu_b.optim.lr == pytest.approx(seed_a.optim.lr / seed_b.optim.lr)
    assert cpu_b.optim.lr == pytest.approx(CPU_LR_SCALE * seed_b.optim.lr)
    assert cpu_a.data.batch_size / cpu_b.data.batch_size == \
        seed_a.data.batch_size / seed_b.data.batch_size
    assert cpu_a.data.seq_len / cpu_b.data.seq_len == seed_a.data.seq_len / seed_b.data.seq_len
    for k in ("d_model", "n_layers", "n_heads", "d_ff"):
        assert getattr(cpu_a.model, k) / getattr(cpu_b.model, k) == pytest.approx(
            getattr(seed_a.model, k) / getattr(seed_b.model, k))
    assert cpu_a.model.d_model / cpu_a.model.n_layers == pytest.approx(
        cpu_b.model.d_model / cpu_b.model.n_layers)
    assert cpu_a.model.head_dim == cpu_b.model.head_dim
    assert cpu_a.total_tokens < seed_a.total_tokens


@pytest.mark.parametrize("overrides, message", [
    ({"d_model": 250, "n_heads": 4}, "d_model=250 must be divisible by n_heads=4"),
    ({"d_model": 36, "n_heads": 4}, "head_dim=9"),
    ({"lr": 0.0}, "lr=0.0 must be > 0"),
    ({"lr": -1e-3}, "lr=-0.001 must be > 0"),
    ({"lr": "fast"}, "lr='fast' must be a number"),
    ({"lr": float("nan")}, "lr=nan must be finite"),
    ({"batch_size": 0}, "batch_size=0 must be > 0"),
    ({"max_steps": 0}, "max_steps=0 must be > 0"),
    ({"max_steps": 50, "warmup_steps": 50}, "warmup_steps=50 must be < the run's steps=50"),
    ({"seq_len": 1}, "seq_len=1 must be >= 2"),
    ({"seq_len": 8192}, "seq_len=8192 must be <= max_seq_len=4096"),
    ({"corpus": "hf:a/b/c", "num_documents": 0}, "num_documents=0 must be > 0 for a Hub"),
    ({"val_fraction": 1.5}, "val_fraction=1.5 must be in (0, 1)"),
    ({"precision": "fp8"}, "precision='fp8' must be one of"),
    ({"ffn": "relu"}, "ffn='relu' must be one of"),
    ({"n_layers": 2.5}, "n_layers=2.5 must be an integer"),
    ({"eval_every": 0}, "eval_every=0 must be > 0"),
    ({"seed": -1}, "seed=-1 must be an integer >= 0"),
    ({"beta2": 1.0}, "beta2=1.0 must be in [0, 1)"),
    ({"eval_contexts": "64,x"}, "eval_contexts='64,x' must be comma-separated context lengths"),
    ({"eval_contexts": "1"}, "eval_contexts='1' must be comma-separated context lengths >= 2"),
])
def test_validation_names_value_and_rule(overrides, message):
    with pytest.raises(ValueError) as err:
        build_ablation("baseline", "cpu", **overrides)
    assert message in str(err.value)


def test_paths_are_checked_where_the_data_is_read():
    """A config names a corpus by path without touching the disk (a trial on another host
    builds it); the driver checks the path before any compute."""
    cfg = build_ablation("baseline", "cpu", corpus="/no/such/corpus.txt")
    with pytest.raises(ValueError, match="corpus='/no/such/corpus.txt' is not an embedded"):
        check_paths(cfg.data)
    with pytest.raises(ValueError, match="eval_data corpus '/no/such' is not"):
        check_paths(build_ablation("baseline", "tiny", eval_data="pydoc,/no/such").data)


def test_configs_are_frozen():
    cfg = build_ablation("baseline", "cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("name", list(ABLATIONS))
def test_flat_round_trip(name, preset):
    cfg = build_ablation(name, preset, seed=7)
    flat = to_flat_dict(cfg)
    assert set(flat) == set(field_names())
    assert from_flat_dict(flat) == cfg
    resolved = resolve(RunSpec(ablation=name, preset=preset, seed=7, budget="steps"))
    assert with_overrides(resolved, {"eval_every_tokens": 0}) == cfg
    base = build_ablation("baseline", preset)
    assert resolved.eval.eval_every_tokens == base.eval.eval_every * base.tokens_per_step


def test_unknown_key_suggests_closest():
    with pytest.raises(ValueError, match="unknown config key 'lrr'; did you mean 'lr'"):
        from_flat_dict({"lrr": 1e-3})
    with pytest.raises(ValueError, match="did you mean 'lr'"):
        RunSpec(overrides={"lrr": 1e-3})
    with pytest.raises(ValueError, match="did you mean 'n_heads'"):
        with_overrides(RunConfig(), {"n_head": 4})
    with pytest.raises(ValueError, match="unknown ablation 'hi_lr'; did you mean 'high_lr'"):
        build_ablation("hi_lr")


def test_iso_tokens_and_token_budget():
    base = build_ablation("baseline", "cpu")
    for name in ABLATIONS:
        cfg = resolve(RunSpec(ablation=name, preset="cpu"))  # iso_tokens: the default
        assert abs(cfg.total_tokens - base.total_tokens) < cfg.tokens_per_step
    big = resolve(RunSpec(ablation="large_batch", preset="cpu"))
    assert big.steps == base.steps // 2
    # Warmup is the reference run's warmup *tokens*: half the steps at twice the batch.
    assert big.optim.warmup_steps == base.optim.warmup_steps // 2
    cfg = with_token_budget(base, 4 * base.total_tokens)
    assert cfg.steps == 4 * base.steps
    assert cfg.optim.warmup_steps == base.optim.warmup_steps  # the same warmup tokens
    with pytest.raises(ValueError, match="token_budget=0 must be an integer > 0"):
        with_token_budget(base, 0)


def test_parse_sets_and_config_file(tmp_path):
    assert parse_sets(["lr=1e-3", "ffn=swiglu", "compile=true", "n_layers=3"]) == {
        "lr": 1e-3, "ffn": "swiglu", "compile": True, "n_layers": 3}
    with pytest.raises(ValueError, match="did you mean 'd_model'"):
        RunSpec(overrides=parse_sets(["dmodel=64"]))
    with pytest.raises(ValueError, match="must look like key=value"):
        parse_sets(["lr"])
    good = tmp_path / "best.toml"
    good.write_text('ablation = "baseline"\npreset = "cpu"\n[config]\nlr = 0.002\n')
    spec, given = load_spec_file(good)
    assert (spec.ablation, spec.preset, dict(spec.overrides)) == ("baseline", "cpu",
                                                                   {"lr": 0.002})
    assert given == {"ablation", "preset", "overrides"}
    bad = tmp_path / "bad.toml"
    bad.write_text('[config]\nlr = 0.002\nbatch_size = \n')
    with pytest.raises(ValueError, match=r"TOML syntax error.*line 3"):
        load_spec_file(bad)
    typo = tmp_path / "typo.toml"
    typo.write_text('[config]\nlearning_rate = 0.1\n')
    with pytest.raises(ValueError, match="unknown config key"):
        load_spec_file(typo)
