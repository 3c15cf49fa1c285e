"""Arms as data: the shipped reference question reproduces the configs the six hard-coded
ablations resolved to (every arm, every budget, at `seed` and `cpu`; `tiny` where stated),
factors and their rounding, the question-file and `--arm` formats with every bad input named,
the resolver's order (preset, baseline settings, arm, a trial's varied settings), and every
shipped question building at every preset."""

import argparse
import json
from dataclasses import replace
from pathlib import Path

import pytest

from tune_ablations.spec.arms import Arm, factor
from tune_ablations.spec.config import RunConfig, to_flat_dict
from tune_ablations.spec.presets import build_ablation
from tune_ablations.spec.questions import (
    SHIPPED,
    load_question,
    parse_question,
    question_toml,
    reference,
    shipped_questions,
)
from tune_ablations.spec.resolve import check_arms, resolve
from tune_ablations.spec.runspec import RunSpec, add_spec_args, parse_arm_flags, spec_from_args

KNOWN = json.loads((Path(__file__).parent / "data" / "reference_configs.json").read_text())
"""What the hard-coded ablations (presets.ABLATIONS, before arms were data) resolved to, as
differences from RunConfig's defaults: `<preset>/<arm>/<built|budget>`."""
NAMES = ["baseline", "high_lr", "low_lr", "large_batch", "short_seq", "small_model"]
# `tiny` keeps the reference's batch-size relation now (x1.5 for short_seq and small_model;
# the hard-coded tiny preset gave them the baseline's 4), and with it their warmup in steps.
TINY_CHANGED = {"short_seq": {"batch_size": 6}, "small_model": {"batch_size": 6}}


def _diff(cfg: RunConfig) -> dict:
    default = to_flat_dict(RunConfig())
    return {k: v for k, v in to_flat_dict(cfg).items() if default[k] != v}


def _config(preset: str, name: str, kind: str) -> RunConfig:
    if kind == "built":
        return build_ablation(name, preset)
    spec = RunSpec(ablation=name, preset=preset,
                   budget="iso_flops" if kind.startswith("iso_flops") else kind)
    return resolve(spec, vocab_size=1000 if kind == "iso_flops_vocab1000" else None)


@pytest.mark.parametrize("preset", ["seed", "cpu", "tiny"])
@pytest.mark.parametrize("kind", ["built", "iso_tokens", "iso_flops", "steps",
                                  "iso_flops_vocab1000"])
def test_the_reference_question_resolves_as_the_hard_coded_ablations_did(preset, kind):
    assert reference().names == NAMES[1:]
    for name in NAMES:
        got, want = _diff(_config(preset, name, kind)), KNOWN[f"{preset}/{name}/{kind}"]
        if preset == "tiny" and name in TINY_CHANGED:
            assert {k: got[k] for k in TINY_CHANGED[name]} == TINY_CHANGED[name]
            got = {k: v for k, v in got.items() if k not in ("batch_size", "warmup_steps")}
            want = {k: v for k, v in want.items() if k not in ("batch_size", "warmup_steps")}
        assert got == want, (preset, name, kind)


def test_factors_and_their_rounding():
    assert factor("x2") == 2 and factor("x0.5") == 0.5 and factor("x10/3") == 10 / 3
    for bad in ("x0", "x-2", "x", "xa", "x1/0", "x2/", "2"):
        with pytest.raises(ValueError, match="must be a factor x<number>"):
            factor(bad)
    arm = Arm("a", {"lr": "x10/3", "d_model": "x2/3", "n_layers": "x1/3", "ffn": "swiglu"})
    base = {**to_flat_dict(RunConfig()), "lr": 3e-4, "d_model": 100, "n_layers": 1}
    # floats to 6 significant digits (exactly 1e-3), integers to the nearest, at least 1
    assert arm.apply(base, "cpu") == {"lr": 1e-3, "d_model": 67, "n_layers": 1, "ffn": "swiglu"}
    at = Arm("b", {"d_model": "x2"}, {"tiny": {"d_model": 48, "n_heads": 3}})
    assert at.apply(base, "tiny") == {"d_model": 48, "n_heads": 3}
    assert at.apply(base, "cpu") == {"d_model": 200}


@pytest.mark.parametrize("kwargs, message", [
    ({"name": "a", "changes": {"lrr": "x2"}}, "arm 'a': unknown key 'lrr'; did you mean 'lr'"),
    ({"name": "a", "changes": {"vocab_size": 2048}}, "vocab_size sets the tokenizer, which "
     "every arm shares"),
    ({"name": "a", "changes": {"seed": 3}}, "seed sets the seeds (--seeds)"),
    ({"name": "a", "changes": {"corpus": "pydoc"}}, "corpus sets the data"),
    ({"name": "a", "changes": {"ffn": "x2"}}, "ffn='x2': a factor applies to numeric config"),
    ({"name": "a", "changes": {"head_dim": "x2"}}, "head_dim='x2': a factor applies"),
    ({"name": "a", "changes": {"lr": "x0"}}, "arm 'a': lr='x0' must be a factor"),
    ({"name": "a", "changes": {}}, "arm 'a' changes nothing"),
    ({"name": "baseline", "changes": {"lr": "x2"}}, "arm name 'baseline' is the question's "
     "baseline"),
    ({"name": "9lives", "changes": {"lr": "x2"}}, "arm name '9lives' must start with a letter"),
    ({"name": "a", "changes": {"lr": "x2"}, "at_preset": {"huge": {"lr": 1.0}}},
     "at_preset.huge: the preset must be one of seed, cpu, tiny"),
])
def test_an_arm_names_its_bad_key_value_and_rule(kwargs, message):
    with pytest.raises(ValueError) as err:
        Arm(**kwargs)
    assert message in str(err.value)


def test_the_short_form_round_trips_and_names_its_errors():
    arms = parse_arm_flags(["swiglu:ffn=swiglu,match_params=true", "big:d_model=x2,lr=1e-3",
                            "big@tiny:d_model=64"])
    assert arms == (Arm("swiglu", {"ffn": "swiglu", "match_params": True}),
                    Arm("big", {"d_model": "x2", "lr": 1e-3}, {"tiny": {"d_model": 64}}))
    again = parse_arm_flags([f for a in arms for f in a.to_flags()])
    assert again == arms
    for bad, message in (("swiglu", "must look like NAME:KEY=VALUE"),
                         ("swiglu:ffn", "must look like NAME:KEY=VALUE"),
                         ("x@tiny:lr=1", "no --arm x:KEY=VALUE defines arm 'x'")):
        with pytest.raises(ValueError, match=message):
            parse_arm_flags([bad])
    with pytest.raises(ValueError, match="--arm 'a' is given twice"):
        parse_arm_flags(["a:lr=x2", "a:lr=x3"])


@pytest.mark.parametrize("text, message", [
    ('descrption = "x"\n[arms.a]\nlr = "x2"\n', "unknown top-level key 'descrption'; did you "
     "mean 'description'"),
    ('[baseline]\nlrr = 1e-3\n[arms.a]\nlr = "x2"\n', "unknown key in [baseline] 'lrr'; did "
     "you mean 'lr'"),
    ('[baseline]\nablation = "high_lr"\n[arms.a]\nlr = "x2"\n', "unknown key in [baseline] "
     "'ablation'"),
    ('[baseline]\npreset = "cpu"\n', "a question needs at least one [arms.<name>] table"),
    ("[arms]\n", "[arms] must hold at least one [arms.<name>] table"),
    ('[arms]\na = 3\n', "arms.a must be a table of key = value changes"),
    ('[arms.a]\nlr = "x2"\nat_preset = 3\n', "arms.a.at_preset must hold one table per preset"),
    ('[arms.a]\nlr = \n', "TOML syntax error"),
    ('[arms.a]\nlr = "x2"\n[arms.b]\nwarmup = 3\n', "arm 'b': unknown key 'warmup'; did you "
     "mean 'warmup_steps'"),
])
def test_a_question_file_names_its_bad_key_value_and_rule(text, message):
    with pytest.raises(ValueError) as err:
        parse_question(text, "q.toml")
    assert message in str(err.value) and str(err.value).startswith("q.toml: ")


def _spec(argv: list[str]) -> RunSpec:
    ap = argparse.ArgumentParser()
    add_spec_args(ap, single=True)
    return spec_from_args(ap.parse_args(argv), default_preset="cpu")[0]


def test_a_question_file_sets_the_baseline_and_the_command_line_wins(tmp_path):
    q = tmp_path / "q.toml"
    q.write_text('[baseline]\npreset = "tiny"\nlr = 2e-3\nschedule = "wsd"\n\n'
                 '[arms.hot]\nlr = "x2"\n\n[arms.cos]\nschedule = "cosine"\n')
    spec = _spec(["--arms", str(q), "--ablation", "hot"])
    assert (spec.preset, dict(spec.overrides)) == ("tiny", {"lr": 2e-3, "schedule": "wsd"})
    assert resolve(spec).optim.lr == 4e-3 and resolve(spec).optim.schedule == "wsd"
    assert resolve(replace(spec, ablation="cos")).optim.schedule == "cosine"
    spec = _spec(["--arms", str(q), "--ablation", "hot", "--set", "lr=1e-3", "--preset", "cpu"])
    assert (spec.preset, resolve(spec).optim.lr) == ("cpu", 2e-3)
    spec = _spec(["--arms", str(q), "--arm", "small:d_model=x1/2,n_heads=x1/2"])
    assert [a.name for a in spec.arms] == ["hot", "cos", "small"]
    with pytest.raises(ValueError, match="arm 'hot' is defined twice"):
        _spec(["--arms", str(q), "--arm", "hot:lr=x3"])
    with pytest.raises(ValueError, match="unknown ablation 'high_lr'; valid keys: baseline, "
                       "hot, cos"):
        _spec(["--arms", str(q), "--ablation", "high_lr"])
    with pytest.raises(ValueError, match="no such file"):
        _spec(["--arms", str(tmp_path / "none.toml")])
    with pytest.raises(ValueError, match="unknown question .* 'positonal'; did you mean "
                       "'positional'"):
        _spec(["--arms", "positonal"])


def test_the_resolver_applies_the_arm_between_the_baseline_and_a_trials_values():
    spec = RunSpec(preset="cpu", overrides={"lr": 1e-3}, ablation="hot",
                   arms=(Arm("hot", {"lr": "x3", "warmup_steps": 24}),))
    assert resolve(spec).optim.lr == 3e-3
    assert resolve(spec.with_params(lr=5e-4)).optim.lr == 5e-4  # a trial's value wins
    # An arm that changes warmup keeps its own (the others warm up over the reference's tokens)
    assert resolve(spec).optim.warmup_steps == 24
    assert resolve(replace(spec, ablation="baseline")).optim.warmup_steps == 12
    # Derived widths: an arm's match_params gives the gated FFN the SiLU FFN's parameters.
    gated = RunSpec(preset="cpu", ablation="g",
                    arms=(Arm("g", {"ffn": "swiglu", "match_params": True}),))
    assert resolve(gated).model.d_ff == 512 and resolve(replace(gated, ablation="baseline")
                                                         ).model.d_ff == 768


@pytest.mark.parametrize("arms, budget, message", [
    ([Arm("same", {"lr": "x1"})], "iso_tokens", "arm 'same' (lr=x1) resolves to the "
     "baseline's config at preset 'cpu'"),
    ([Arm("silu", {"ffn": "silu"})], "iso_tokens", "arm 'silu' (ffn=silu) resolves to the "
     "baseline's config"),
    ([Arm("a", {"lr": "x2"}), Arm("b", {"lr": 0.0048})], "iso_tokens", "arms 'a' (lr=x2) and "
     "'b' (lr=0.0048) resolve to the same config at preset 'cpu'; keep one"),
    ([Arm("wide", {"n_heads": 5})], "iso_tokens", "arm 'wide' (n_heads=5) cannot be built at "
     "preset 'cpu': d_model=192 must be divisible by n_heads=5"),
    ([Arm("long", {"max_steps": 500})], "iso_tokens", "arm 'long': max_steps=500 has no effect "
     "with budget='iso_tokens'"),
    ([Arm("huge", {"batch_size": "x200"})], "iso_tokens", "arm 'huge': one step is 204,800 "
     "tokens (batch_size=1600 x seq_len=128), more than its budget of 122,880 tokens"),
    ([Arm("deep", {"n_layers": "x40"})], "iso_flops", "arm 'deep': its budget of "),
])
def test_arms_that_change_nothing_repeat_or_cannot_be_trained_are_refused(arms, budget,
                                                                        message):
    spec = RunSpec(preset="cpu", budget=budget, arms=tuple(arms))
    with pytest.raises(ValueError) as err:
        check_arms(spec, {a: resolve(replace(spec, ablation=a)) for a in spec.arm_names})
    assert message in str(err.value)


def test_an_arm_of_its_own_length_is_fine_with_published_steps():
    spec = RunSpec(preset="cpu", budget="steps", ablation="long",
                   arms=(Arm("long", {"max_steps": 240}),))
    assert resolve(spec).steps == 240


@pytest.mark.parametrize("name", shipped_questions())
@pytest.mark.parametrize("preset", ["seed", "cpu", "tiny"])
def test_every_shipped_question_builds_at_every_preset(name, preset):
    from tune_ablations.spec.runspec import apply_flat

    q = load_question(name)
    assert q.description and q.arms
    spec, _ = apply_flat(RunSpec(arms=q.arms), {k: v for k, v in q.baseline.items()
                                                 if k != "preset"})
    spec = replace(spec, preset=preset)
    check_arms(spec, {a: resolve(replace(spec, ablation=a)) for a in spec.arm_names})
    assert (SHIPPED / f"{name}.toml").read_text() == q.text


def test_a_question_written_back_reads_back():
    arms = (Arm("swiglu", {"ffn": "swiglu", "match_params": True}),
            Arm("big", {"d_model": "x2", "lr": 1e-3}, {"tiny": {"d_model": 64}}))
    q = parse_question(question_toml(arms, "mine"), "written")
    assert q.arms == arms and q.description == "mine"


def test_submit_sends_the_question_itself(tmp_path):
    """A submitted sweep runs on a cluster that may lack the question's file: the job's
    command line carries its text, which gives the same spec (and is stored verbatim)."""
    import shlex

    from tune_ablations import grid
    from tune_ablations.sweeps.grid_plan import question_text
    from tune_ablations.sweeps.jobs import inline_question

    q = tmp_path / "q.toml"
    q.write_text('# mine\n[baseline]\nlr = 2e-3\n\n[arms.hot]\nlr = "x2"\n')
    for rest in (["--preset", "tiny", "--arms", str(q)], ["--preset", "tiny", f"--arms={q}"]):
        sent = inline_question(rest)
        assert sent == ["--preset", "tiny", "--arms", q.read_text()]
        assert shlex.split(shlex.join(sent)) == sent  # survives the job's entrypoint
        here, there = (grid.parser().parse_args(r) for r in (rest, sent))
        spec = spec_from_args(here, default_preset="cpu")[0]
        assert spec_from_args(there, default_preset="cpu")[0] == spec
        assert question_text(there, spec) == q.read_text()
    assert inline_question(["--arms", "positional"]) == ["--arms", "positional"]


def test_a_trials_reproducing_command_trains_its_own_arm():
    """run.json's `reproduce` line (`train` with the settled spec's flags) names the trial's
    arm alone and resolves to the same config."""
    from tune_ablations import train

    spec = RunSpec(preset="tiny", ablation="b", seed=3, overrides={"lr": 2e-3},
                   arms=(Arm("a", {"lr": "x2"}), Arm("b", {"d_model": "x2", "n_heads": "x2"},
                                                      {"seed": {"d_model": 768}})))
    spec = spec.with_params(warmup_steps=4)
    settled = spec.settled()
    assert [a.name for a in settled.arms] == ["b"] and settled.params == ()
    again, _ = spec_from_args(train.parser().parse_args(settled.to_argv()), default_preset="cpu")
    assert again == settled and resolve(again) == resolve(spec)
