"""RunSpec, the one value for what a run is: for every field and a sample of its values, the
command line, TOML (best.toml, --config) and sweep.json forms give back the same spec; with
--resume a given field that differs from the stored spec is refused by name with both values,
and the same command with --resume appended is accepted."""

import argparse
import json
from dataclasses import fields, replace

import pytest

from tune_ablations.spec.arms import Arm
from tune_ablations.spec.runspec import RunSpec, add_spec_args, spec_from_args, spec_from_toml
from tune_ablations.sweeps.options import SweepError, refuse_spec_changes

SWIGLU = Arm("swiglu", {"ffn": "swiglu", "match_params": True})
BIG = Arm("big", {"d_model": "x2", "lr": 0.001, "n_heads": 12}, {"tiny": {"d_model": 64}})
NOPE = Arm("no_rope", {"pos_encoding": "none"})

SAMPLES = {
    "ablation": ["high_lr", "small_model"],
    "preset": ["tiny", "seed"],
    "data": ["pydoc", "hf:org/data/cfg", "/tmp/some corpus"],
    "eval_data": [("pydoc",), ("pydoc", "stdlib")],
    "budget": ["iso_flops", "steps"],
    "max_steps": [50, 1234],
    "token_budget": [99_000],
    "head_dim": [32],
    "ffn_mult": [3.0, 2.5],
    "lr_width": [128],
    "match_params": [True],
    "match_active_params": [True],
    "overrides": [{"lr": 0.002}, {"ffn": "swiglu", "weight_decay": 0.0, "compile": True}],
    "params": [{"batch_size": 4}],
    "arms": [(SWIGLU,), (BIG, NOPE)],
    "seed": [3],
}


def _samples():
    assert set(SAMPLES) == {f.name for f in fields(RunSpec)}  # every field is sampled
    for name, values in SAMPLES.items():
        for v in values:
            changes = {name: v}
            if name == "token_budget":
                changes["budget"] = "tokens"
            yield pytest.param(replace(RunSpec(), **changes), id=f"{name}={v}")


def _parse(argv: list[str], preset: str = "cpu"):
    ap = argparse.ArgumentParser()
    add_spec_args(ap, single=True)
    return spec_from_args(ap.parse_args(argv), default_preset=preset)


@pytest.mark.parametrize("spec", list(_samples()))
def test_cli_toml_and_sweep_json_round_trip(spec):
    if spec.params:  # a trial's varied values come from a sweep, not from the command line
        cli = spec
    else:
        cli, _ = _parse(spec.to_argv())
    assert cli == spec
    again, _ = spec_from_toml(cli.to_toml("a comment"), "best.toml")
    assert again == spec
    assert RunSpec.from_dict(json.loads(json.dumps(cli.to_dict()))) == spec


OTHER = {"ablation": "low_lr", "preset": "cpu", "data": "stdlib", "eval_data": ("stdlib",),
         "budget": "iso_tokens", "max_steps": 77, "token_budget": 12_345, "head_dim": 16,
         "ffn_mult": 4.0, "lr_width": 64, "match_params": False,
         "match_active_params": False, "overrides": {"lr": 0.005},
         "arms": (Arm("other", {"lr": "x2"}),), "seed": 9}


def _field_cases():
    for name, values in SAMPLES.items():
        if name == "params":  # set by a sweep per trial, never given on the command line
            continue
        for v in values:
            yield pytest.param(name, v, id=f"{name}={v}")


def _with(name, value):
    extra = {"budget": "tokens"} if name == "token_budget" else {}
    if name == "budget" and value == "tokens":
        extra = {"token_budget": 1000}
    return replace(RunSpec(), **{name: value, **extra})


@pytest.mark.parametrize("name, value", list(_field_cases()))
def test_resume_accepts_the_same_command_and_refuses_a_changed_field(name, value):
    stored = _with(name, value)
    given, names = _parse(stored.to_argv(), preset=stored.preset)
    refuse_spec_changes(stored, given, names)  # the same command with --resume: accepted
    changed = _with(name, OTHER[name])
    given, names = _parse(changed.to_argv(), preset=stored.preset)
    if getattr(changed, name) == getattr(RunSpec(), name) and name not in names:
        return  # going back to the default gives no flag: nothing the user gave differs
    with pytest.raises(SweepError) as err:
        refuse_spec_changes(stored, given, names)
    assert "--resume" in str(err.value) and "differs from the stored sweep's" in str(err.value)


def test_a_changed_override_is_named_with_both_values():
    stored = RunSpec(overrides={"lr": 0.002})
    given, names = _parse(["--set", "lr=0.003"])
    with pytest.raises(SweepError, match=r"--set lr=0\.003 differs from the stored sweep's "
                                         r"lr: 0\.002"):
        refuse_spec_changes(stored, given, names)
    given, names = _parse(["--iso-flops"])
    with pytest.raises(SweepError, match="budget 'iso_flops' differs from the stored sweep's "
                                         "'iso_tokens'"):
        refuse_spec_changes(stored, given, names)


def test_match_params_in_best_toml_loads_back():
    """A search with --set match_params=true wrote a best.toml that --config refused."""
    spec = RunSpec(overrides={"ffn": "swiglu"}, match_params=True, params={"lr": 0.001})
    text = spec.settled().to_toml("best of a search")
    back, _ = spec_from_toml(text, "best.toml")
    assert back.match_params and dict(back.overrides) == {"ffn": "swiglu", "lr": 0.001}


def test_bad_spec_values_name_field_value_and_rule():
    with pytest.raises(ValueError, match="did you mean 'high_lr'"):
        RunSpec(ablation="hi_lr")
    with pytest.raises(ValueError, match="budget='iso' must be one of"):
        RunSpec(budget="iso")
    with pytest.raises(ValueError, match="--tokens=0 must be an integer > 0"):
        RunSpec(budget="tokens", token_budget=0)
    with pytest.raises(ValueError, match="goes with budget='tokens'"):
        RunSpec(token_budget=100)
    with pytest.raises(ValueError, match="seed=-1 must be an integer >= 0"):
        RunSpec(seed=-1)
