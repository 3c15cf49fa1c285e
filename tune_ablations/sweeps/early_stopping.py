"""Early stopping of a search: ASHA on token milestones, optionally ranking each rung by a
cooldown probe's decayed loss. (The per-arm halving of `grid --tune-lr` is `lr_tuning`.)

Design choices:
- ASHA's time attribute is `tokens_seen`. Every trial evaluates at the same token milestones
  (multiples of the reference run's evaluation interval, in tokens), the grace period is the
  first milestone and the reduction factor an integer, so every rung falls on a report of
  every trial, whatever its batch size and sequence length.
- Schedule-aware ASHA (wsd runs): a cooldown probe at every rung gives the loss a run of that
  budget reaches with its learning rate decayed; the rung ranks by it (`rank_loss`), never by
  a loss taken mid-schedule at the peak learning rate.
"""

from __future__ import annotations

from ..spec.names import METRIC, MODE, RANK_METRIC, TIME_ATTR


def rung_probes(milestone: int, eta: int, budget: int, min_rung: float) -> str:
    """probe_tokens at every ASHA rung below every trial's budget whose cooldown is at least
    one step of every trial (`min_rung`: the largest tokens per step / decay_fraction)."""
    rungs, r = [], milestone
    while r < budget:
        if r >= min_rung:
            rungs.append(r)
        r *= eta
    return ",".join(str(r) for r in rungs)


def asha(*, milestone: int, max_t: int, eta: int, probes: bool):
    """A factory of Ray's ASHA scheduler (called once Ray is imported)."""
    def make():
        from ray.tune.schedulers import ASHAScheduler

        return ASHAScheduler(time_attr=TIME_ATTR, max_t=max_t, grace_period=milestone,
                             reduction_factor=eta, metric=RANK_METRIC if probes else METRIC,
                             mode=MODE)

    return make
