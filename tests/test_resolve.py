"""One resolver: the same spec gives the same run from every entry point; overrides never
flatten an ablation silently; budgets are iso-token from the unmodified base; every run of a
sweep evaluates at the same token milestones, and ASHA's rungs fall on them."""

import argparse
import math
from pathlib import Path

import pytest

from tune_ablations.cli import add_spec_args, spec_from_args
from tune_ablations.config import to_flat_dict
from tune_ablations.resolve import ABLATIONS, build_ablation, check_collapse, resolve
from tune_ablations.search_space import SHIPPED, load_space
from tune_ablations.step import eval_due


def _args(argv, single=False):
    ap = argparse.ArgumentParser()
    add_spec_args(ap, single=single)
    return ap.parse_args(argv)


def test_grid_set_lr_is_refused_naming_the_arms(corpus_dir, tmp_path, capsys):
    from tune_ablations import grid

    code = grid.main(["--preset", "tiny", "--data", str(corpus_dir), "--set", "lr=3e-3",
                      "--storage", str(tmp_path), "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "lr=0.003 would give high_lr, low_lr, large_batch the same lr" in err
    assert "--force-set" in err


def test_force_set_is_recorded_in_the_plan(corpus_dir, tmp_path):
    from tune_ablations import grid

    args = grid.parser().parse_args(["--preset", "tiny", "--data", str(corpus_dir), "--set",
                                     "lr=3e-3", "--force-set", "--storage", str(tmp_path)])
    plan = grid.build_plan(args, None)
    assert plan.forced == {"lr": ["high_lr", "low_lr", "large_batch"]}
    assert {c.optim.lr for c in plan.configs} == {3e-3}
    # Keys no arm defines pass without --force-set; an arm left out is not collapsed.
    assert check_collapse({"weight_decay": 0.0}, list(ABLATIONS), force=False) == {}
    assert check_collapse({"lr": 1e-3}, ["baseline", "short_seq"], force=False) == {}


def test_best_toml_stays_unresolved_and_data_beats_its_corpus(tmp_path, corpus_dir):
    best = tmp_path / "best.toml"
    best.write_text('ablation = "baseline"\npreset = "cpu"\niso_tokens = true\n\n[config]\n'
                    'batch_size = 16\ncorpus = "pydoc"\n')
    spec, overrides = spec_from_args(_args(["--config", str(best), "--data", str(corpus_dir)],
                                           single=True))
    assert spec["corpus"] == str(corpus_dir) and spec["iso_tokens"] is True
    cfg = resolve(spec)
    base = build_ablation("baseline", "cpu")
    assert abs(cfg.total_tokens - base.total_tokens) < cfg.tokens_per_step  # iso, not iso-step
    assert cfg.steps == base.steps // 2 and cfg.optim.warmup_steps == base.optim.warmup_steps // 2
    with pytest.raises(ValueError, match="batch_size=16 would give large_batch, short_seq, "
                       "small_model the same batch_size"):
        check_collapse(overrides, list(ABLATIONS), force=False, where="--config")


def test_train_and_grid_flags_mean_the_same(corpus_dir):
    from tune_ablations import grid

    one, _ = spec_from_args(_args(["--preset", "cpu", "--tokens", "300000"], single=True))
    sweep = grid.build_plan(grid.parser().parse_args(
        ["--preset", "cpu", "--tokens", "300000", "--ablations", "baseline"]), None)
    assert resolve(one) == sweep.configs[0]
    assert resolve(one).optim.warmup_steps != build_ablation("baseline", "cpu").optim.warmup_steps
    via_set, _ = spec_from_args(_args(["--preset", "cpu", "--set", "iso_tokens=true",
                                       "--ablation", "large_batch"], single=True))
    via_flag, _ = spec_from_args(_args(["--preset", "cpu", "--iso-tokens", "--ablation",
                                        "large_batch"], single=True))
    assert resolve(via_set) == resolve(via_flag)  # accepted and identical, not refused
    with pytest.raises(ValueError, match="tokens is the resolved budget; use --tokens 5"):
        spec_from_args(_args(["--set", "tokens=5"], single=True))


def test_repeated_set_adds_up():
    spec, _ = spec_from_args(_args(["--set", "lr=1e-3", "--set", "ffn=swiglu"], single=True))
    assert spec["lr"] == 1e-3 and spec["ffn"] == "swiglu"


@pytest.mark.parametrize("path", sorted(SHIPPED.glob("*.toml")), ids=lambda p: p.stem)
@pytest.mark.parametrize("preset", ["cpu", "seed"])
def test_every_corner_of_every_space_trains_the_same_tokens(path, preset):
    from tune_ablations.search import corner_specs

    space = load_space(path)
    if not space.fixed.get("iso_tokens"):
        pytest.skip("not an iso-token space")
    configs = [resolve(s) for s in corner_specs(space, space.base_flat(preset))]
    ref = build_ablation("baseline", preset)
    for c in configs:
        assert ref.total_tokens <= c.total_tokens < ref.total_tokens + c.tokens_per_step, c


def test_rungs_fall_on_a_report_of_every_trial():
    """Every ASHA rung (grace x eta^k, grace = the first milestone) is within one step after a
    report of every trial of the largest shipped space."""
    from tune_ablations.search import corner_specs

    space = load_space(SHIPPED / "lr_batch_seq_dim.toml")
    configs = [resolve(s) for s in corner_specs(space, space.base_flat("cpu"))]
    milestone = {c.eval.eval_every_tokens for c in configs}
    assert len(milestone) == 1
    grace, eta, max_t = milestone.pop(), 3, max(c.total_tokens for c in configs)
    rungs = [grace * eta**k for k in range(10) if grace * eta**k < max_t]
    assert len(rungs) >= 2
    for c in configs:
        reports = [s * c.tokens_per_step for s in range(1, c.steps + 1) if eval_due(c, s)]
        for r in rungs:
            assert any(r <= t < r + c.tokens_per_step for t in reports), (c.data, r, reports)


def test_seed_preset_uses_the_whole_corpus_and_hub_corpora_are_sized():
    assert build_ablation("baseline", "seed").data.num_documents == 0
    for preset in ("cpu", "seed", "tiny"):
        cfg = resolve({"preset": preset, "corpus": "hf:org/data/cfg"})
        ref = build_ablation("baseline", preset)
        assert cfg.data.num_documents * 700 * 0.9 >= ref.total_tokens or \
            cfg.data.num_documents == 100


def test_the_flat_spec_round_trips_through_the_ray_boundary():
    for name in ABLATIONS:
        cfg = resolve({"preset": "cpu", "ablation": name, "iso_tokens": True, "seed": 2})
        assert resolve(to_flat_dict(cfg)) == cfg


def test_dry_run_json_shows_iso_tokens(corpus_dir, tmp_path, capsys):
    import json

    from tune_ablations import search

    space = Path(tmp_path / "s.toml")
    space.write_text('ablation = "baseline"\n[fixed]\niso_tokens = true\n[params.batch_size]\n'
                     'distribution = "choice"\nvalues = [2, 4, 8]\n')
    assert search.main(["--space", str(space), "--preset", "tiny", "--data", str(corpus_dir),
                        "--set", "vocab_size=300", "--dry-run", "--json",
                        "--storage", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()
            if line.startswith("{")]
    assert [r["batch_size"] for r in rows] == [2, 4, 8]
    assert [r["steps"] for r in rows] == [60, 30, 15]  # iso-token, not iso-step
    assert len({r["tokens"] for r in rows}) == 1
    assert {"flops", "epochs", "est_seconds", "params"} <= set(rows[0])
    assert not list(tmp_path.glob("search-*"))  # a dry run writes nothing


def test_a_search_space_name_finds_the_shipped_file():
    from tune_ablations.search_space import find_space

    assert find_space("lr") == SHIPPED / "lr.toml"
    with pytest.raises(ValueError, match=r"search space \(name or .toml file\) 'lrr'; did "
                       "you mean 'lr'"):
        find_space("lrr")
    assert math.isfinite(resolve({"preset": "tiny"}).optim.lr)


def test_iso_flops_and_matched_swiglu():
    from tune_ablations.flops import count_params, flops_per_token

    ref = build_ablation("baseline", "cpu")
    ref_flops = flops_per_token(ref.model, ref.data.vocab_size, ref.data.seq_len) * \
        ref.total_tokens
    for name in ABLATIONS:
        c = resolve({"preset": "cpu", "ablation": name, "iso_flops": True})
        fpt = flops_per_token(c.model, c.data.vocab_size, c.data.seq_len)
        assert ref_flops <= fpt * c.total_tokens < ref_flops + fpt * c.tokens_per_step
    small = resolve({"preset": "cpu", "ablation": "small_model", "iso_flops": True})
    assert small.total_tokens > ref.total_tokens  # a smaller model sees more tokens
    silu = build_ablation("baseline", "cpu")
    gated = resolve({"preset": "cpu", "ffn": "swiglu", "match_params": True})
    a = count_params(silu.model, 1024)["non_embedding_params"]
    b = count_params(gated.model, 1024)["non_embedding_params"]
    assert abs(a - b) / a < 0.01 and gated.model.d_ff == 512
    with pytest.raises(ValueError, match="each set the budget; keep one"):
        resolve({"preset": "cpu", "iso_flops": True, "iso_tokens": True})
