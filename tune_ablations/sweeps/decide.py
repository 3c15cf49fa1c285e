"""One precision and one compile setting for every trial of a sweep: decided once, before the
trials start, on the kind of machine that trains them, and recorded.

Design choices:
- Arms that train in different precisions differ in more than their arm (the trust issue:
  bf16 measured 1.16x faster at one arm's shape and 1.04x at another's, either side of a
  per-shape threshold). So `precision=auto` and `compile=auto` are decided once from a probe
  of every shape the sweep plans, weighted by the steps each trains (`probes.decide`), and
  pinned into every trial's spec (`pin_spec`): the same setting on every node, also for the
  trials a sweep adds later (more seeds, a search's samples), and the trial's reproducing
  command names it.
- Where: a local sweep probes here before Ray starts (the trials would compete for the cores).
  On a cluster the driver may be a laptop, so the probe runs as one Ray task with a trial's
  resources, on a node that trains the sweep's trials; the record names that node.
- sweep.json stores the decision (`runtime`); `--resume` reuses it and never re-probes.
- Trials that set different precisions themselves are allowed (precision may be the question)
  but named at the start and recorded (`runtime.mixed`), so no comparison hides it.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..spec.config import RunConfig
from ..spec.io import log
from ..spec.runspec import RunSpec

if TYPE_CHECKING:  # torch is imported only where a decision is made or read
    from ..training.probes import Choice

PINNED = ("precision", "compile")
"""Config keys a sweep's decision sets in every trial that leaves them `auto`."""


def _probe(runs: list[tuple[RunConfig, int]], threads: int, gpus: float) -> dict[str, Any]:
    """Decide for `runs` on this machine with `threads` threads (here, or in a Ray task), on
    the device a trial gets (`auto` is the CPU for trials without a GPU share). A probe that
    fails (a device this machine lacks) decides plain fp32 and eager, and says why: the
    trials still train alike and report their own errors."""
    import torch

    from ..training.probes import Choice, decide
    from ..training.runtime import machine_id, resolve_device

    cfg = runs[0][0]
    device = torch.device("cpu") if cfg.device == "auto" and not gpus else \
        resolve_device(cfg.device)
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        choice = decide(runs, device, scope="sweep")
    except Exception as exc:  # the probe must not cost the sweep: its trials fail or train
        why = f"the probe failed on {device}: {type(exc).__name__}: {str(exc)[:200]}"
        choice = Choice("fp32", False, f"auto: fp32 ({why})", f"auto: eager ({why})", "sweep",
                        machine=machine_id())
        log(f"warning: {why}; every trial trains in fp32, eager")
    finally:
        torch.set_num_threads(old)
    return {**choice.to_dict(), "node": _node()}


def _node() -> str:
    """Host name, and the Ray node's address where this runs in a Ray worker."""
    try:
        import ray

        if ray.is_initialized():
            return f"{platform.node()} ({ray.util.get_node_ip_address()})"
    except ImportError:
        pass
    return platform.node()


def sweep_choice(configs: Sequence[RunConfig], vocab_sizes: Sequence[int], cpus: float, *,
                 on_worker: bool = False, gpus: float = 0.0,
                 resources: dict[str, float] | None = None) -> Choice:
    """The sweep's one decision, probed here or (`on_worker`: Ray is up, the driver may not be
    a worker) in a Ray task placed as a trial would be."""
    runs = list(zip(configs, vocab_sizes))
    threads = max(1, int(cpus))
    if not on_worker:
        return _with_node(_probe(runs, threads, gpus))
    import ray

    task = ray.remote(_probe).options(num_cpus=cpus, num_gpus=gpus, resources=resources or None)
    return _with_node(ray.get(task.remote(runs, threads, gpus)))


def _with_node(d: dict[str, Any]) -> Choice:
    from ..training.probes import Choice

    choice = Choice.from_dict(d)
    return replace(choice, machine=f"{d.get('node', '')} | {choice.machine}")


def pin_spec(spec: RunSpec, cfg: RunConfig, choice: Choice | None) -> RunSpec:
    """`spec` with the sweep's decision as overrides of the settings `cfg` (its resolved config)
    leaves `auto`."""
    if choice is None:
        return spec
    add = {k: v for k, v in (("precision", choice.precision), ("compile", choice.compiled))
           if getattr(cfg, k) == "auto"}
    return replace(spec, overrides=tuple({**dict(spec.overrides), **add}.items())) if add \
        else spec


def mixed(configs: Sequence[RunConfig], choice: Choice) -> dict[str, dict[str, list[str]]]:
    """{key: {value: arms}} for each pinned key whose value differs between trials once the
    decision is applied (only trials that set it themselves can differ)."""
    out: dict[str, dict[str, list[str]]] = {}
    for key in PINNED:
        values: dict[str, list[str]] = {}
        for c in configs:
            arms = values.setdefault(str(getattr(choice.pin(c), key)), [])
            if c.name not in arms:
                arms.append(c.name)
        if len(values) > 1:
            out[key] = values
    return out


def record(choice: Choice, configs: Sequence[RunConfig]) -> dict[str, Any]:
    """What sweep.json stores (`runtime`), with a log line for each part of it."""
    mix = mixed(configs, choice)
    log(f"event=runtime scope=sweep precision={choice.precision} compile={choice.compiled} "
        f"measured_on={choice.machine!r}")
    log(f"event=runtime precision_reason={choice.precision_reason!r}")
    log(f"event=runtime compile_reason={choice.compile_reason!r}")
    for key, values in mix.items():
        groups = "; ".join(f"{v}: {', '.join(arms)}" for v, arms in values.items())
        log(f"warning: trials set different {key} themselves ({groups}): a comparison between "
            f"them includes {key}, not only their arm")
    return {**choice.to_dict(), "mixed": mix}
