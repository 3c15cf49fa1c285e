"""`python -m tune_ablations.train`: one training run without Ray; `key=value` lines on stderr,
the result on stdout (and in `--out`)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from .cli import build_parser
from .spec.io import fail, log, say, write_atomic
from .spec.names import Status
from .spec.presets import default_preset
from .spec.runspec import add_spec_args, spec_from_args


def parser() -> argparse.ArgumentParser:
    ap = build_parser("train", "One training run without Ray.")
    add_spec_args(ap, single=True)
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", help="write the result JSON here: a file, or a folder for "
                    "result.json (default: none)")
    ap.add_argument("--smoke-test", action="store_true", help="tiny run, seconds on a CPU")
    return ap


def write_out(out: str, result: dict[str, Any]) -> Path:
    """`--out`: a folder (existing, or ending in /) gets result.json; else the file itself."""
    path = Path(out).expanduser()
    if path.is_dir() or out.endswith(("/", os.sep)):
        path = path / "result.json"
    return write_atomic(path, json.dumps(result, indent=2, default=str))


def main(argv: list[str] | None = None) -> int:
    from .training.resolved import Resolver
    from .training.runtime import local_gpus
    from .training.trainer import train

    args = parser().parse_args(argv)
    if args.smoke_test:
        args.preset = "tiny"
    try:
        spec, _ = spec_from_args(args, default_preset=default_preset(local_gpus()))
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads={args.threads} must be >= 1")
        resolver = Resolver(log=log)
        cfg, data = resolver.run(spec)  # budgets count the real vocabulary
        log(f"event=start {spec.log_fields()} steps={cfg.steps} tokens={cfg.total_tokens}")
        result = train(cfg, data=data, threads=args.threads, log=log)
    except ValueError as exc:  # bad input, or a corpus that cannot be used (CorpusError)
        return fail(exc)
    say(f"event=end status={result['status']} val_loss={result['final']['val_loss']} "
        f"unigram_val_loss={result['unigram_val_loss']:.4f} "
        f"tokens_per_s={result['tokens_per_s']:.1f} mfu={result['mfu']:.3f}")
    for s in result["samples"]:
        say(f"sample prompt={s['prompt']!r} text={s['text']!r}")
    if args.out:
        say(f"event=written path={write_out(args.out, result)}")
    return 0 if result["status"] in (Status.COMPLETED, Status.STOPPED) else 1


if __name__ == "__main__":
    raise SystemExit(main())
