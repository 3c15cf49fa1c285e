"""What every command shares: a parser whose errors are one line (exit 2, like ours), that
answers `--version` and shows defaults in `--help`.

The commands are the package's top-level modules (`grid`, `search`, `analysis`, `train`,
`export`, `status`, `submit`, `cache`): each parses its arguments, calls the layers below
(`spec`, `training`, `results`, `sweeps`) and prints.
"""

from __future__ import annotations

import argparse
import sys


class _Parser(argparse.ArgumentParser):
    raise_errors = False
    """True for the Python API: a bad argument raises ValueError instead of exiting."""

    def error(self, message: str):  # one line, no usage block: the same shape as our errors
        if self.raise_errors:
            raise ValueError(f"{self.prog}: {message}")
        print(f"error: {self.prog}: {message}", file=sys.stderr)
        raise SystemExit(2)


def version() -> str:
    from . import __version__

    return f"tune-ablations {__version__}"


def build_parser(command: str, description: str) -> argparse.ArgumentParser:
    ap = _Parser(prog=f"python -m tune_ablations.{command}", description=description)
    ap.add_argument("--version", action="version", version=version(),
                    help="print the version and exit")
    return ap
