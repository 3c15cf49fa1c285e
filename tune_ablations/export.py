"""`python -m tune_ablations.export <experiment or trial> --out DIR`: a trained model in a
format the Hugging Face ecosystem loads (see `results.export`), from a local folder or a URI."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from .cli import build_parser
from .spec.io import fail, say


def parser() -> argparse.ArgumentParser:
    ap = build_parser("export", "Export a trained model: safetensors weights, config, tokenizer, "
                      "generation config and a model card.")
    ap.add_argument("source", nargs="?", help="experiment (its best completed trial) or a "
                    "trial folder; a local path or a URI")
    ap.add_argument("--out", help="output folder (required; with --smoke-test default: a "
                    "temporary folder)")
    ap.add_argument("--smoke-test", action="store_true", help="export a tiny real run (trained "
                    "here, seconds) and check that the reloaded model gives identical logits")
    ap.add_argument("--license", default="mit", help="the model card's license (a Hub "
                    "license id; the training data's own terms apply too) (default: mit)")
    ap.add_argument("--cache-dir", help="token cache, for experiments made before tokenizers "
                    "were stored with them (default: $TUNE_ABLATIONS_CACHE or "
                    "~/.cache/tune_ablations)")
    return ap


def main(argv: list[str] | None = None) -> int:
    from .results.experiment import ExperimentError
    from .results.export import export

    args = parser().parse_args(argv)
    if args.smoke_test:
        return _smoke(args.out)
    if not args.source or not args.out:
        return fail("export needs an experiment or trial folder and --out (or --smoke-test)")
    try:
        out = export(args.source, args.out, license=args.license,
                     cache_dir=Path(args.cache_dir) if args.cache_dir else None)
    except (ValueError, ExperimentError, FileNotFoundError) as exc:
        return fail(exc)
    say(f"event=exported path={out}")
    return 0


def _smoke(out: str | None) -> int:
    import torch

    from .analysis import smoke_experiment
    from .results.experiment import Experiment
    from .results.export import export, load_pretrained, locate_trial
    from .spec.config import from_flat_dict
    from .spec.names import RUN_FILE
    from .training.model import TransformerLM
    from .training.step import load_checkpoint

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
    say(f"event=exported path={target} identical_logits={same}")
    return 0 if same else 1


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

if __name__ == "__main__":
    raise SystemExit(main())
