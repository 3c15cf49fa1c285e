"""Print one of README's Quick start commands verbatim, so CI runs exactly what a newcomer runs.

Usage: python3 .ci/readme_commands.py run|test

Each command is the first ```bash block after a `<!-- quickstart:NAME -->` marker in README.md.
"""

import re
import sys
from pathlib import Path


def command(name: str) -> str:
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    m = re.search(rf"<!-- quickstart:{name} -->\s*```bash\n(.*?)```", text, re.S)
    if not m:
        raise SystemExit(f"README.md has no quickstart:{name} block")
    return m.group(1).strip()


if __name__ == "__main__":
    print(command(sys.argv[1]))
