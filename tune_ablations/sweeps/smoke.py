"""A real tiny experiment without Ray, in the results layout: what `analysis`, `status` and
`export` smoke-test against and tests read (seconds on a CPU), and the export round trip that
`export --smoke-test` checks.

It is made by the same pieces as a sweep's: the grid's plan (baseline and high_lr x 2 seeds at
the tiny preset on the embedded corpus), the plan's resolver, sweep.json and the stored files
written by `sweep.write_start`, and each trial's run.json and outcome.json by the trainable's
own writers; only Ray is replaced by calling `train()` here.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..results.experiment import Experiment
from ..spec.names import OUTCOME_FILE, RAY_CHECKPOINT_PREFIX, RAY_RESULT_FILE, RUN_FILE
from ..training.resolved import Resolver
from ..training.trainer import train
from .grid_plan import add_grid_arguments, build_plan
from .options import ResourceOptions
from .sweep import sweep_record, write_start
from .trainable import outcome_record, run_record

NAME = "smoke"


def _plan(root: Path, overrides: dict, resolver: Resolver, data: str | None = None):
    import argparse

    ap = argparse.ArgumentParser()
    add_grid_arguments(ap)
    sets = [f"{k}={json.dumps(v) if isinstance(v, bool) else v}"
            for k, v in {"text_samples": 0, **overrides}.items()]
    argv = ["--preset", "tiny", "--ablations", "baseline", "high_lr", "--seeds", "2",
            "--set", *sets, "--storage", str(root), "--name", NAME,
            *(["--data", data] if data else [])]
    return build_plan(ap.parse_args(argv), None, 0, ResourceOptions(), resolver), argv


def smoke_experiment(root: Path, overrides: dict | None = None, data: str | None = None
                     ) -> Path:
    """baseline and high_lr x 2 seeds at the tiny preset on the embedded corpus (or `data`),
    with `overrides` shared by every run; returns the experiment's folder."""
    resolver = Resolver()
    plan, argv = _plan(Path(root), dict(overrides or {}), resolver, data)
    exp = Experiment(Path(root) / NAME)
    for spec in plan.trials:
        cfg, data = resolver.run(spec)
        trial = f"{spec.label}-{NAME}"
        lines: list[str] = []

        def report(m, save, lines=lines, trial=trial):
            lines.append(json.dumps(m | {"trial_id": trial}))
            save(Path(exp.path(trial, f"{RAY_CHECKPOINT_PREFIX}{len(lines):06d}")))

        result = train(cfg, report=report, data=data)
        exp.write_bytes(run_record(spec, cfg, data, trial_id=trial), trial, RUN_FILE)
        exp.write_bytes("\n".join(lines) + "\n", trial, RAY_RESULT_FILE)
        exp.write_bytes(outcome_record(result, trial), trial, OUTCOME_FILE)
    record = sweep_record(plan, exp, storage=str(root), argv=["tune_ablations.smoke", *argv])
    write_start(plan, exp, resolver.datasets, record)
    return Path(exp.root)


def export_round_trip(out: str | None = None) -> tuple[Path, bool]:
    """`export --smoke-test`: export the best run of a smoke experiment and check that the
    reloaded model (ours, and through transformers) gives the trained model's logits.
    Returns (the exported folder, identical)."""
    import tempfile

    import torch

    from ..results.export import export, load_pretrained, locate_trial
    from ..spec.config import from_flat_dict
    from ..training.model import TransformerLM
    from ..training.step import load_checkpoint

    root = Path(tempfile.mkdtemp(prefix="ta-export-"))
    exp_dir = smoke_experiment(root)
    target = export(exp_dir, out or root / "model")
    exp, trial = locate_trial(exp_dir)
    cfg = from_flat_dict(Experiment(exp.root).read_json(trial, RUN_FILE)["config"])
    model = load_pretrained(target)
    ref = TransformerLM(cfg.model, model.vocab_size).eval()
    ref.load_state_dict(load_checkpoint(exp.fetch_checkpoint(trial))["model"])
    x = torch.randint(0, model.vocab_size, (2, 16))
    with torch.no_grad():
        same = torch.equal(model(x), ref(x)) and _hf_logits_match(target, ref, x)
    return Path(target), bool(same)


def _hf_logits_match(target: Path, ref, x) -> bool:
    """The exported folder loads through `transformers.AutoModelForCausalLM` (our remote code,
    or Llama) and gives the trained model's logits; True when transformers is not installed."""
    import torch

    try:
        from transformers import AutoModelForCausalLM
        from transformers.utils import logging as hf_logging
    except ImportError:
        return True
    hf_logging.disable_progress_bar()
    hf = AutoModelForCausalLM.from_pretrained(str(target), trust_remote_code=True).eval()
    with torch.no_grad():
        return torch.allclose(hf(x).logits.float(), ref(x), atol=1e-4, rtol=1e-4)
