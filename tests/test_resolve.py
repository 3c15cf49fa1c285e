"""One resolver: the same spec gives the same run from every entry point; overrides never
flatten an ablation silently; budgets are measured against the baseline with the shared
settings (iso-token by default, iso-FLOP counting the real vocabulary); every run of a sweep
evaluates at the same token milestones, and ASHA's rungs fall on them."""

import argparse
import math
from pathlib import Path

import pytest

from tune_ablations.spec.presets import build_ablation
from tune_ablations.spec.questions import reference
from tune_ablations.spec.resolve import resolve
from tune_ablations.spec.runspec import RunSpec, add_spec_args, spec_from_args
from tune_ablations.sweeps.options import ResourceOptions
from tune_ablations.sweeps.search_space import SHIPPED, load_space
from tune_ablations.training.step import eval_due

ABLATIONS = ["baseline", *reference().names]


def _args(argv, single=False):
    ap = argparse.ArgumentParser()
    add_spec_args(ap, single=single)
    return ap.parse_args(argv)


def _spec(argv, single=True, preset="cpu"):
    return spec_from_args(_args(argv, single=single), default_preset=preset)


def test_set_moves_the_baseline_and_every_arm_keeps_its_relation(corpus_dir, tmp_path):
    """`--set lr=...` sets the baseline's lr; arms stated as factors move with it (nothing
    collapses onto the baseline), and an absolute arm value still wins over --set."""
    from tune_ablations import grid
    from tune_ablations.sweeps.grid_plan import build_plan
    from tune_ablations.training.resolved import Resolver

    args = grid.parser().parse_args(["--preset", "tiny", "--data", str(corpus_dir), "--set",
                                     "lr=2e-3", "vocab_size=300", "--storage", str(tmp_path)])
    plan = build_plan(args, None, 0, ResourceOptions(), Resolver())
    lrs = {t.ablation: resolve(t).optim.lr for t in plan.trials if t.seed == 0}
    six = pytest.approx  # factors round to 6 significant digits
    assert lrs == {"baseline": 2e-3, "high_lr": six(2e-3 * 10 / 3, rel=2e-6),
                   "low_lr": six(2e-3 / 3, rel=2e-6), "large_batch": six(2e-3 * 5 / 3, rel=2e-6),
                   "short_seq": 2e-3, "small_model": 2e-3}
    spec, _ = _spec(["--preset", "cpu", "--set", "ffn=silu", "--arm", "g:ffn=swiglu",
                     "--ablation", "g"])
    assert resolve(spec).model.ffn == "swiglu"


def test_best_toml_stays_unresolved_and_data_beats_its_corpus(tmp_path, corpus_dir):
    best = tmp_path / "best.toml"
    best.write_text('ablation = "baseline"\npreset = "cpu"\niso_tokens = true\n\n[config]\n'
                    'batch_size = 16\ncorpus = "pydoc"\n')
    spec, _ = _spec(["--config", str(best), "--data", str(corpus_dir)])
    assert spec.data == str(corpus_dir) and spec.budget == "iso_tokens"
    cfg = resolve(spec)
    base = build_ablation("baseline", "cpu")
    # The file's batch_size is a shared setting: the baseline with it is the reference run,
    # and an arm stated as a factor of the batch keeps its relation to it.
    assert cfg.data.batch_size == 16 and cfg.steps == base.steps
    from dataclasses import replace

    big = resolve(replace(spec, ablation="large_batch"))
    assert big.data.batch_size == 32 and big.total_tokens == cfg.total_tokens


def test_train_and_grid_flags_mean_the_same(corpus_dir):
    from dataclasses import replace

    from tune_ablations import grid

    one, _ = _spec(["--preset", "cpu", "--tokens", "300000"])
    from tune_ablations.sweeps.grid_plan import build_plan
    from tune_ablations.training.resolved import Resolver

    sweep = build_plan(grid.parser().parse_args(
        ["--preset", "cpu", "--tokens", "300000", "--ablations", "baseline", "--seeds", "1"]),
        None, 0, ResourceOptions(), Resolver())
    assert resolve(one) == resolve(sweep.trials[0])
    assert resolve(one).optim.warmup_steps == build_ablation("baseline", "cpu").optim.warmup_steps
    via_set, _ = _spec(["--preset", "cpu", "--set", "iso_tokens=true", "--ablation",
                        "large_batch"])
    via_flag, _ = _spec(["--preset", "cpu", "--iso-tokens", "--ablation", "large_batch"])
    assert resolve(via_set) == resolve(via_flag)  # accepted and identical, not refused
    assert replace(via_flag, budget="iso_tokens") == RunSpec(ablation="large_batch")
    with pytest.raises(ValueError, match="tokens is the resolved budget; use --tokens 5"):
        _spec(["--set", "tokens=5"])


def test_repeated_set_adds_up():
    spec, _ = _spec(["--set", "lr=1e-3", "--set", "ffn=swiglu"])
    assert dict(spec.overrides) == {"lr": 1e-3, "ffn": "swiglu"}


ISO_SPACES = [p for p in sorted(SHIPPED.glob("*.toml"))
              if load_space(p).base_spec(RunSpec()).budget == "iso_tokens"]


def test_the_iso_token_spaces_are_all_but_the_scaling_one():
    assert {p.stem for p in SHIPPED.glob("*.toml")} - {p.stem for p in ISO_SPACES} == \
        {"scaling"}  # scaling varies the token budget on purpose


@pytest.mark.parametrize("path", ISO_SPACES, ids=lambda p: p.stem)
@pytest.mark.parametrize("preset", ["cpu", "seed"])
def test_every_corner_of_every_space_trains_the_same_tokens(path, preset):
    space = load_space(path)
    base = space.base_spec(RunSpec(preset=preset))
    configs = [resolve(c) for c in space.corners(base)]
    ref = resolve(RunSpec(preset=preset, overrides=base.overrides))
    for c in configs:
        assert ref.total_tokens <= c.total_tokens < ref.total_tokens + c.tokens_per_step, c


def test_rungs_fall_on_a_report_of_every_trial():
    """Every ASHA rung (grace x eta^k, grace = the first milestone) is within one step after a
    report of every trial of the largest shipped space."""
    from tune_ablations.sweeps.options import SearchOptions
    from tune_ablations.sweeps.search_plan import derive
    from tune_ablations.training.resolved import Resolver

    space = load_space(SHIPPED / "lr_batch_seq_dim.toml")
    base, _ = derive(space, space.base_spec(RunSpec(preset="cpu")), SearchOptions(),
                     Resolver())
    configs = [resolve(c) for c in space.corners(base)]  # planned as the search plans them
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
        cfg = resolve(RunSpec(preset=preset, data="hf:org/data/cfg"))
        ref = build_ablation("baseline", preset)
        assert cfg.data.num_documents * 700 * 0.9 >= ref.total_tokens or \
            cfg.data.num_documents == 100


def test_the_spec_round_trips_through_the_ray_boundary():
    for name in ABLATIONS:
        spec = RunSpec(preset="cpu", ablation=name, seed=2, overrides={"lr": 1e-3},
                       params={"batch_size": 4})
        assert RunSpec.from_dict(spec.to_dict()) == spec
        assert resolve(RunSpec.from_dict(spec.to_dict())) == resolve(spec)


def test_dry_run_json_shows_iso_tokens(corpus_dir, tmp_path, capsys):
    import json

    from tune_ablations import search

    space = Path(tmp_path / "s.toml")
    space.write_text('ablation = "baseline"\n[fixed]\niso_tokens = true\n[params.batch_size]\n'
                     'distribution = "choice"\nvalues = [2, 4, 8]\n')
    assert search.main(["--space", str(space), "--preset", "tiny", "--data", str(corpus_dir),
                        "--set", "vocab_size=300", "--dry-run", "--json",
                        "--storage", str(tmp_path)]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]  # JSON only
    # the planned samples (the base config's batch first, then TPE's seeded start)
    assert len(rows) == 4 and len({r["batch_size"] for r in rows}) > 1
    steps = {2: 60, 4: 30, 8: 15}  # iso-token, not iso-step
    assert all(r["steps"] == steps[r["batch_size"]] for r in rows)
    assert len({r["tokens"] for r in rows}) == 1
    assert {"flops", "epochs", "est_seconds", "params"} <= set(rows[0])
    assert not list(tmp_path.glob("search-*"))  # a dry run writes nothing


def test_a_search_space_name_finds_the_shipped_file():
    from tune_ablations.sweeps.search_space import find_space

    assert find_space("lr") == SHIPPED / "lr.toml"
    with pytest.raises(ValueError, match=r"search space \(name or .toml file\) 'lrr'; did "
                       "you mean 'lr'"):
        find_space("lrr")
    assert math.isfinite(resolve(RunSpec(preset="tiny")).optim.lr)


def _flops(c, vocab):
    from tune_ablations.spec.flops import flops_per_token

    return flops_per_token(c.model, vocab, c.data.seq_len) * c.total_tokens


@pytest.mark.parametrize("overrides, vocab", [({}, 1024), ({}, 49152),
                                              ({"vocab_size": 4096}, 4096),
                                              ({"ffn": "swiglu"}, 1024)],
                         ids=["cpu", "reference-tokenizer", "vocab-4096", "swiglu"])
def test_iso_flops_is_iso_with_the_real_vocabulary_and_shared_overrides(overrides, vocab):
    """Every arm trains the baseline's real training FLOPs (the tokenizer's vocabulary, the
    shared overrides), within one step; the baseline arm trains its own budget."""
    spec = RunSpec(preset="cpu", budget="iso_flops", overrides=overrides)
    from dataclasses import replace

    base = resolve(spec, vocab_size=vocab)
    own = build_ablation("baseline", "cpu", **overrides)
    assert abs(base.total_tokens - own.total_tokens) < base.tokens_per_step
    for name in ABLATIONS:
        c = resolve(replace(spec, ablation=name), vocab_size=vocab)
        fpt = _flops(c, vocab) / c.total_tokens
        assert _flops(base, vocab) <= _flops(c, vocab) < _flops(base, vocab) + fpt * \
            c.tokens_per_step, name


def test_iso_flops_small_model_sees_more_tokens_and_matched_swiglu():
    from tune_ablations.spec.flops import count_params

    ref = build_ablation("baseline", "cpu")
    small = resolve(RunSpec(preset="cpu", ablation="small_model", budget="iso_flops"))
    assert small.total_tokens > ref.total_tokens  # a smaller model sees more tokens
    silu = build_ablation("baseline", "cpu")
    gated = resolve(RunSpec(preset="cpu", overrides={"ffn": "swiglu"}, match_params=True))
    a = count_params(silu.model, 1024)["non_embedding_params"]
    b = count_params(gated.model, 1024)["non_embedding_params"]
    assert abs(a - b) / a < 0.01 and gated.model.d_ff == 512
    with pytest.raises(ValueError, match="each set the budget; keep one"):
        RunSpec.from_dict({"preset": "cpu", "iso_flops": True, "iso_tokens": True})


def test_probes_are_checked_against_the_budgeted_run_not_the_presets_default():
    """The tiny preset trains 30 steps (3,840 tokens); with the budget set to 60 steps a probe
    at 5,120 tokens fits and resolves, whatever the arm's own default length; one past the
    budget is refused naming the run's tokens."""
    spec = RunSpec(ablation="baseline", preset="tiny", max_steps=60,
                   overrides=(("probe_tokens", "1280,5120"),))
    assert build_ablation("baseline", "tiny").total_tokens == 3840
    for arm in ("baseline", "short_seq", "large_batch"):
        cfg = resolve(RunSpec(**{**spec.__dict__, "ablation": arm}))
        assert cfg.eval.probe_tokens == "1280,5120" and cfg.total_tokens == 7680
    with pytest.raises(ValueError, match="probe_tokens budget 7680 must be < the run's 7680"):
        resolve(RunSpec(ablation="baseline", preset="tiny", max_steps=60,
                        overrides=(("probe_tokens", "7680"),)))
