from pathlib import Path

import pytest

from tune_ablations.spec.resolve import resolve
from tune_ablations.spec.runspec import RunSpec
from tune_ablations.sweeps.search_space import load_space

SPACES = sorted((Path(__file__).parent.parent / "tune_ablations" / "search_spaces").glob("*.toml"))


def test_the_shipped_spaces_exist():
    names = {p.name for p in SPACES}
    assert {"lr.toml", "lr_batch.toml", "lr_batch_seq_dim.toml"} <= names


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.name)
@pytest.mark.parametrize("preset", ["cpu", "tiny"])
def test_every_shipped_space_loads_and_builds(path, preset):
    import optuna

    space = load_space(path)
    assert space.description.strip() and space.params
    # tiny's 30 steps of 128 tokens are less than one step of the widest sample (16 x 256):
    # that budget is refused (a run cannot train it), so tiny gets a reachable one here.
    steps = {"max_steps": 64} if preset == "tiny" else {}
    base = space.base_spec(RunSpec(preset=preset, **steps), set(steps))
    dists = space.distributions()
    assert set(dists) == set(space.params)
    if preset == "cpu":
        assert space.baseline_point(base) is not None  # the base config lies inside
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):  # samples build valid configs
        trial = study.ask(dists)
        cfg = resolve(base.with_params(**trial.params))
        study.tell(trial, 1.0)
        assert cfg.model.d_model % cfg.model.n_heads == 0


def _space(tmp_path, body: str) -> Path:
    p = tmp_path / "s.toml"
    p.write_text(body)
    return p


BASE = 'ablation = "baseline"\n'


@pytest.mark.parametrize("body, message", [
    (BASE + "[params.lrr]\ndistribution = 'loguniform'\nlow = 1e-4\nhigh = 1e-3\n",
     "unknown key [params.lrr] 'lrr'; did you mean 'lr'"),
    (BASE + "[params.lr]\ndistribution = 'logunifrom'\nlow = 1e-4\nhigh = 1e-3\n",
     "unknown distribution in [params.lr] 'logunifrom'; did you mean 'loguniform'"),
    (BASE + "[params.lr]\ndistribution = 'loguniform'\nlow = 1e-3\nhigh = 1e-4\n",
     "[params.lr]: low=0.001 must be < high=0.0001"),
    (BASE + "[params.lr]\ndistribution = 'loguniform'\nlow = 1e-3\nhigh = 1e-3\n",
     "low=0.001 must be < high=0.001"),
    (BASE + "[params.lr]\ndistribution = 'loguniform'\nlow = 0.0\nhigh = 1e-3\n",
     "low=0.0 must be > 0 on a log scale"),
    (BASE + "[params.lr]\ndistribution = 'loguniform'\nlow = 'small'\nhigh = 1e-3\n",
     "[params.lr].low='small' must be a number"),
    (BASE + "[params.lr]\ndistribution = 'uniform'\nlow = -1e-3\nhigh = 1e-3\n",
     "lr=-0.001 must be > 0"),
    (BASE + "[params.batch_size]\ndistribution = 'int'\nlow = 0\nhigh = 8\n",
     "batch_size=0 must be > 0"),
    (BASE + "[params.batch_size]\ndistribution = 'uniform'\nlow = 2.0\nhigh = 8.0\n",
     "batch_size is an integer field"),
    (BASE + "[params.batch_size]\ndistribution = 'choice'\nvalues = []\n",
     "values=[] must be a non-empty list"),
    (BASE + "[params.d_model]\ndistribution = 'choice'\nvalues = [128, 200]\n"
     "[derive]\nhead_dim = 32\n", "value 200 is not divisible by [derive].head_dim=32"),
    (BASE + "[params.d_model]\ndistribution = 'choice'\nvalues = [128, 250]\n",
     "the sample (d_model=128) is rejected by the config: d_model=128 must be divisible by "
     "n_heads=6"),
    (BASE + "[fixed]\nwarmup = 3\n[params.lr]\ndistribution = 'uniform'\nlow = 1e-4\n"
     "high = 1e-3\n", "unknown key in [fixed] 'warmup'; did you mean 'warmup_steps'"),
    (BASE + "[params]\n", "[params] is empty"),
    (BASE + "[params.lr]\ndistribution = 'uniform'\nlow = 1e-4\nhigh = \n",
     "TOML syntax error"),
    ('ablation = "huge_model"\n[params.lr]\ndistribution = "uniform"\nlow = 1e-4\n'
     'high = 1e-3\n', "unknown ablation 'huge_model'"),
    (BASE + "sampler = 'tpe'\n", "unknown top-level key 'sampler'"),
])
def test_bad_spaces_rejected_with_the_rule(tmp_path, body, message):
    with pytest.raises(ValueError) as err:
        load_space(_space(tmp_path, body))
    assert message in str(err.value)
    assert "s.toml" in str(err.value)


def test_toml_error_names_the_line(tmp_path):
    with pytest.raises(ValueError, match=r"line 4"):
        load_space(_space(tmp_path, BASE + "[params.lr]\ndistribution = 'uniform'\nlow = \n"))


def test_derived_heads_keep_head_dim():
    space = load_space(SPACES[[p.name for p in SPACES].index("lr_batch_seq_dim.toml")])
    for width in (128, 192, 256):
        cfg = resolve(space.base_spec(RunSpec(preset="cpu")).with_params(d_model=width))
        assert cfg.model.head_dim == 32 and cfg.model.d_ff == 4 * width
