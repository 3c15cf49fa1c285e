"""`grid --tune-lr K`: every arm at its own best learning rate.

Phase one (the lr sweep): each arm trains at K learning rates evenly spaced in log scale around
its own configured lr, seed `LR_SWEEP_SEED`, at equal tokens; then a second seed
(`LR_REPLICATE_SEED`) at its configured lr and at the lowest and highest lrs that ran to the
end, which measures the seed noise across the range. Phase two (seeding): each arm's chosen lr
(`results.lr_curves.fit_lr_curve`) runs with seeds 0, 1, ... under the default grid's
sequential procedure (`ArmsSearcher`), so the answer compares arms at their own optimum.

Design choices:
- Early stopping works within an arm, never across arms (`ArmHalving`): asynchronous successive
  halving with one set of rungs per arm, at token milestones. A trial is stopped at a rung only
  when it is outside its arm's top max(3, n/eta) there, so a fit always has three full-budget
  points, and an arm's configured lr (its anchor, the fixed-lr comparison) always runs to the
  end. An arm whose losses are all worse than another arm's still finds its own optimum.
- Rungs rank a loss that reflects the end of training: each lr-sweep trial branches a cooldown
  probe at every rung (`rung_probe_tokens`; `rank_loss`), where a mid-schedule loss is read
  near the peak lr (under cosine, 86% of it a third of the way in) and favours other lrs than
  the final loss. benchmarks/RESULTS.md, section 13, measures how often each keeps the best.
- Within an arm the configured lr starts first and the ends of the range last, so the trials
  most likely to be stopped are the ones that meet full rungs. The second seeds are never
  stopped (only `LR_SWEEP_SEED` trials meet the rungs).
- The seeding phase's `--time-budget` counts from its own start: the lr sweep is the price of
  the question, the budget bounds how long the answer may take to sharpen.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ..results.lr_curves import centre_out, fit_lr_curve, lr_grid, replicate_lrs
from ..spec.names import LR_REPLICATE_SEED, LR_SWEEP_SEED, METRIC, RANK_METRIC, TIME_ATTR, Status
from .searchers import ArmsSearcher

KEEP = 3
"""Trials of an arm never stopped at a rung: a parabola needs three points."""


class ArmHalving:
    """Asynchronous successive halving with one set of rungs per arm (no Ray here)."""

    def __init__(self, milestone: int, max_t: int, eta: int = 3, keep: int = KEEP):
        self.rungs: list[int] = []
        r = milestone
        while r < max_t:
            self.rungs.append(r)
            r *= eta
        self.eta, self.keep = eta, keep
        self.seen: dict[str, dict[int, dict[str, float]]] = {}

    def stop(self, arm: str, trial: str, t: float, loss: float, anchor: bool) -> bool:
        """Record a result at `t` tokens; True when the trial should stop here."""
        rungs = [r for r in self.rungs if t >= r]
        if not rungs:
            return False
        at = self.seen.setdefault(arm, {}).setdefault(rungs[-1], {})
        if trial in at:
            return False
        at[trial] = loss if math.isfinite(loss) else math.inf
        if anchor:
            return False
        top = max(self.keep, math.ceil(len(at) / self.eta))
        return sorted(at.values()).index(at[trial]) >= top


def rung_probe_tokens(rungs: list[int], cfgs) -> str:
    """`probe_tokens` for the lr sweep: a cooldown probe at every rung where it fits every
    trial (a cooldown of at least one step, a budget short of the run's); "" when the schedule
    never decays (`constant`: its final loss is read at the peak lr too)."""
    if any(c.optim.schedule == "constant" for c in cfgs):
        return ""
    fits = [r for r in rungs if all(c.tokens_per_step <= r * c.optim.decay_fraction
                                    and r < c.total_tokens for c in cfgs)]
    return ",".join(str(r) for r in fits)


def per_arm_scheduler(milestone: int, max_t: int, eta: int, anchors: dict[str, float]):
    """A Ray trial scheduler that stops lr-sweep trials by `ArmHalving` on their rank loss (a
    rung's cooldown probe where there is one); second seeds, seeding trials and each arm's
    anchor lr always continue."""
    from ray.tune.schedulers import FIFOScheduler, TrialScheduler

    class PerArmASHA(FIFOScheduler):
        def __init__(self):
            super().__init__()
            self.halving = ArmHalving(milestone, max_t, eta)

        def on_trial_result(self, tune_controller, trial, result: dict) -> str:
            cfg = trial.config
            if cfg.get("seed") != LR_SWEEP_SEED or TIME_ATTR not in result:
                return TrialScheduler.CONTINUE
            arm = str(cfg["ablation"])
            anchor = math.isclose(float(cfg["lr"]), anchors[arm], rel_tol=1e-9)
            loss = float(result.get(RANK_METRIC, result.get(METRIC, math.inf)))
            stop = self.halving.stop(arm, trial.trial_id, float(result[TIME_ATTR]), loss, anchor)
            return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE

        def debug_string(self) -> str:
            return (f"PerArmASHA: rungs at {self.halving.rungs} tokens, ranked by {RANK_METRIC}, "
                    f"top {KEEP} kept per arm")

    return PerArmASHA()


class TuneLrSearcher(ArmsSearcher):
    """The lr sweep (and its second seeds), then `ArmsSearcher`'s seeds at each arm's chosen
    lr. `probes`: the lr sweep's `probe_tokens` (its rungs' cooldowns), "" for none."""

    def __init__(self, arms: list[str], *, centres: dict[str, float], k: int, span: float,
                 probes: str = "", **kw: Any):
        super().__init__(arms, **kw)
        self.centres, self.k, self.span, self.probes = dict(centres), k, span, probes
        self.phase, self.chosen, self.curve = "lr", {}, {}
        self.first_look, self.budget_seconds = self.queue, self.time_budget
        grids = {a: centre_out(lr_grid(centres[a], k, span)) for a in arms}
        self.queue = [(a, LR_SWEEP_SEED, grids[a][i]) for i in range(k) for a in arms]

    _STATE = (*ArmsSearcher._STATE, "centres", "k", "span", "probes", "phase", "chosen",
              "curve", "first_look", "budget_seconds")

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self.first_look = [tuple(q) for q in self.first_look]

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.phase in ("lr", "replicates"):
            if self.queue:
                arm, seed, lr = self.queue.pop(0)
                self.live[trial_id] = (arm, seed, lr)
                out = {"ablation": arm, "seed": seed, "lr": lr}
                return out | ({"probe_tokens": self.probes}
                              if self.probes and seed == LR_SWEEP_SEED else {})
            if self.live:
                return None
            if self.phase == "lr":
                self._replicate()
                return self.suggest(trial_id)
            self._choose()
        out = super().suggest(trial_id)
        if isinstance(out, dict):
            out["lr"] = self.chosen[out["ablation"]]
        return out

    def on_trial_complete(self, trial_id: str, result: dict | None = None,
                          error: bool = False) -> None:
        item = self.live.get(trial_id)
        if item is None or len(item) == 2:
            super().on_trial_complete(trial_id, result, error)
            return
        arm, seed, lr = self.live.pop(trial_id)
        result = result or {}
        self.curve[f"{arm}/{lr!r}/{seed}"] = {
            "arm": arm, "lr": lr, "seed": seed, "loss": result.get(METRIC),
            "tokens": result.get(TIME_ATTR),
            "status": Status.ERROR.value if error else str(result.get("status", "error"))}
        self.write_record()

    def _points(self, arm: str) -> list[dict]:
        return [r for r in self.curve.values() if r["arm"] == arm]

    def _replicate(self) -> None:
        """The second seed: each arm's configured lr and its lowest and highest lrs that ran
        to the end (the seed noise across the range)."""
        self.phase, self.queue = "replicates", []
        for arm in self.arms:
            done = [r["lr"] for r in self._points(arm) if r["status"] == Status.COMPLETED]
            self.queue += [(arm, LR_REPLICATE_SEED, lr)
                           for lr in replicate_lrs(self.centres[arm], done)]
        self.write_record()

    def _choose(self) -> None:
        """Each arm's lr for the seeding phase, from its full-budget lr-sweep points."""
        for arm in self.arms:
            pts = [(r["lr"], float(r["loss"])) for r in self._points(arm)
                   if r["status"] == Status.COMPLETED and r["loss"] is not None]
            swept = {r["lr"]: r["status"] for r in self._points(arm)
                     if r.get("seed", LR_SWEEP_SEED) == LR_SWEEP_SEED}
            fit = fit_lr_curve(arm, [p[0] for p in pts], [p[1] for p in pts], swept)
            self.chosen[arm] = fit.chosen if math.isfinite(fit.chosen) else self.centres[arm]
        self.phase, self.queue = "seeds", list(self.first_look)
        self.spent, self.session = 0.0, time.time()
        self.write_record()

    def record(self) -> dict[str, Any]:
        grids = {a: lr_grid(self.centres[a], self.k, self.span) for a in self.arms}
        ranked = (f"ranked by a cooldown probe's decayed loss at each rung ({self.probes} "
                  "tokens)" if self.probes else "ranked by the loss at each rung")
        return super().record() | {"tune_lr": {
            "k": self.k, "span": self.span, "seed": LR_SWEEP_SEED, "phase": self.phase,
            "replicate_seed": LR_REPLICATE_SEED, "probe_tokens": self.probes,
            "centres": self.centres, "grids": grids, "chosen": self.chosen,
            "points": list(self.curve.values()),
            "stopping": f"asynchronous halving per arm, {ranked}; the top {KEEP} of each arm at "
                        "every rung and its configured lr always run to the end"}}
