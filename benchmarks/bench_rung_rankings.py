"""Rungs ranked on decayed losses: how often does early stopping keep the learning rate that
ends best, when the rung ranks trials by their mid-schedule loss (read near the peak lr of a
cosine run) and when it ranks them by a cooldown probe's decayed loss (`rank_loss`)?

    python benchmarks/bench_rung_rankings.py [--arms baseline large_batch] [--k 9] [--seeds 4]
        [--jobs 2] [--out runs.jsonl] [--analyse-only]

Every (arm, lr, seed) of a K-point log grid from lr/span to lr*span around each arm's configured
lr trains to the end at the `cpu` preset (cosine, 120 steps for the baseline) with one cooldown
probe at the rung (a third of the budget, where `grid --tune-lr` halves). The probe leaves the
run unchanged, so each run gives both rankings at the rung and its final loss: the rules are
compared on the same runs. Then each sweep (one seed's K lrs; and 200 sweeps whose every lr's
run is drawn from an independent seed; each also as the 5-point grid of every other lr) is
replayed through
- the per-arm halving of `grid --tune-lr` (`ArmHalving`: centre first, ends last, the top
  max(3, n/3) and the configured lr go on), and
- Ray's asynchronous successive halving (the `_Bracket` that `ASHAScheduler` uses, top 1/3 go
  on) over 20 random arrival orders per sweep,
each ranking once by the mid-schedule loss and once by the decayed one. Prints, per rule, the
share of sweeps where the lr with the best final loss ran to the end, and the mean regret (the
best final loss among the lrs that ran to the end minus the sweep's best).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

RUNG_FRACTION = 3  # the rung of `grid --tune-lr` at the cpu preset: a third of the budget
ORDERS = 20
MIXED = 200  # sweeps whose every lr's run is drawn from an independent seed


def _spec(arm: str, lr: float, seed: int, probe: int = 0):
    from tune_ablations.spec.runspec import RunSpec

    spec = RunSpec(ablation=arm, preset="cpu", seed=seed).with_params(lr=lr, text_samples=0)
    return spec.with_params(probe_tokens=str(probe)) if probe else spec


def train_one(arm: str, lr: float, seed: int) -> dict:
    import torch

    from tune_ablations.spec.resolve import resolve
    from tune_ablations.training.data import prepare_data
    from tune_ablations.training.trainer import train

    torch.set_num_threads(1)
    base = resolve(_spec(arm, lr, seed))
    rung = base.eval.eval_every_tokens or base.total_tokens // RUNG_FRACTION
    cfg = resolve(_spec(arm, lr, seed, rung))
    r = train(cfg, data=prepare_data(cfg.data, log=lambda s: None))
    at = next((h for h in r["history"] if h["tokens_seen"] >= rung), {})
    probe = next((p for p in r["probes"] if p["budget_tokens"] == rung), {})
    diverged = r["status"] == "diverged"
    return {"arm": arm, "lr": lr, "seed": seed, "status": r["status"], "rung_tokens": rung,
            "mid": at.get("val_loss", math.inf), "decayed": probe.get("val_loss", math.inf),
            "final": math.inf if diverged else r["final"]["val_loss"],
            "tokens": r["tokens_seen"], "probe_tokens": r["probe_tokens_trained"],
            "seconds": r["train_time_s"] + r["probe_time_s"]}


def grids(arms: list[str], k: int, span: float) -> dict[str, list[float]]:
    from tune_ablations.results.lr_curves import lr_grid

    return {a: lr_grid(_centre(a), k, span) for a in arms}


def _centre(arm: str) -> float:
    from tune_ablations.spec.resolve import resolve
    from tune_ablations.spec.runspec import RunSpec

    return resolve(RunSpec(ablation=arm, preset="cpu")).optim.lr


def run_all(args) -> None:
    from tune_ablations.spec.resolve import resolve
    from tune_ablations.training.data import prepare_data

    prepare_data(resolve(_spec("baseline", 1e-3, 0, 40960)).data)  # once, before the workers
    out = Path(args.out)
    done = {(r["arm"], round(r["lr"], 12), r["seed"]) for r in _read(out)}
    jobs = [(a, lr, s) for s in range(args.seeds) for a, lrs in grids(args.arms, args.k,
                                                                        args.span).items()
            for lr in lrs if (a, round(lr, 12), s) not in done]
    print(f"event=start runs={len(jobs)} already={len(done)}", flush=True)
    with ProcessPoolExecutor(args.jobs) as pool, out.open("a") as f:
        for r in pool.map(train_one, *zip(*jobs)) if jobs else ():
            f.write(json.dumps(r) + "\n")
            f.flush()
            print(f"arm={r['arm']} lr={r['lr']:.3g} seed={r['seed']} mid={r['mid']:.4f} "
                  f"decayed={r['decayed']:.4f} final={r['final']:.4f} s={r['seconds']:.0f}",
                  flush=True)


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


# --- replaying the rules ------------------------------------------------------------------------

def halving_survivors(lrs: list[float], loss: dict[float, float], centre: float) -> set[float]:
    from tune_ablations.results.lr_curves import centre_out
    from tune_ablations.sweeps.lr_tuning import ArmHalving

    h = ArmHalving(milestone=1, max_t=2, eta=3)  # one rung at t=1, as at the cpu preset
    return {lr for lr in centre_out(lrs)
            if not h.stop("arm", repr(lr), 1, loss[lr], math.isclose(lr, centre))}


def asha_survivors(lrs: list[float], loss: dict[float, float], order: list[float]) -> set[float]:
    from ray.tune.schedulers.async_hyperband import _Bracket
    from ray.tune.schedulers.trial_scheduler import TrialScheduler

    class T:
        def __init__(self, i):
            self.trial_id = i

    b = _Bracket(min_t=1, max_t=3, reduction_factor=3, s=0)
    return {lr for lr in order
            if b.on_result(T(repr(lr)), 1, -loss[lr]) != TrialScheduler.STOP}


def analyse(rows: list[dict], mixed: int = MIXED) -> dict:
    out: dict = {}
    rng = np.random.default_rng(0)
    for arm in sorted({r["arm"] for r in rows}):
        centre = _centre(arm)
        runs: dict[float, dict[int, dict]] = {}
        for r in rows:
            if r["arm"] == arm:
                runs.setdefault(r["lr"], {})[r["seed"]] = r
        full = sorted(runs)
        seeds = sorted(set.intersection(*(set(v) for v in runs.values())))
        sweeps = [("seed", {lr: runs[lr][s] for lr in full}) for s in seeds]
        sweeps += [("mixed", {lr: runs[lr][seeds[rng.integers(len(seeds))]] for lr in full})
                   for _ in range(mixed)]
        for kind, sweep in sweeps:
            for label, lrs in (("k9", full), ("k5", full[::2])):
                _replay(out, (arm, label, kind), {lr: sweep[lr] for lr in lrs}, centre, rng)
    return out


def _replay(out: dict, key: tuple, sweep: dict[float, dict], centre: float, rng) -> None:
    """One sweep through both rules, ranked each way."""
    lrs = sorted(sweep)
    final = {lr: sweep[lr]["final"] for lr in lrs}
    best = min(lrs, key=final.get)
    for rank in ("mid", "decayed"):
        loss = {lr: sweep[lr][rank] for lr in lrs}
        kept = halving_survivors(lrs, loss, centre)
        _tally(out, (*key, "halving", rank), best in kept,
               min(final[lr] for lr in kept) - final[best])
        for _ in range(ORDERS):
            kept = asha_survivors(lrs, loss, list(rng.permutation(lrs)))
            _tally(out, (*key, "asha", rank), best in kept,
                   min(final[lr] for lr in kept) - final[best])


def _tally(out: dict, key: tuple, kept: bool, regret: float) -> None:
    t = out.setdefault("/".join(key), {"sweeps": 0, "kept_best": 0, "regret": 0.0})
    t["sweeps"] += 1
    t["kept_best"] += int(kept)
    t["regret"] += regret


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--arms", nargs="+", default=["baseline", "large_batch"])
    ap.add_argument("--k", type=int, default=9)
    ap.add_argument("--span", type=float, default=4.0)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="rung_rankings.jsonl")
    ap.add_argument("--analyse-only", action="store_true")
    args = ap.parse_args()
    print(machine(), flush=True)
    if not args.analyse_only:
        run_all(args)
    rows = _read(Path(args.out))
    for key, t in analyse(rows).items():
        print(f"{key}: kept_final_best={t['kept_best']}/{t['sweeps']} "
              f"({t['kept_best'] / t['sweeps']:.0%}) mean_regret={t['regret'] / t['sweeps']:.4f}")
    tokens = sum(r["tokens"] for r in rows)
    probe = sum(r["probe_tokens"] for r in rows)
    print(f"runs={len(rows)} probe_tokens_vs_training={probe / max(tokens, 1):.3f}")


if __name__ == "__main__":
    main()
