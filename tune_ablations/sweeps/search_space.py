"""Declarative search spaces: `search_spaces/*.toml`, validated before anything runs.

A file names one question:

    description = "..."
    ablation = "baseline"          # the reference arm the search perturbs
    preset = "cpu"                 # optional; the command line may override it
    num_samples = 16               # optional default for --num-samples
    [fixed]                        # flat-key overrides of the base
    max_steps = 200
    [params.lr]                    # one table per searched key
    distribution = "loguniform"    # loguniform | uniform | int | choice
    low = 1e-4
    high = 3e-3
    [derive]                       # optional: keep architectures valid when d_model is searched
    head_dim = 32                  # n_heads = d_model / head_dim
    ffn_mult = 4                   # d_ff = ffn_mult * d_model

Validation: unknown keys (with the closest valid name), wrong types, empty or inverted bounds,
non-positive log bounds, a distribution typo, values the config would reject at the bounds or
for any choice, and a width that the derived head_dim does not divide.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..spec.config import PRESETS, field_names, field_type, to_flat_dict, unknown_key_error
from ..spec.questions import reference
from ..spec.resolve import resolve
from ..spec.runspec import FLAT_SPEC_KEYS, RunSpec, apply_flat
from ..spec.toml import toml_module

SHIPPED = Path(__file__).resolve().parent.parent / "search_spaces"

DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
_TOP_KEYS = ("description", "ablation", "preset", "num_samples", "fixed", "params", "derive")
_PARAM_KEYS = ("distribution", "low", "high", "values", "log")
_DERIVE_KEYS = ("head_dim", "ffn_mult", "lr_width")


@dataclass(frozen=True)
class Param:
    key: str
    """Flat config key searched."""
    distribution: str
    """One of DISTRIBUTIONS."""
    low: float | None = None
    """Lower bound (inclusive) for ranges."""
    high: float | None = None
    """Upper bound (inclusive) for ranges."""
    values: tuple = ()
    """Choices for `choice`."""
    log: bool = False
    """Log-scale sampling for `int`."""

    def corners(self) -> list[Any]:
        """The values validation tries: both bounds, or every choice."""
        return list(self.values) if self.distribution == "choice" else [self.low, self.high]


@dataclass(frozen=True)
class SearchSpace:
    path: Path
    """File it came from (stored verbatim with the results)."""
    description: str
    """The question the file asks."""
    ablation: str
    """Base ablation perturbed by the search."""
    preset: str | None
    """Scale preset (None: the command line decides)."""
    num_samples: int | None
    """Default number of samples."""
    fixed: dict[str, Any] = field(default_factory=dict)
    """Flat overrides of the base."""
    params: dict[str, Param] = field(default_factory=dict)
    """Searched keys."""
    derive: dict[str, Any] = field(default_factory=dict)
    """`head_dim` / `ffn_mult`: derived architecture fields."""

    def base_spec(self, spec: RunSpec, given: set[str] = frozenset()) -> RunSpec:
        """The spec every trial shares: the space's ablation, [fixed] and [derive] on top of
        `spec`'s defaults, with the spec fields the user gave (`given`) winning."""
        from dataclasses import replace

        base = replace(RunSpec(), preset=spec.preset, ablation=self.ablation)
        base, _ = apply_flat(base, {**self.fixed, **self.derive})
        mine = {k: getattr(spec, k) for k in given if k not in ("overrides", "params")}
        base = replace(base, **mine)
        if "overrides" in given or spec.overrides:
            base, _ = apply_flat(base, dict(spec.overrides))
        return base

    def corners(self, base: RunSpec) -> list[RunSpec]:
        """Every corner of the space (bounds x choices) as a trial's spec."""
        return [base.with_params(**dict(zip(self.params, c)))
                for c in itertools.product(*(p.corners() for p in self.params.values()))]

    def baseline_point(self, base: RunSpec, cfg=None) -> dict[str, Any] | None:
        """The base config's value of every searched key, if inside the space (tried first);
        `cfg`: the base spec's resolved config, when the caller has it."""
        cfg = to_flat_dict(cfg if cfg is not None else resolve(base))
        point = {}
        for k, p in self.params.items():
            v = cfg[k]
            inside = v in p.values if p.distribution == "choice" else p.low <= v <= p.high
            if not inside:
                return None
            point[k] = v
        return point

    def distributions(self) -> dict[str, Any]:
        """Optuna distributions of the searched keys."""
        import optuna.distributions as d

        out = {}
        for k, p in self.params.items():
            if p.distribution == "choice":
                out[k] = d.CategoricalDistribution(list(p.values))
            elif p.distribution == "int":
                out[k] = d.IntDistribution(int(p.low), int(p.high), log=p.log)
            else:
                out[k] = d.FloatDistribution(float(p.low), float(p.high), log=p.log)
        return out


def shipped_spaces() -> list[str]:
    """Names of the search spaces shipped inside the package."""
    return sorted(p.stem for p in SHIPPED.glob("*.toml"))


def find_space(name_or_path: str | Path) -> Path:
    """A shipped space by name (`lr`), or a TOML file's path."""
    path = Path(name_or_path).expanduser()
    if path.exists() or path.suffix == ".toml" or "/" in str(name_or_path):
        return path
    if (SHIPPED / f"{name_or_path}.toml").exists():
        return SHIPPED / f"{name_or_path}.toml"
    raise unknown_key_error(str(name_or_path), shipped_spaces(), what="search space (name or "
                            ".toml file)")


def _err(path: Path, msg: str) -> ValueError:
    return ValueError(f"{path.name}: {msg}")


def _number(path: Path, where: str, name: str, v: Any, integer: bool = False) -> float:
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if not ok or isinstance(v, bool):
        kind = "an integer" if integer else "a number"
        raise _err(path, f"{where}.{name}={v!r} must be {kind}")
    return v


def _parse_param(path: Path, key: str, table: Any) -> Param:
    where = f"[params.{key}]"
    if key not in field_names():
        raise _err(path, str(unknown_key_error(key, field_names(), what=f"key {where}")))
    if not isinstance(table, dict):
        raise _err(path, f"{where} must be a table with a distribution")
    for k in table:
        if k not in _PARAM_KEYS:
            raise _err(path, str(unknown_key_error(k, list(_PARAM_KEYS), what=f"key in {where}")))
    dist = table.get("distribution")
    if dist not in DISTRIBUTIONS:
        raise _err(path, str(unknown_key_error(str(dist), list(DISTRIBUTIONS),
                                               what=f"distribution in {where}")))
    if dist == "choice":
        values = table.get("values")
        if not isinstance(values, list) or not values:
            raise _err(path, f"{where}.values={values!r} must be a non-empty list")
        if len(set(map(repr, values))) != len(values):
            raise _err(path, f"{where}.values={values!r} must not repeat a value")
        return Param(key, dist, values=tuple(values))
    integer = dist == "int"
    if "low" not in table or "high" not in table:
        raise _err(path, f"{where} needs low and high for distribution={dist!r}")
    low = _number(path, where, "low", table["low"], integer)
    high = _number(path, where, "high", table["high"], integer)
    if not low < high:
        raise _err(path, f"{where}: low={low} must be < high={high}")
    log = dist == "loguniform" or bool(table.get("log", False))
    if log and low <= 0:
        raise _err(path, f"{where}: low={low} must be > 0 on a log scale")
    if field_type(key) == "int" and not integer:
        raise _err(path, f"{where}: {key} is an integer field; use distribution='int' or "
                   "'choice'")
    return Param(key, dist, low=low, high=high, log=log)


def load_space(path: str | Path) -> SearchSpace:
    """Parse and validate a search-space file; raises ValueError naming file, key, value, rule."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ValueError(f"--space {str(path)!r}: no such file") from None
    return parse_space(text, Path(path))


def parse_space(text: str, path: Path) -> SearchSpace:
    """A search space from its TOML text (`path` names it in messages and records)."""
    tomllib = toml_module()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _err(path, f"TOML syntax error: {exc}") from None
    for k in doc:
        if k not in _TOP_KEYS:
            raise _err(path, str(unknown_key_error(k, list(_TOP_KEYS), what="top-level key")))
    ablation = doc.get("ablation", "baseline")
    names = ["baseline", *reference().names]
    if ablation not in names:
        raise _err(path, str(unknown_key_error(str(ablation), names, what="ablation")))
    preset = doc.get("preset")
    if preset is not None and preset not in PRESETS:
        raise _err(path, f"preset={preset!r} must be one of {', '.join(PRESETS)}")
    num_samples = doc.get("num_samples")
    if num_samples is not None:
        _number(path, "", "num_samples", num_samples, integer=True)
        if num_samples < 1:
            raise _err(path, f"num_samples={num_samples} must be >= 1")
    fixed = doc.get("fixed", {})
    valid_fixed = field_names() + [k for k in FLAT_SPEC_KEYS if k not in ("ablation", "preset")]
    for k in fixed:
        if k not in valid_fixed:
            raise _err(path, str(unknown_key_error(k, valid_fixed, what="key in [fixed]")))
    raw_params = doc.get("params", {})
    if not raw_params:
        raise _err(path, "[params] is empty: a search needs at least one [params.<key>] table")
    params = {k: _parse_param(path, k, t) for k, t in raw_params.items()}
    for k in params:
        if k in fixed:
            raise _err(path, f"{k} is both [fixed] and [params]; keep one")
    derive = doc.get("derive", {})
    for k, v in derive.items():
        if k not in _DERIVE_KEYS:
            raise _err(path, str(unknown_key_error(k, list(_DERIVE_KEYS), what="key in [derive]")))
        _number(path, "[derive]", k, v, integer=k in ("head_dim", "lr_width"))
        if v <= 0:
            raise _err(path, f"[derive].{k}={v} must be > 0")
    space = SearchSpace(path=path, description=doc.get("description", ""), ablation=ablation,
                        preset=preset, num_samples=num_samples, fixed=dict(fixed),
                        params=params, derive=dict(derive))
    check_space(space, preset or "cpu")
    return space


def check_space(space: SearchSpace, preset: str) -> None:
    """Build the config at every corner of the space (bounds x choices) so that no sample can be
    a config the trainer would reject."""
    head_dim = space.derive.get("head_dim")
    if head_dim and "d_model" in space.params:
        p = space.params["d_model"]
        widths = list(p.values) if p.distribution == "choice" else [p.low, p.high]
        for w in widths:
            if w % head_dim:
                raise _err(space.path, f"[params.d_model] value {w} is not divisible by "
                           f"[derive].head_dim={head_dim}: no head count gives that head_dim")
        if p.distribution != "choice":
            raise _err(space.path, "[params.d_model] must be a 'choice' when [derive].head_dim "
                       "is set, so every width divides into heads")
    try:
        base = space.base_spec(RunSpec(preset=preset))
    except ValueError as exc:
        raise _err(space.path, str(exc)) from None
    for corner in space.corners(base):
        try:
            resolve(corner)
        except ValueError as exc:
            values = ", ".join(f"{k}={v!r}" for k, v in corner.params)
            raise _err(space.path, f"the sample ({values}) is rejected by the config: "
                       f"{exc}") from None
