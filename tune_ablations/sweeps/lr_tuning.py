"""`grid --tune-lr K`: every arm at its own best learning rate.

Phase one (the lr sweep): each arm trains at K learning rates evenly spaced in log scale around
its own configured lr, seed `LR_SWEEP_SEED`, at equal tokens. Phase two (seeding): each arm's
chosen lr (`results.lr_curves.fit_lr_curve`) runs with seeds 0, 1, ... under the default grid's
sequential procedure (`ArmsSearcher`), so the answer compares arms at their own optimum.

Design choices:
- Early stopping works within an arm, never across arms (`ArmHalving`): asynchronous successive
  halving with one set of rungs per arm, at token milestones. A trial is stopped at a rung only
  when it is outside its arm's top max(3, n/eta) there, so a fit always has three full-budget
  points, and an arm's configured lr (its anchor, the fixed-lr comparison) always runs to the
  end. An arm whose losses are all worse than another arm's still finds its own optimum.
- Within an arm the configured lr starts first and the ends of the range last, so the trials
  most likely to be stopped are the ones that meet full rungs.
- The seeding phase's `--time-budget` counts from its own start: the lr sweep is the price of
  the question, the budget bounds how long the answer may take to sharpen.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ..results.lr_curves import centre_out, fit_lr_curve, lr_grid
from ..spec.names import LR_SWEEP_SEED, METRIC, TIME_ATTR, Status
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


def per_arm_scheduler(milestone: int, max_t: int, eta: int, anchors: dict[str, float]):
    """A Ray trial scheduler that stops lr-sweep trials by `ArmHalving` (seeding trials and
    each arm's anchor lr always continue)."""
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
            loss = float(result.get(METRIC, math.inf))
            stop = self.halving.stop(arm, trial.trial_id, float(result[TIME_ATTR]), loss, anchor)
            return TrialScheduler.STOP if stop else TrialScheduler.CONTINUE

        def debug_string(self) -> str:
            return f"PerArmASHA: rungs at {self.halving.rungs} tokens, top {KEEP} kept per arm"

    return PerArmASHA()


class TuneLrSearcher(ArmsSearcher):
    """The lr sweep, then `ArmsSearcher`'s seeds at each arm's chosen lr."""

    def __init__(self, arms: list[str], *, centres: dict[str, float], k: int, span: float,
                 **kw: Any):
        super().__init__(arms, **kw)
        self.centres, self.k, self.span = dict(centres), k, span
        self.phase, self.chosen, self.curve = "lr", {}, {}
        self.first_look, self.budget_seconds = self.queue, self.time_budget
        grids = {a: centre_out(lr_grid(centres[a], k, span)) for a in arms}
        self.queue = [(a, LR_SWEEP_SEED, grids[a][i]) for i in range(k) for a in arms]

    _STATE = (*ArmsSearcher._STATE, "centres", "k", "span", "phase", "chosen", "curve",
              "first_look", "budget_seconds")

    def restore(self, checkpoint_path: str) -> None:
        super().restore(checkpoint_path)
        self.first_look = [tuple(q) for q in self.first_look]

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.phase == "lr":
            if self.queue:
                arm, seed, lr = self.queue.pop(0)
                self.live[trial_id] = (arm, seed, lr)
                return {"ablation": arm, "seed": seed, "lr": lr}
            if self.live:
                return None
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
        arm, _, lr = self.live.pop(trial_id)
        result = result or {}
        self.curve[f"{arm}/{lr!r}"] = {
            "arm": arm, "lr": lr, "loss": result.get(METRIC), "tokens": result.get(TIME_ATTR),
            "status": Status.ERROR.value if error else str(result.get("status", "error"))}
        self.write_record()

    def _choose(self) -> None:
        """Each arm's lr for the seeding phase, from its full-budget lr-sweep points."""
        for arm in self.arms:
            pts = [(r["lr"], float(r["loss"])) for r in self.curve.values() if r["arm"] == arm
                   and r["status"] == Status.COMPLETED and r["loss"] is not None]
            fit = fit_lr_curve(arm, [p[0] for p in pts], [p[1] for p in pts])
            self.chosen[arm] = fit.chosen if math.isfinite(fit.chosen) else self.centres[arm]
        self.phase, self.queue = "seeds", list(self.first_look)
        self.spent, self.session = 0.0, time.time()
        self.write_record()

    def record(self) -> dict[str, Any]:
        grids = {a: lr_grid(self.centres[a], self.k, self.span) for a in self.arms}
        return super().record() | {"tune_lr": {
            "k": self.k, "span": self.span, "seed": LR_SWEEP_SEED, "phase": self.phase,
            "centres": self.centres, "grids": grids, "chosen": self.chosen,
            "points": list(self.curve.values()),
            "stopping": f"asynchronous halving per arm; the top {KEEP} of each arm at every "
                        "rung and its configured lr always run to the end"}}
