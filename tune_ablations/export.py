"""`python -m tune_ablations.export <experiment or trial> --out DIR`: a trained model in a
format the Hugging Face ecosystem loads (see `results.export`), from a local folder or a URI."""

from __future__ import annotations

import argparse
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
    from .sweeps.smoke import export_round_trip

    target, same = export_round_trip(out)
    say(f"event=exported path={target} identical_logits={same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
