"""`tune-ablations <command> ...` (or `python -m tune_ablations <command>`): one installed tool
for every entry point; `python -m tune_ablations.<command>` works the same."""

from __future__ import annotations

import importlib
import sys

COMMANDS = {"grid": "the six reference ablations x seeds", "search": "Optuna + ASHA search",
            "analysis": "report, plots and tables of an experiment",
            "train": "one run without Ray",
            "export": "the best model in a format transformers loads",
            "submit": "a grid or search as a Ray Job on a cluster (or stop one)",
            "status": "trials by status, best completed, tokens and ETA of any sweep",
            "cache": "list, verify or clean the token cache"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--version"]:
        from .cli import version

        print(version())
        return 0
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {what}" for name, what in COMMANDS.items()]
        print("usage: tune-ablations [--version] <command> [options]\n\ncommands:\n"
              + "\n".join(lines))
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    module = importlib.import_module(f"tune_ablations.{argv[0]}")
    return module.main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
