"""`python -m tune_ablations.search --space search_spaces/lr.toml`: Optuna + ASHA on tokens.

Design choices:
- OptunaSearch (TPE, seeded; or random / QMC) with the base config enqueued as the first point,
  so the search always reports where the reference stood.
- ASHA's time attribute is `tokens_seen`: configurations with different batch sizes and sequence
  lengths are compared at equal tokens, not equal steps.
- The Optuna study lives in memory during the run (a persistent Optuna storage breaks
  `Tuner.restore` after a kill in Ray 2.x) and is exported afterwards to `study.db` (SQLite)
  with `optuna.copy_study`, for optuna-dashboard and importance evaluators.
- The best trial's resolved config is written as `best.toml`, which `grid --config` and
  `train --config` accept; parameter importances go to `importances.json`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import METRIC, MODE, build_ablation, from_flat_dict, to_flat_dict
from .grid import data_overrides, latest_experiment
from .search_space import SearchSpace, build_param_space, load_space
from .sweep import (
    SweepError,
    add_sweep_args,
    check_resources,
    check_sweep_args,
    default_gpus_per_trial,
    experiment_dir,
    fail,
    finish,
    init_ray,
    local_gpus,
    log,
    preflight,
    read_sweep_file,
    run_tuner,
    write_sweep_file,
)

SMOKE_SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "lr.toml"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tune_ablations.search", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--space", help="search-space TOML file (see search_spaces/)")
    ap.add_argument("--preset", choices=("cpu", "seed", "tiny"),
                    help="scale (default: the file's, else seed with a GPU, else cpu)")
    ap.add_argument("--data", default="embedded", help="corpus, as for the grid")
    ap.add_argument("--num-samples", type=int, help="trials (default: the file's, else 16)")
    ap.add_argument("--max-concurrent", type=int, help="trials at once (default: what fits)")
    ap.add_argument("--sampler", choices=("tpe", "random", "qmc"), default="tpe")
    ap.add_argument("--seed", type=int, default=0, help="sampler seed")
    ap.add_argument("--scheduler", choices=("asha", "none"), default="asha")
    ap.add_argument("--grace-tokens", type=int,
                    help="ASHA grace period in tokens (default: the largest budget / --evals)")
    ap.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA eta")
    ap.add_argument("--evals", type=int, default=8,
                    help="evaluations per trial: ASHA can only stop a trial when it reports "
                    "(ignored if eval_every is set in the space or --set)")
    add_sweep_args(ap, "search")
    ap.add_argument("--set", nargs="*", metavar="KEY=VALUE",
                    help="extra fixed overrides (on top of the file's [fixed])")
    ap.add_argument("--smoke-test", action="store_true",
                    help="lr.toml at the tiny preset, 4 samples, under a minute on CPU")
    return ap


def make_sampler(kind: str, seed: int):
    import optuna

    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if kind == "qmc":
        return optuna.samplers.QMCSampler(seed=seed, scramble=True)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4)


def max_tokens(space: SearchSpace, preset: str, extra: dict[str, Any]) -> int:
    """The largest budget any sample of the space can train for (ASHA's max_t)."""
    import itertools

    corners = [p.corners() for p in space.params.values()]
    return max(from_flat_dict({**space.base_flat(preset), **extra,
                               **dict(zip(space.params, c))}).total_tokens
               for c in itertools.product(*corners))


def export_study(exp: Path) -> tuple[Path | None, dict[str, float]]:
    """The searcher's Optuna study (restored from Ray's searcher state) into study.db, and the
    parameter importances."""
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    searcher = OptunaSearch()
    try:
        searcher.restore_from_dir(str(exp))
    except Exception as exc:  # no searcher state: the sweep never started a trial
        log(f"event=study_export_skipped reason={type(exc).__name__}")
        return None, {}
    study = searcher._ot_study
    db = exp / "study.db"
    if db.exists():
        db.unlink()
    optuna.copy_study(from_study_name=study.study_name, from_storage=study._storage,
                      to_storage=f"sqlite:///{db}", to_study_name=exp.name)
    importances: dict[str, float] = {}
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(done) >= 3 and len(study.best_trial.params) >= 1:
        try:
            importances = {k: float(v) for k, v in
                           optuna.importance.get_param_importances(study, target=None).items()}
        except (RuntimeError, ValueError) as exc:
            log(f"event=importance_skipped reason={exc}")
    (exp / "importances.json").write_text(json.dumps(importances, indent=2))
    return db, importances


def write_best(exp: Path, df, space: SearchSpace, preset: str) -> Path | None:
    """best.toml: the best finished trial's resolved config, as fields that differ from the
    base ablation at this preset."""
    ok = df[df["status"].astype(str).isin(["completed"])].dropna(subset=[METRIC])
    if ok.empty:
        return None
    best = ok.sort_values(METRIC, ascending=MODE == "min").iloc[0]
    run = json.loads((Path(best["path"]) / "run.json").read_text())
    base = to_flat_dict(build_ablation(space.ablation, preset))
    diff = {k: v for k, v in run["config"].items()
            if k != "name" and (base.get(k) != v or k in space.params)}
    lines = [f"# Best of search {exp.name}: {METRIC}={best[METRIC]:.5f} "
             f"(trial {best['trial_id']})", f'ablation = "{space.ablation}"',
             f'preset = "{preset}"', "", "[config]"]
    for k, v in diff.items():
        lines.append(f"{k} = {json.dumps(v)}")
    path = exp / "best.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    extra: dict[str, Any] = {}
    if args.smoke_test:
        args.space = args.space or str(SMOKE_SPACE)
        args.preset, args.num_samples = "tiny", args.num_samples or 4
    try:
        from .overrides import parse_overrides

        check_sweep_args(args)
        if args.resume:
            if not args.name:
                args.name = latest_experiment(args.storage, "search")
                if args.name is None:
                    raise SweepError(f"--resume: no search experiment in {args.storage}")
            exp = experiment_dir(args.storage, args.name, resume=True)
            saved = read_sweep_file(exp)
            space = load_space(exp / "space.toml")
            preset, extra = saved["preset"], saved["extra"]
            cpus, gpus = saved["cpus_per_trial"], saved["gpus_per_trial"]
        else:
            if not args.space:
                raise SweepError("--space is required (e.g. search_spaces/lr.toml)")
            space = load_space(args.space)
            preset = args.preset or space.preset or ("seed" if local_gpus() else "cpu")
            extra = {**data_overrides(args.data), **parse_overrides(args.set)}
            if args.evals < 1:
                raise ValueError(f"--evals={args.evals} must be >= 1")
            if "eval_every" not in extra and "eval_every" not in space.fixed:
                steps = from_flat_dict({**space.base_flat(preset), **extra,
                                        "iso_tokens": False, "token_budget": 0}).steps
                extra["eval_every"] = max(1, steps // args.evals)
            if args.num_samples is not None and args.num_samples < 1:
                raise ValueError(f"--num-samples={args.num_samples} must be >= 1")
            if args.reduction_factor <= 1:
                raise ValueError(f"--reduction-factor={args.reduction_factor} must be > 1")
            name = args.name or f"search-{space.path.stem}-{datetime.now():%Y%m%d-%H%M%S}"
            exp = experiment_dir(args.storage, name, resume=False)
            cpus = args.cpus_per_trial
            gpus = args.gpus_per_trial if args.gpus_per_trial is not None else \
                default_gpus_per_trial(args.max_concurrent or 4, local_gpus())
        num_samples = saved["num_samples"] if args.resume else (
            args.num_samples or space.num_samples or 16)
        base = from_flat_dict({**space.base_flat(preset), **extra})
        check_resources(cpus, gpus, address=args.address)
        from .data import check_fits, prepare_data

        data = prepare_data(base.data, Path(args.cache_dir) if args.cache_dir else None, log=log)
        for seq in ([base.data.seq_len] + list(space.params["seq_len"].corners())
                    if "seq_len" in space.params else [base.data.seq_len]):
            check_fits(data, seq)
        max_t = max_tokens(space, preset, extra)
    except (ValueError, SweepError) as exc:
        return fail(str(exc))

    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from .trainable import build_trainable, git_sha, package_versions

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        init_ray(args.address)
        preflight(cpus, gpus)
    except SweepError as exc:
        return fail(str(exc))
    sha = git_sha()
    if not args.resume:
        exp.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(space.path, exp / "space.toml")  # stored verbatim with the results
        write_sweep_file(exp, {
            "kind": "search", "space": str(space.path), "preset": preset, "extra": extra,
            "num_samples": num_samples, "sampler": args.sampler, "seed": args.seed,
            "scheduler": args.scheduler, "cpus_per_trial": cpus, "gpus_per_trial": gpus,
            "max_t": max_t, "argv": sys.argv, "git_sha": sha, "versions": package_versions(),
            "created": datetime.now().isoformat(timespec="seconds")})
    grace = args.grace_tokens or max(1, max_t // args.evals)
    scheduler = ASHAScheduler(time_attr="tokens_seen", max_t=max_t, grace_period=grace,
                              reduction_factor=args.reduction_factor) \
        if args.scheduler == "asha" else None
    point = space.baseline_point(preset)
    searcher = OptunaSearch(sampler=make_sampler(args.sampler, args.seed),
                            points_to_evaluate=[point] if point else None)
    log(f"event=search_start name={exp.name} space={space.path.name} samples={num_samples} "
        f"preset={preset} scheduler={args.scheduler} grace_tokens={grace} max_tokens={max_t} "
        f"path={exp}")
    tune_config = tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=searcher,
                                  scheduler=scheduler, num_samples=num_samples,
                                  max_concurrent_trials=args.max_concurrent)
    try:
        results = run_tuner(
            build_trainable(cpus=cpus, gpus=gpus, cache_dir=args.cache_dir, sha=sha),
            build_param_space(space, preset, extra), exp=exp, resume=args.resume,
            tune_config=tune_config, max_failures=args.max_failures,
            keep_checkpoints=args.keep_checkpoints, parameter_columns=list(space.params))
    except SweepError as exc:
        return fail(str(exc))
    df, code = finish(exp, results, started=started)
    db, importances = export_study(exp)
    best = write_best(exp, df, space, preset)
    counts = df["status"].astype(str).value_counts().to_dict()
    log("event=statuses " + " ".join(f"{k}={v}" for k, v in counts.items()))
    stopped = df[df["status"].astype(str) == "early_stopped"]
    for _, r in stopped.iterrows():
        log(f"early_stopped trial={r['trial_id']} tokens_seen={r['tokens_seen']}")
    if best is not None:
        log(f"best: {best}\n{best.read_text()}")
    if importances:
        log("importances: " + " ".join(f"{k}={v:.3f}" for k, v in importances.items()))
    log(f"study: {db}  results: {exp}  (python -m tune_ablations.analysis {exp})")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
