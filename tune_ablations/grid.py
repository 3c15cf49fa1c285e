"""`python -m tune_ablations.grid`: the six reference ablations x seeds as one Ray Tune sweep.

Design choices:
- Every trial's config is built and validated, and the corpus tokenized and cached, in the driver
  before Ray starts: bad input costs nothing and trials only read the cache.
- `--iso-tokens` trains every ablation on the baseline's token count (the reference's
  "controlled data exposure"); by default each keeps its published step count, as the reference.
- `--dry-run` prints the plan (tokens, epochs, FLOPs, parameters, estimated time from a few timed
  steps on this machine) and spends nothing else.
- Resume: `--resume` restores the Tuner with `resume_errored=True`; the sweep's own settings come
  back from `sweep.json`, so a resumed sweep is the same sweep.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from .config import (
    ABLATIONS,
    METRIC,
    MODE,
    REFERENCE_CORPUS,
    REFERENCE_TOKENIZER,
    RunConfig,
    from_flat_dict,
)
from .overrides import load_config_file, parse_overrides
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


def data_overrides(data: str) -> dict[str, Any]:
    """`--data`: an embedded corpus, `reference` (SmolLM cosmopedia-v2 with its tokenizer, from
    the Hub), `hf:<dataset>/<config>`, or a local path (made absolute: trials run elsewhere)."""
    if data == "reference":
        return {"corpus": REFERENCE_CORPUS, "tokenizer": REFERENCE_TOKENIZER}
    if data in ("embedded", "pydoc", "stdlib") or data.startswith("hf:"):
        return {"corpus": data}
    return {"corpus": str(Path(data).expanduser().resolve())}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m tune_ablations.grid", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", choices=("cpu", "seed", "tiny"),
                    help="scale (default: seed with a GPU, else cpu)")
    ap.add_argument("--data", default="embedded", help="embedded | pydoc | stdlib | reference "
                    "| hf:<dataset>/<config> | local path (default: embedded)")
    ap.add_argument("--ablations", nargs="+", default=list(ABLATIONS), metavar="NAME",
                    help=f"subset of: {', '.join(ABLATIONS)}")
    ap.add_argument("--seeds", type=int, default=1, help="seeds per ablation (3 for claims)")
    budget = ap.add_mutually_exclusive_group()
    budget.add_argument("--max-steps", type=int, help="steps for every ablation")
    budget.add_argument("--tokens", type=int, help="token budget for every ablation")
    budget.add_argument("--iso-tokens", action="store_true",
                        help="every ablation trains on the baseline's token count")
    ap.add_argument("--config", help="TOML run file (e.g. a search's best.toml): its [config] "
                    "applies to every ablation")
    ap.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="override config fields")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, train nothing")
    add_sweep_args(ap, "grid")
    ap.add_argument("--smoke-test", action="store_true",
                    help="tiny preset, two ablations, seconds per trial")
    return ap


def plan_trials(args: argparse.Namespace, preset: str) -> tuple[dict[str, Any], list[RunConfig]]:
    """(shared flat overrides for Ray's param_space, the validated config of every trial)."""
    if args.seeds < 1:
        raise ValueError(f"--seeds={args.seeds} must be >= 1")
    for name in args.ablations:
        if name not in ABLATIONS:
            from .config import unknown_key_error

            raise unknown_key_error(name, list(ABLATIONS), what="ablation")
    if len(set(args.ablations)) != len(args.ablations):
        raise ValueError(f"--ablations={args.ablations} lists a name twice")
    shared: dict[str, Any] = {"preset": preset, **data_overrides(args.data)}
    if args.config:
        file_flat = load_config_file(args.config)
        file_flat.pop("ablation", None)
        file_flat.pop("preset", None)
        shared.update(file_flat)
    shared.update(parse_overrides(args.set))
    if args.max_steps is not None:
        shared["max_steps"] = args.max_steps
    if args.tokens is not None:
        if args.tokens <= 0:
            raise ValueError(f"--tokens={args.tokens} must be > 0")
        shared["token_budget"] = args.tokens
    if args.iso_tokens:
        shared["iso_tokens"] = True
    configs = [from_flat_dict({**shared, "ablation": a, "seed": s})
               for a in args.ablations for s in range(args.seeds)]
    return shared, configs


def estimate_seconds_per_step(cfg: RunConfig, vocab: int, threads: int, steps: int = 3) -> float:
    """Median wall time of a few training steps of this config on this machine."""
    import torch
    import torch.nn.functional as F

    from .model import TransformerLM
    from .train import autocast_dtype, build_optimizer, resolve_device

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    device = resolve_device(cfg)
    amp = autocast_dtype(cfg, device)
    model = TransformerLM(cfg.model, vocab).to(device)
    opt = build_optimizer(model, cfg, device)
    x = torch.randint(0, vocab, (cfg.data.batch_size, cfg.data.seq_len + 1), device=device)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            logits = model(x[:, :-1])
        F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step warms up allocators and kernels
            times.append(time.perf_counter() - t0)
    torch.set_num_threads(old)
    return sorted(times)[len(times) // 2]


def print_plan(configs: list[RunConfig], data_by_key: dict, threads: int,
               concurrency: int) -> None:
    from .data import cache_key
    from .model import count_params, flops_per_token

    log(f"{'ablation':<12} {'seed':>4} {'params':>9} {'steps':>6} {'tokens':>10} {'epochs':>6} "
        f"{'PFLOP':>8} {'est_s':>7}")
    total_s = total_flops = 0.0
    step_time: dict[tuple, float] = {}
    for c in configs:
        data = data_by_key[cache_key(c.data)]
        shape = (c.model, c.data.batch_size, c.data.seq_len, c.precision, c.device)
        if shape not in step_time:
            step_time[shape] = estimate_seconds_per_step(c, data.vocab_size, threads)
        est = step_time[shape] * c.steps
        flops = flops_per_token(c.model, data.vocab_size, c.data.seq_len) * c.total_tokens
        params = count_params(c.model, data.vocab_size)["params"]
        total_s += est
        total_flops += flops
        log(f"{c.name:<12} {c.seed:>4} {params:>9,} {c.steps:>6} {c.total_tokens:>10,} "
            f"{c.total_tokens / data.manifest['train_tokens']:>6.2f} {flops / 1e15:>8.4f} "
            f"{est:>7.0f}")
    log(f"total trials={len(configs)} PFLOP={total_flops / 1e15:.4f} "
        f"trial_seconds={total_s:.0f} est_wall_seconds={total_s / max(1, concurrency):.0f} "
        f"concurrency={concurrency}")


def by_cost(configs: list[RunConfig], data_by_key: dict) -> list[str]:
    """Ablation names, most training FLOPs first: starting the longest trials first shortens
    the sweep when trials outnumber slots (longest-processing-time scheduling)."""
    from .data import cache_key
    from .model import flops_per_token

    cost: dict[str, float] = {}
    for c in configs:
        vocab = data_by_key[cache_key(c.data)].vocab_size
        cost[c.name] = cost.get(c.name, 0.0) + flops_per_token(
            c.model, vocab, c.data.seq_len) * c.total_tokens
    return sorted(cost, key=lambda name: -cost[name])


def print_summary(df) -> None:
    """One row per ablation; mean +- std across seeds when there are several."""
    if df.empty:
        return
    rows = []
    for name, g in df.groupby("ablation", sort=False, observed=True):
        def fmt(col: str, spec: str = ".4f", g=g) -> str:
            v = g[col].astype(float).dropna()
            if v.empty:
                return "-"
            return f"{v.mean():{spec}}" + (f"+-{v.std():{spec}}" if len(v) > 1 else "")
        statuses = ",".join(f"{k}:{v}" for k, v in g["status"].value_counts().items() if v)
        rows.append((name, fmt("val_loss"), fmt("val_ppl", ".1f"), fmt("val_acc", ".3f"),
                     f"{int(g['tokens_seen'].fillna(0).max()):,}", fmt("tokens_per_s", ".0f"),
                     statuses))
    rows.sort(key=lambda r: float(r[1].split("+")[0]) if r[1] != "-" else float("inf"))
    head = ("ablation", METRIC, "val_ppl", "val_acc", "tokens_seen", "tokens/s", "status")
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    for r in (head, *rows):
        log("  ".join(str(x).ljust(w) for x, w in zip(r, widths)))


def latest_experiment(storage: str, prefix: str) -> str | None:
    root = Path(storage).expanduser()
    found = sorted((p for p in root.glob(f"{prefix}-*") if (p / "sweep.json").exists()),
                   key=lambda p: p.stat().st_mtime)
    return found[-1].name if found else None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.perf_counter()
    if args.smoke_test:
        args.preset = "tiny"
        if args.ablations == list(ABLATIONS):
            args.ablations = ["baseline", "high_lr"]
    preset = args.preset or ("seed" if local_gpus() else "cpu")
    try:
        check_sweep_args(args)
        if args.resume and not args.name:
            args.name = latest_experiment(args.storage, "grid")
            if args.name is None:
                raise SweepError(f"--resume: no grid experiment in {args.storage}")
        name = args.name or f"grid-{preset}-{datetime.now():%Y%m%d-%H%M%S}"
        exp = experiment_dir(args.storage, name, resume=args.resume)
        if args.resume:
            saved = read_sweep_file(exp)
            shared, ablations, seeds = saved["shared"], saved["ablations"], saved["seeds"]
            cpus, gpus = saved["cpus_per_trial"], saved["gpus_per_trial"]
            configs = [from_flat_dict({**shared, "ablation": a, "seed": s})
                       for a in ablations for s in range(seeds)]
        else:
            shared, configs = plan_trials(args, preset)
            ablations, seeds = args.ablations, args.seeds
            cpus = args.cpus_per_trial
            gpus = args.gpus_per_trial if args.gpus_per_trial is not None else \
                default_gpus_per_trial(len(configs), local_gpus())
        check_resources(cpus, gpus, address=args.address)
        from .data import cache_key, check_fits, prepare_data

        data_by_key = {}
        for c in configs:
            key = cache_key(c.data)
            if key not in data_by_key:
                data_by_key[key] = prepare_data(
                    c.data, Path(args.cache_dir) if args.cache_dir else None, log=log)
            check_fits(data_by_key[key], c.data.seq_len)
    except (ValueError, SweepError) as exc:
        return fail(str(exc))
    threads = max(1, int(cpus))
    concurrency = max(1, int((os.cpu_count() or 1) // cpus)) if not gpus else \
        max(1, int(local_gpus() / gpus)) if local_gpus() else 1
    for data in data_by_key.values():
        facts = data.facts()
        log("event=data " + " ".join(f"{k}={v}" for k, v in facts.items()))
    if args.dry_run:
        print_plan(configs, data_by_key, threads, concurrency)
        return 0

    from ray import tune

    from .trainable import build_trainable, git_sha, package_versions

    try:
        init_ray(args.address)
        preflight(cpus, gpus)
    except SweepError as exc:
        return fail(str(exc))
    sha = git_sha()
    if not args.resume:
        write_sweep_file(exp, {
            "kind": "grid", "shared": shared, "ablations": ablations, "seeds": seeds,
            "cpus_per_trial": cpus, "gpus_per_trial": gpus, "argv": sys.argv,
            "git_sha": sha, "versions": package_versions(),
            "created": datetime.now().isoformat(timespec="seconds")})
    log(f"event=sweep_start name={exp.name} trials={len(configs)} preset={shared['preset']} "
        f"cpus_per_trial={cpus} gpus_per_trial={gpus} resume={args.resume} path={exp}")
    trainable = build_trainable(cpus=cpus, gpus=gpus, cache_dir=args.cache_dir, sha=sha)
    param_space = {**shared, "ablation": tune.grid_search(by_cost(configs, data_by_key)),
                   "seed": tune.grid_search(list(range(seeds)))}
    try:
        results = run_tuner(trainable, param_space, exp=exp, resume=args.resume,
                            tune_config=tune.TuneConfig(metric=METRIC, mode=MODE),
                            max_failures=args.max_failures,
                            keep_checkpoints=args.keep_checkpoints,
                            parameter_columns=["ablation", "seed"])
    except SweepError as exc:
        return fail(str(exc))
    df, code = finish(exp, results, started=started)
    print_summary(df)
    log(f"results: {exp}  (python -m tune_ablations.analysis {exp})")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
