"""Print one of README's Quick start commands verbatim, so CI runs exactly what a newcomer runs;
tests read README's runnable examples through `example()` the same way.

Usage: python3 .ci/readme_commands.py run|test

Each command is the first ```bash block after a `<!-- quickstart:NAME -->` marker in README.md;
each example the first ```python block after a `<!-- example:NAME -->` marker.
"""

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def _block(marker: str, lang: str) -> str:
    m = re.search(rf"<!-- {marker} -->\s*```{lang}\n(.*?)```", README.read_text(), re.S)
    if not m:
        raise SystemExit(f"README.md has no {marker} {lang} block")
    return m.group(1).strip()


def command(name: str) -> str:
    return _block(f"quickstart:{name}", "bash")


def example(name: str) -> str:
    """A runnable Python example of README.md (tests execute it as written)."""
    return _block(f"example:{name}", "python")


if __name__ == "__main__":
    print(command(sys.argv[1]))
