"""The `parametrization` key: muP's coordinate check (activation and update sizes flat across
widths under muP, growing under the standard parametrization) and CompleteP's across depth, muP
equal to the standard model at its base width and CompleteP to muP at its base depth, the
per-layer rates in the optimizer's groups, the resolver's base width and depth, exports, and
bad combinations refused before compute."""

import math

import pytest
import torch

from tune_ablations.spec.config import RunConfig, with_overrides
from tune_ablations.spec.resolve import resolve
from tune_ablations.spec.runspec import RunSpec
from tune_ablations.training.coord_check import coordinate_check, depth_check
from tune_ablations.training.model import TransformerLM, depth_mult, width_mult
from tune_ablations.training.optimizers import build_optimizer

WIDTHS = [32, 64, 128, 256]


@pytest.fixture(scope="module")
def checks():
    return {p: coordinate_check(WIDTHS, parametrization=p, base_width=32, head_dim=8)
            for p in ("standard", "mup")}


def test_coordinate_check_is_flat_under_mup(checks):
    r = checks["mup"]
    for layer in r[WIDTHS[0]]:
        for size in ("activation", "update"):
            got = [r[w][layer][size] for w in WIDTHS]
            assert max(got) / min(got) < 1.5, (layer, size, got)  # 8x the width
            assert min(got) > 0.1, (layer, size, got)  # and the steps moved it


def test_coordinate_check_grows_with_width_under_standard(checks):
    r = checks["standard"]
    for layer in ("block0", "block1", "logits"):
        got = [r[w][layer]["update"] for w in WIDTHS]
        assert got == sorted(got), (layer, got)
        assert got[-1] / got[0] > 3, (layer, got)


DEPTHS = [2, 4, 8, 16]


@pytest.fixture(scope="module")
def depth_checks():
    return {p: depth_check(DEPTHS, parametrization=p, base_depth=2)
            for p in ("standard", "completep")}


def test_depth_check_is_flat_under_completep(depth_checks):
    """The last block's output and its change after 4 Adam steps stay flat over 8x the depth
    (measured: 0.392-0.403), the embedding's too."""
    r = depth_checks["completep"]
    for layer in ("embedding", "final"):
        for size in ("activation", "update"):
            got = [r[n][layer][size] for n in DEPTHS]
            assert max(got) / min(got) < 1.2, (layer, size, got)
            assert min(got) > 0.1, (layer, size, got)


def test_depth_check_grows_with_depth_without_completep(depth_checks):
    """Without the 1/depth branch multiplier every block adds its own update (muP is the same
    model at one width): measured 0.40 at 2 blocks to 4.4 at 16."""
    got = [depth_checks["standard"][n]["final"]["update"] for n in DEPTHS]
    assert got == sorted(got) and got[-1] / got[0] > 4, got


def test_completep_at_its_base_depth_is_mup_and_deeper_scales_branches():
    x = torch.randint(0, 300, (2, 12))
    mup = _model(64, parametrization="mup", mup_base_width=32)
    cp = _model(64, parametrization="completep", mup_base_width=32, mup_base_depth=2)
    for (name, a), (_, b) in zip(mup.named_parameters(), cp.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    torch.testing.assert_close(cp(x), mup(x), rtol=0, atol=0)
    deep = _model(64, parametrization="completep", mup_base_width=32, mup_base_depth=2,
                  n_layers=8)
    assert depth_mult(deep.cfg) == 4 and width_mult(deep.cfg) == 2
    assert {b.branch_mult for b in deep.blocks} == {0.25}
    block, h = deep.blocks[0], torch.randn(2, 12, 64)  # each branch enters at 1/4
    cos, sin = deep.rope_cos[:12], deep.rope_sin[:12]
    with torch.no_grad():
        mid = h + 0.25 * block.attn(block.norm1(h), cos, sin)
        want = mid + 0.25 * block.ffn(block.norm2(mid))
        torch.testing.assert_close(block(h, cos, sin), want)
    cfg = with_overrides(RunConfig(), {"d_model": 64, "n_heads": 8, "d_ff": 256,
                                       "n_layers": 8, "parametrization": "completep",
                                       "mup_base_width": 32, "mup_base_depth": 2, "lr": 1e-3})
    rate = {id(p): g["lr"] for g in build_optimizer(deep, cfg).param_groups
            for p in g["params"]}
    for name, p in deep.named_parameters():  # alpha = 1: muP's rates, no depth factor
        want = 1e-3 / 2 if p.dim() == 2 and name.startswith("blocks.") else 1e-3
        assert rate[id(p)] == pytest.approx(want), name


def _model(d_model: int, **model) -> TransformerLM:
    cfg = with_overrides(RunConfig(), {"d_model": d_model, "n_heads": d_model // 8,
                                       "d_ff": 4 * d_model, "n_layers": 2, **model})
    torch.manual_seed(3)
    return TransformerLM(cfg.model, 300)


def test_mup_at_its_base_width_is_the_standard_model():
    x = torch.randint(0, 300, (2, 12))
    std, mup = _model(64), _model(64, parametrization="mup", mup_base_width=64)
    for (name, a), (_, b) in zip(std.named_parameters(), mup.named_parameters(), strict=True):
        assert torch.equal(a, b), name  # the standard init itself is untouched
    torch.testing.assert_close(mup(x), std(x), rtol=0, atol=0)


def test_mup_init_multipliers_and_rates_by_width():
    m = _model(128, parametrization="mup", mup_base_width=32)
    assert width_mult(m.cfg) == 4 and m.output_mult == 0.25 and m.input_mult == math.sqrt(32)
    hidden = m.blocks[0].ffn.up.weight
    assert abs(hidden.std().item() - 0.02 / 2) < 0.001  # std 0.02 / sqrt(4)
    assert abs(m.embed.weight.std().item() - 0.02) < 0.001
    cfg = with_overrides(RunConfig(), {"d_model": 128, "n_heads": 16, "d_ff": 512,
                                       "n_layers": 2, "parametrization": "mup",
                                       "mup_base_width": 32, "lr": 1e-3})
    opt = build_optimizer(m, cfg)
    rate = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    for name, p in m.named_parameters():
        want = 1e-3 / 4 if p.dim() == 2 and name.startswith("blocks.") else 1e-3
        assert rate[id(p)] == pytest.approx(want), name
        assert decay[id(p)] == (0.1 if p.dim() == 2 else 0.0), name


def test_resolver_sets_the_base_width_to_the_baselines():
    spec = RunSpec(preset="tiny", ablation="small_model",
                   overrides=(("parametrization", "mup"),))
    c = resolve(spec)
    assert (c.model.d_model, c.model.mup_base_width) == (16, 32)
    given = RunSpec(preset="tiny", overrides=(("parametrization", "mup"),
                                              ("mup_base_width", 8)))
    assert resolve(given).model.mup_base_width == 8
    assert resolve(RunSpec(preset="tiny")).model.parametrization == "standard"
    cp = resolve(RunSpec(preset="tiny", ablation="small_model",
                         overrides=(("parametrization", "completep"),)))
    base = resolve(RunSpec(preset="tiny")).model
    assert (cp.model.mup_base_width, cp.model.mup_base_depth) == (base.d_model, base.n_layers)
    assert resolve(RunSpec(preset="tiny", overrides=(
        ("parametrization", "mup"),))).model.mup_base_depth == 0  # muP has no depth rule


@pytest.mark.parametrize("overrides, spec_fields, message", [
    ({"parametrization": "mu"}, {},
     "parametrization='mu' must be one of 'standard', 'mup', 'completep'"),
    ({"parametrization": "mup", "optimizer": "sgd"}, {},
     "parametrization='mup' needs an Adam-like optimizer (adamw, lion, schedule_free_adamw)"),
    ({"parametrization": "mup", "optimizer": "muon"}, {}, "got optimizer='muon'"),
    ({"mup_base_width": -1}, {}, "mup_base_width=-1 must be >= 0"),
    ({"mup_base_depth": -2}, {}, "mup_base_depth=-2 must be >= 0"),
    ({"parametrization": "completep", "optimizer": "sgd"}, {},
     "parametrization='completep' needs an Adam-like optimizer"),
    ({"parametrization": "mup"}, {"lr_width": 32},
     "lr_width=32 with parametrization='mup': it already scales"),
])
def test_bad_parametrization_refused(overrides, spec_fields, message):
    spec = RunSpec(preset="tiny", overrides=tuple(overrides.items()), **spec_fields)
    with pytest.raises(ValueError) as e:
        resolve(spec)
    assert message in str(e.value)


@pytest.mark.parametrize("parametrization", ["mup", "completep"])
@pytest.mark.parametrize("ffn", ["swiglu", "silu"])
def test_mup_exports_with_its_multipliers(ffn, parametrization, tmp_path):
    """The Llama format folds muP's multipliers into its untied embedding and head (and
    CompleteP's branch multiplier into each branch's last projection); the remote-code model
    carries them in config.json: the same logits either way, and back."""
    import importlib.util

    from tune_ablations.results import hf_formats

    ours = _model(32, parametrization=parametrization, mup_base_width=16, ffn=ffn,
                  mup_base_depth=1).eval()  # 2 layers: each branch x 1/2 under completep
    state = {k: v.detach() for k, v in ours.state_dict().items()}
    config = hf_formats.hf_config(ours.cfg, 300, 12, 0, {})
    x = torch.randint(0, 300, (2, 12))
    if ffn == "swiglu":
        from transformers import LlamaConfig, LlamaForCausalLM

        theirs = LlamaForCausalLM(LlamaConfig(**{k: v for k, v in config.items()
                                                if k != "tune_ablations"}))
    else:
        path = tmp_path / "modeling_tune_ablations.py"
        path.write_text(hf_formats.remote_code())
        spec = importlib.util.spec_from_file_location("remote_code", path)
        remote = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(remote)
        theirs = remote.TuneAblationsForCausalLM(remote.TuneAblationsConfig(**config))
    theirs.load_state_dict(hf_formats.to_hf(state, ours.cfg), strict=False)
    with torch.no_grad():
        torch.testing.assert_close(theirs.float().eval()(x).logits, ours(x), rtol=1e-5,
                                   atol=1e-5)
    back = hf_formats.to_ours(hf_formats.to_hf(state, ours.cfg), config["model_type"], ours.cfg)
    for k, v in state.items():
        if k in back:
            torch.testing.assert_close(back[k], v)
