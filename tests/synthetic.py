"""A hand-made experiment folder in the real results layout, for analysis and report tests."""

import json
import math
from pathlib import Path

from tune_ablations.spec.config import to_flat_dict
from tune_ablations.spec.presets import build_ablation


def make_synthetic_experiment(root: Path) -> Path:
    """A hand-made experiment folder in the real layout (for --smoke-test and tests): baseline
    and large_batch with 2 seeds, high_lr diverged, one errored and one still running trial."""
    exp = root / "synthetic"
    specs = [("baseline", 0, "completed", 1.0), ("baseline", 1, "completed", 1.0),
             ("large_batch", 0, "completed", 2.0), ("large_batch", 1, "completed", 2.0),
             ("high_lr", 0, "diverged", 1.0), ("low_lr", 0, "error", 1.0),
             ("short_seq", 0, "running", 1.0)]
    for i, (name, seed, status, scale) in enumerate(specs):
        cfg = build_ablation(name, "cpu", seed=seed)
        trial = exp / f"run_trial_syn_{i:05d}"
        trial.mkdir(parents=True, exist_ok=True)
        tid = f"syn_{i:05d}"
        (trial / "run.json").write_text(json.dumps(
            {"trial_id": tid, "ablation": name, "seed": seed, "config": to_flat_dict(cfg),
             "data": {"train_tokens": 500000, "key": "synthetic"}}))
        lines = []
        n_evals = {"running": 2, "error": 1}.get(status, 4)
        for k in range(1, n_evals + 1):
            tokens = int(50 * k * cfg.tokens_per_step)
            loss = 7.5 / (1 + 0.4 * k * scale) + 3 + 0.01 * seed
            diverged = status == "diverged" and k == n_evals
            lines.append(json.dumps({
                "trial_id": tid, "step": 50 * k, "tokens_seen": tokens, "epoch": tokens / 5e5,
                "lr": cfg.optim.lr, "train_loss": loss + 0.1, "grad_norm": 0.5,
                "val_loss": 100.0 if diverged else loss, "val_ppl": math.exp(min(loss, 50)),
                "val_bpb": loss / 2, "val_acc": 0.1 * k, "val_top5": 0.2 * k,
                "val_confidence": 0.1, "val_entropy": 4.0, "tokens_per_s": 3000.0 / scale,
                "mfu": 0.3, "unigram_val_loss": 6.0, "unigram_val_bpb": 3.0,
                "val_loss_se": 0.01, "train_time_s": 10.0 * k, "eval_time_s": 0.5 * k,
                "diverged": diverged, "status": status}))
        (trial / "result.json").write_text("\n".join(lines) + "\n")
        if status in ("completed", "diverged"):
            (trial / "outcome.json").write_text(json.dumps(
                {"trial_id": tid, "name": name, "seed": seed, "status": status,
                 "samples": [{"prompt": "The", "text": f"The {name} sample"}],
                 "params": 1000, "non_embedding_params": 800, "initial_loss": 7.0}))
        if status == "error":
            (trial / "error.txt").write_text("RuntimeError: CUDA out of memory (simulated)\n")
    return exp
