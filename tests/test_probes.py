"""`precision=auto` and `compile=auto`: one decision for a set of runs from a probe of their
shapes, weighted by the steps each trains; pinned into configs and specs, recorded, cached.
The probe's timing function is replaced at the boundary, so every answer below is known."""

import pytest
import torch

from tune_ablations.spec.config import with_overrides
from tune_ablations.spec.runspec import RunSpec
from tune_ablations.sweeps.decide import mixed, pin_spec
from tune_ablations.training import probes as P
from tune_ablations.training.trainer import train

CPU = torch.device("cpu")


@pytest.fixture
def cache(monkeypatch, tmp_path):
    monkeypatch.setenv("TUNE_ABLATIONS_CACHE", str(tmp_path))
    monkeypatch.setattr(P, "cpu_bf16_units", lambda: "amx_bf16")
    return tmp_path


def fake(times: dict, calls: list | None = None):
    """A probe that answers from `times[(kind, batch_size)]` and records what it measured."""
    def measure(kind, cfg, vocab, amp):
        if calls is not None:
            calls.append((kind, cfg.data.batch_size))
        return times[(kind, cfg.data.batch_size)]
    return measure


def auto(cfg, **over):
    return with_overrides(cfg, {"precision": "auto", "compile": False, **over})


def test_a_cpu_without_bf16_units_trains_in_fp32_without_a_probe(tiny_cfg, cache, monkeypatch):
    monkeypatch.setattr(P, "cpu_bf16_units", lambda: None)
    c = P.decide([(auto(tiny_cfg), 300)], CPU, measure=fake({}))  # any measurement would fail
    assert c.precision == "fp32" and "no native bf16" in c.precision_reason and not c.measured


def test_one_precision_for_every_shape_from_the_total_time(tiny_cfg, cache):
    # Per shape, bf16 wins at batch 4 (1.67x) and loses at batch 2 (0.98x): a per-shape rule
    # would train the two arms in different precisions. Over both (equal steps) bf16 takes
    # 1.6 s against 2.0 s, so every run trains in bf16.
    times = {("precision_bf16", 4): {"fp32": 1.0, "bf16": 0.6},
             ("precision_bf16", 2): {"fp32": 1.0, "bf16": 1.02}}
    calls = []
    runs = [(auto(tiny_cfg), 300), (auto(tiny_cfg, batch_size=2), 300), (auto(tiny_cfg), 300)]
    c = P.decide(runs, CPU, scope="sweep", measure=fake(times, calls))
    assert c.precision == "bf16"
    assert sorted(calls) == [("precision_bf16", 2), ("precision_bf16", 4)]
    # (2 x 30 x 1.0 + 30 x 1.0) / (2 x 30 x 0.6 + 30 x 1.02) = 90 / 66.6
    assert "1.35x faster" in c.precision_reason and "3 runs at 2 shapes" in c.precision_reason
    assert "0.98x-1.67x per shape" in c.precision_reason
    assert {tuple(m) for m in c.measured.values()} == {("fp32", "bf16")}
    assert P.decide(runs, CPU, scope="sweep", measure=fake(times, calls)) == c
    assert len(calls) == 2  # cached per machine and shape


def test_the_steps_each_shape_trains_weigh_the_decision(tiny_cfg, cache):
    times = {("precision_bf16", 4): {"fp32": 1.0, "bf16": 0.6},  # 10 steps: saves 4 s
             ("precision_bf16", 2): {"fp32": 1.0, "bf16": 1.2}}  # 100 steps: costs 20 s
    runs = [(auto(tiny_cfg, max_steps=10), 300),
            (auto(tiny_cfg, batch_size=2, max_steps=100), 300)]
    c = P.decide(runs, CPU, scope="sweep", measure=fake(times))
    assert c.precision == "fp32" and "bf16 no faster: 0.87x" in c.precision_reason


def test_explicit_precisions_are_kept_and_autos_follow_them(tiny_cfg, cache):
    fp32 = with_overrides(tiny_cfg, {"precision": "fp32"})
    c = P.decide([(fp32, 300)], CPU, measure=fake({}))
    assert c.precision == "fp32" and c.precision_reason == "precision=fp32 (asked)"
    c = P.decide([(with_overrides(tiny_cfg, {"precision": "bf16"}), 300), (auto(tiny_cfg), 300)],
                 CPU, measure=fake({}))
    assert c.precision == "bf16" and "as the other runs ask" in c.precision_reason
    assert c.pin(auto(tiny_cfg)).precision == "bf16"


def test_compile_pays_only_when_its_saving_exceeds_its_cost(tiny_cfg, cache):
    times = {("compile", 4): {"eager": 1.0, "compiled": 0.5, "compile_cold": 40.0,
                              "compile_warm": 10.0},
             ("precision_bf16", 4): {"fp32": 1.0, "bf16": 2.0}}
    one = auto(tiny_cfg, compile="auto", max_steps=30)
    c = P.decide([(one, 300)], CPU, measure=fake(times))  # saves 15 s, costs 10 s
    assert c.precision == "fp32" and c.compiled is True
    assert "save 15.0 s over 1 run(s); compiling costs 10.0 s" in c.compile_reason
    short = auto(tiny_cfg, compile="auto", max_steps=10)  # saves 5 s, costs 10 s
    c = P.decide([(short, 300)], CPU, measure=fake(times))
    assert c.compiled is False and c.compile_reason.startswith("auto: eager")
    c = P.decide([(short, 300)] * 3, CPU, scope="sweep", measure=fake(times))  # 15 s vs 30 s
    assert c.compiled is False and "3 run(s); compiling costs 30.0 s" in c.compile_reason
    times[("compile", 4)]["compiled"] = 0.97  # faster by less than the 5% margin: eager
    (cache / P.PROBES_FILE).unlink()  # (the cached measurements would answer otherwise)
    c = P.decide([(auto(tiny_cfg, compile="auto", max_steps=10_000), 300)], CPU,
                 measure=fake(times))
    assert c.compiled is False


def test_a_choice_pins_auto_settings_and_says_why(tiny_cfg):
    c = P.Choice("bf16", True, "auto: bf16 for every run (...)", "auto: compiled (...)", "sweep",
                 {P.shape_label(tiny_cfg, 300): {"bf16": 0.25, "fp32": 0.5, "compiled": 0.2}})
    assert P.Choice.from_dict(c.to_dict() | {"node": "x"}) == c
    pinned = c.pin(auto(tiny_cfg, compile="auto"))
    assert (pinned.precision, pinned.compile) == ("bf16", True)
    assert c.reasons(pinned) == (c.precision_reason, c.compile_reason)
    asked = c.pin(with_overrides(tiny_cfg, {"precision": "fp32", "compile": False}))
    assert c.reasons(asked) == ("precision=fp32 (asked)", "compile=False (asked)")
    assert c.seconds_per_step(pinned, 300) == 0.2  # the plan's estimate reads the probe
    assert c.seconds_per_step(asked, 300) == 0.5


def test_a_sweep_pins_the_decision_into_every_trial_spec(tiny_cfg):
    from tune_ablations.spec.resolve import resolve

    c = P.Choice("bf16", False, "auto: bf16 for every run", "compile=False (asked)", "sweep")
    spec = RunSpec(preset="tiny", ablation="small_model", seed=1)
    pinned = pin_spec(spec, resolve(spec), c)
    assert resolve(pinned).precision == "bf16" and resolve(pinned).compile is False
    argv = pinned.settled().to_argv()
    assert "precision=bf16" in " ".join(argv)  # the trial's reproducing command names it
    asked = RunSpec(preset="tiny", overrides=(("precision", "fp32"),))
    assert pin_spec(asked, resolve(asked), c) == asked
    assert mixed([resolve(spec), resolve(asked)], c) == {
        "precision": {"bf16": ["small_model"], "fp32": ["baseline"]}}
    assert mixed([resolve(spec), resolve(RunSpec(preset="tiny"))], c) == {}


def test_train_with_a_sweeps_choice_does_not_probe(tiny_cfg, tiny_data, cache, monkeypatch):
    def no_probe(*a, **k):
        raise AssertionError("a trial of a sweep must not probe")

    monkeypatch.setattr(P, "measure_shape", no_probe)
    c = P.Choice("fp32", False, "auto: fp32 for every run (decided once)", "compile=False",
                 "sweep")
    r = train(auto(tiny_cfg, max_steps=6, eval_every=6, text_samples=0), data=tiny_data,
              choice=c)
    assert r["precision"] == "fp32" and r["precision_reason"] == c.precision_reason
    assert r["config"]["precision"] == "fp32" and r["compile_time_s"] == 0.0
    half = {("precision_bf16", 4): {"fp32": 1.0, "bf16": 0.5}}
    monkeypatch.setattr(P, "measure_shape", fake(half))
    r = train(auto(tiny_cfg, max_steps=6, eval_every=6, text_samples=0), data=tiny_data)
    assert r["precision"] == "bfloat16" and "2.00x faster than fp32" in r["precision_reason"]


@pytest.mark.parametrize("limit, units", [
    (None, "amx_bf16"), ("ALL", "amx_bf16"), ("AVX512_CORE_AMX", "amx_bf16"),
    ("AVX512_CORE_BF16", "avx512_bf16"), ("AVX512_CORE", None), ("AVX2", None)])
def test_an_instruction_set_limit_is_what_the_cpu_has(monkeypatch, limit, units):
    """`ONEDNN_MAX_CPU_ISA` holds oneDNN below the CPU's own units (how a user pins a kernel
    path, and how the benchmarks emulate other CPUs): the bf16 units it leaves are the ones that
    count, and the limit keys every cached measurement (a probe or peak measured with AMX must
    not decide for a run held to AVX2: the trainer benchmark's emulated kinds read the native
    cache and trained in bf16 at 0.8x the fp32 speed)."""
    from tune_ablations.training import runtime

    monkeypatch.setattr(runtime, "cpu_flags", lambda: ["avx2", "avx512_bf16", "amx_bf16"])
    monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)
    if limit is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", limit)
    assert runtime.cpu_bf16_units() == units
    key = runtime.machine_id()
    assert (f"ONEDNN_MAX_CPU_ISA={limit}" in key) == (limit is not None)
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert runtime.machine_id() != key or limit == "AVX2"
