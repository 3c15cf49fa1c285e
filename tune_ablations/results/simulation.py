"""Simulated sweeps with a known truth, for checking the seeds procedure (`sequential.py`): how
often it declares a difference that is not there (familywise error), how often it finds one that
is (power), whether its printed 95% interval covers the truth, and how far the printed estimate
sits from the truth when a verdict is reached.

Design choices:
- A scenario is the noise this project measures, not only the noise the test assumes: per-arm
  seed SDs as benchmarks/RESULTS.md section 5 measured them (0.009 at the baseline's lr, 0.175
  at high_lr's; 0.265 in a default run), one arm at 5x the others, seed effects shared only by
  arms of the baseline's shape, a single-arm grid, and skewed or bimodal seed noise.
- Losses are drawn for every seed up to `max_seeds` at once (sweeps, 1 + arms, seeds); the
  procedure then reads only the seeds each arm would have run, exactly as in a real sweep.
- Everything is numpy over sweeps: 10,000 sweeps of a scenario take about a second.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .sequential import ALPHA, FIRST_LOOK, decide_batch

NOISES = ("normal", "exponential", "lognormal", "gamma", "unstable")


@dataclass(frozen=True, kw_only=True)
class Scenario:
    """A family of sweeps with known seed noise and known true differences."""
    name: str
    sds: tuple[float, ...]
    """Seed SD of each arm's final loss (nats)."""
    baseline_sd: float
    """Seed SD of the baseline's final loss."""
    effects: tuple[float, ...] = ()
    """True difference of each arm's mean loss from the baseline's (empty: every arm 0)."""
    blocks: tuple[int, ...] = ()
    """Per group (baseline first): groups with the same label share a seed effect (the same
    initialisation and data order); empty: no shared seed effect."""
    block_sd: float = 0.0
    """SD of a shared seed effect."""
    noise: str = "normal"
    """Shape of the seed noise, scaled to mean 0 and the group's SD: `normal`, `exponential`
    (skewness 2), `lognormal` (sigma 0.5, skewness 1.75), `gamma` (shape 4, skewness 1), or
    `unstable` (normal, but a seed jumps up by `jump` stable SDs with probability `p_jump`)."""
    noisy: tuple[int, ...] | None = None
    """Arms (0-based) whose noise has that shape (None: every arm); the others and the
    baseline are normal."""
    p_jump: float = 0.3
    jump: float = 3.0
    interval_holds: bool = True
    """Whether a 95% interval can cover at its level here (False: bimodal seeds, where 3-5
    seeds that all missed the rare mode look tight; RESULTS section 14 reports the number)."""
    note: str = ""
    """What the scenario stands for."""

    def __post_init__(self) -> None:
        if self.noise not in NOISES:
            raise ValueError(f"noise={self.noise!r} must be one of {', '.join(NOISES)}")
        if self.effects and len(self.effects) != len(self.sds):
            raise ValueError(f"effects has {len(self.effects)} values for {len(self.sds)} arms")
        if self.blocks and len(self.blocks) != 1 + len(self.sds):
            raise ValueError(f"blocks has {len(self.blocks)} labels for {1 + len(self.sds)} "
                             "groups (baseline first)")

    @property
    def arms(self) -> int:
        return len(self.sds)

    @property
    def truth(self) -> np.ndarray:
        return np.asarray(self.effects or (0.0,) * self.arms, float)

    def losses(self, sweeps: int, seeds: int, rng: np.random.Generator) -> np.ndarray:
        """(sweeps, 1 + arms, seeds): the baseline's and each arm's loss minus the baseline's
        mean, per seed."""
        sd = np.array([self.baseline_sd, *self.sds])
        shaped = set(range(self.arms) if self.noisy is None else self.noisy)
        e = np.stack([self._draw(rng, (sweeps, seeds)) if g - 1 in shaped else
                      rng.standard_normal((sweeps, seeds)) for g in range(len(sd))], axis=1)
        y = e * sd[None, :, None]
        for label in dict.fromkeys(self.blocks):
            shared = rng.standard_normal((sweeps, 1, seeds)) * self.block_sd
            y[:, [i for i, b in enumerate(self.blocks) if b == label], :] += shared
        return y + np.concatenate([[0.0], self.truth])[None, :, None]

    def _draw(self, rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
        """Standardised noise (mean 0, SD 1) of the scenario's shape."""
        if self.noise == "exponential":
            return rng.exponential(size=shape) - 1.0
        if self.noise == "lognormal":
            s = 0.5
            x = rng.lognormal(0.0, s, size=shape)
            return (x - math.exp(s * s / 2)) / math.sqrt((math.exp(s * s) - 1) * math.exp(s * s))
        if self.noise == "gamma":
            return (rng.gamma(4.0, size=shape) - 4.0) / 2.0
        if self.noise == "unstable":
            p, j = self.p_jump, self.jump
            x = rng.standard_normal(shape) + j * (rng.random(shape) < p)
            return (x - p * j) / math.sqrt(1 + j * j * p * (1 - p))
        return rng.standard_normal(shape)


MEASURED_SDS = (0.175, 0.015, 0.028, 0.016, 0.018)
"""Seed SDs of the cpu preset's arms at their learning rates (RESULTS section 5): high_lr 8e-3,
low_lr (1.2e-3 stands in for 8e-4), large_batch (2e-3), short_seq and small_model (2.8e-3 and
4.7e-3 stand in); the baseline's is 0.009."""

SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario(name="equal", sds=(1.0,) * 5, baseline_sd=1.0, note="every arm's noise equal"),
    Scenario(name="measured", sds=MEASURED_SDS, baseline_sd=0.009,
             note="per-arm seed SDs as measured (0.009 to 0.175)"),
    Scenario(name="measured_0.265", sds=(0.265, *MEASURED_SDS[1:]), baseline_sd=0.009,
             note="high_lr at the 0.265 a default run printed"),
    Scenario(name="one_at_5x", sds=(5.0, 1.0, 1.0, 1.0, 1.0), baseline_sd=1.0,
             note="one arm at 5x the others' SD"),
    Scenario(name="same_shape_seeds", sds=(1.0,) * 5, baseline_sd=1.0,
             blocks=(0, 0, 0, 1, 2, 3), block_sd=2.0,
             note="a seed effect (SD 2) shared only by the baseline, high_lr and low_lr; "
                  "large_batch, short_seq and small_model have their own"),
    Scenario(name="single_arm", sds=(1.0,), baseline_sd=1.0, note="a grid of one arm"),
    Scenario(name="partial_measured", sds=(0.265, *MEASURED_SDS[1:]), baseline_sd=0.009,
             effects=(0.0, 0.3, -0.3, 0.3, 0.3),
             note="the default grid's shape: four quiet arms truly differ, the noisy one not"),
    Scenario(name="partial_one_at_5x", sds=(5.0, 1.0, 1.0, 1.0, 1.0), baseline_sd=1.0,
             effects=(0.0, 8.0, -8.0, 8.0, 0.0),
             note="three arms truly differ; a quiet one and the noisy one do not"),
    Scenario(name="skewed", sds=(1.0,) * 5, baseline_sd=0.2, noise="exponential",
             note="every arm's seeds exponential (skewness 2), the baseline quiet"),
    Scenario(name="skewed_lognormal", sds=(1.0,) * 5, baseline_sd=0.2, noise="lognormal",
             note="every arm's seeds lognormal (skewness 1.75), the baseline quiet"),
    Scenario(name="measured_unstable", sds=MEASURED_SDS, baseline_sd=0.009, noise="unstable",
             noisy=(0,), interval_holds=False,
             note="high_lr bimodal: a seed jumps 3 stable SDs with probability 0.3 (as at lr "
                  "3.5e-3 in RESULTS section 5)"),
)}
"""The scenarios every procedure must pass (familywise error at or below alpha)."""

LIMITS: dict[str, Scenario] = {s.name: s for s in (
    Scenario(name="severe_unstable", sds=MEASURED_SDS, baseline_sd=0.009, noise="unstable",
             noisy=(0,), jump=6.0, interval_holds=False,
             note="high_lr's seeds jump 6 stable SDs with probability 0.3: with 5 seeds the "
                  "ones that missed the jump look consistently better; no test of 3-5 seeds "
                  "controls this"),
)}
"""Beyond what 3-5 seeds can settle: measured and reported, not required."""


@dataclass
class Simulated:
    """What the procedure did in many sweeps of one scenario."""
    scenario: Scenario
    sweeps: int
    fwer: float
    """Share of sweeps that declared at least one arm whose true difference is 0."""
    power: np.ndarray
    """Per arm: share of sweeps that decided it in its true direction (NaN for a null arm)."""
    coverage: np.ndarray
    """Per arm: share of sweeps whose printed 95% interval (repeated CI from every seed the arm
    ran) holds the true difference."""
    bias: np.ndarray
    """Per arm with a true difference: mean printed estimate / truth among sweeps with a
    verdict in the true direction (1: unbiased)."""
    bias_decision: np.ndarray
    """The same for the estimate at the deciding look."""
    trials: float
    """Mean trials per sweep (baseline and arms)."""
    looks: list[int] = field(default_factory=list)

    @property
    def mc_se(self) -> float:
        """Monte-Carlo standard error of an error rate of alpha over these sweeps."""
        return math.sqrt(ALPHA * (1 - ALPHA) / self.sweeps)


def simulate(scenario: Scenario, sweeps: int, *, max_seeds: int = 5,
             first_look: int = FIRST_LOOK, seed: int = 0, **procedure) -> Simulated:
    """Run the procedure (`decide_batch`, with any of its keyword arguments) on `sweeps`
    simulated sweeps of `scenario`, looks at first_look, first_look + 1, ..., max_seeds."""
    y = scenario.losses(sweeps, max_seeds, np.random.default_rng(seed))
    looks = list(range(first_look, max_seeds + 1))
    out = decide_batch(y, looks, max_seeds=max_seeds, **procedure)
    truth = scenario.truth
    null = truth == 0
    fwer = float(((out.verdict != 0) & null[None]).any(axis=1).mean())
    right = (out.verdict == np.sign(truth)[None]) & ~null[None]
    lo, hi = out.rci()
    est, at_decision = out.at_last("diff"), out.at_decision("diff")
    hits = np.maximum(right.sum(axis=0), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(right, est, 0.0).sum(axis=0) / hits / np.where(null, np.nan, truth)
        ratio_d = np.where(right, at_decision, 0.0).sum(axis=0) / hits / np.where(
            null, np.nan, truth)
    seeds = np.array(looks)
    trials = seeds[out.last].sum(axis=1) + seeds[out.last.max(axis=1)]
    return Simulated(scenario, sweeps, fwer,
                     np.where(null, np.nan, right.mean(axis=0)),
                     ((lo <= truth[None]) & (truth[None] <= hi)).mean(axis=0),
                     ratio, ratio_d, float(trials.mean()), looks)
