"""`python -m tune_ablations.cache list|verify|clean`: the token cache from the command line.

A cache hit checks only O(1) invariants (manifest and file sizes); `verify` checks every file's
digest; `clean` removes entries (by key, or `--all`) and leftovers of interrupted builds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .cli import build_parser
from .spec.io import fail, say
from .spec.names import JOBS_DIR
from .training.data import valid_cache
from .training.runtime import cache_root


def entries(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and p.name not in ("remote", "domains", JOBS_DIR, "studies")) \
        if root.exists() else []


def _size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


def parser():
    ap = build_parser("cache", "List, verify or clean the token cache.")
    ap.add_argument("action", nargs="?", choices=("list", "verify", "clean"),
                    help="what to do (required unless --smoke-test)")
    ap.add_argument("keys", nargs="*", help="cache keys (default: every entry for list and "
                    "verify; clean needs keys or --all)")
    ap.add_argument("--all", action="store_true", help="with clean: remove every entry")
    ap.add_argument("--cache-dir", help="cache folder (default: $TUNE_ABLATIONS_CACHE or "
                    "~/.cache/tune_ablations)")
    ap.add_argument("--smoke-test", action="store_true", help="build a tiny cache in a temp "
                    "folder, then list, verify and clean it")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.smoke_test:
        return _smoke()
    if args.action is None:
        return fail("an action is required: list, verify or clean")
    root = Path(args.cache_dir).expanduser() if args.cache_dir else cache_root()
    found = entries(root)
    known = {p.name for p in found}
    for key in args.keys:
        if key not in known:
            return fail(f"cache key {key!r} is not in {root} (see `cache list`)")
    chosen = [p for p in found if not args.keys or p.name in args.keys]
    if args.action == "list":
        for p in chosen:
            m = valid_cache(p) or {}
            say(json.dumps({"key": p.name, "valid": bool(m), "corpus": m.get("corpus"),
                              "tokenizer": m.get("tokenizer"), "vocab_size": m.get("vocab_size"),
                              "train_tokens": m.get("train_tokens"),
                              "created": m.get("created"), "mb": round(_size_mb(p), 2)}))
        return 0
    if args.action == "verify":
        bad = [p.name for p in chosen if valid_cache(p, verify=True) is None]
        say(f"event=verified entries={len(chosen)} bad={','.join(bad) or '-'}")
        return 1 if bad else 0
    if not args.keys and not args.all:
        return fail("clean needs cache keys or --all")
    leftovers = [p for p in root.iterdir() if p.name.startswith(".")] if root.exists() else []
    for p in [*chosen, *leftovers]:
        shutil.rmtree(p, ignore_errors=True)
    say(f"event=cleaned entries={len(chosen)} leftovers={len(leftovers)} root={root}")
    return 0


def _smoke() -> int:
    import tempfile

    from .spec.runspec import RunSpec
    from .training.resolved import Resolver

    root = Path(tempfile.mkdtemp(prefix="ta-cache-"))
    Resolver(root).config(RunSpec(preset="tiny", data="pydoc"))  # builds the cache entry
    codes = [main([action, "--cache-dir", str(root), *extra])
             for action, extra in (("list", []), ("verify", []), ("clean", ["--all"]))]
    return 0 if codes == [0, 0, 0] and not entries(root) else 1


if __name__ == "__main__":
    raise SystemExit(main())
