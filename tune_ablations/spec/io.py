"""Conventions every layer shares for output: `key=value` log lines on stderr (stdout carries
results and JSON only), one atomic write, and credentials never written.

Design choices:
- Logs go to stderr so `--json` output on stdout pipes straight into `jq`.
- `write_atomic` writes a temporary sibling and renames it: a reader (a dashboard, a resumed
  sweep) sees the old file or the new one, never half of one.
- `redact` removes the credentials inside a URI (`s3://KEY:SECRET@bucket`,
  `postgresql://user:PASSWORD@host/db`) from any text before it is printed, logged or stored,
  and every secret this process knows (registered when a URI's credentials were moved into the
  environment, or held in the environment variables the clients read), in any of its spellings
  (as is, URL-encoded). A secret may contain `/`, `@`, `:` or `%`: a URI's password runs to the
  last `@` of the URI, so nothing of it is left behind.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

# scheme://user:password@ where the password may hold anything but whitespace and quotes, up to
# the last `@` of the URI (a secret with `@` or `/` is redacted whole); no password, no match.
_CREDENTIALS = re.compile(r"(?P<scheme>\b[a-zA-Z][\w+.-]*://)[^\s'\"/@:]*:[^\s'\"]*@")

REDACTED = "***@"
"""What `redact` leaves in place of a URL's user and password."""
HIDDEN = "***"
"""What `redact` leaves in place of a known secret."""
SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "PGPASSWORD", "RAY_AUTH_TOKEN")
"""Environment variables that hold secrets: their values never reach any output."""
MIN_SECRET = 8  # shorter values are not searched for (they would redact ordinary words)
_SECRETS: set[str] = set()


def register_secret(value: str) -> None:
    """A secret this process now holds (e.g. moved out of a URI): `redact` removes it from any
    text, as is and URL-encoded."""
    if len(value) >= MIN_SECRET:
        _SECRETS.add(value)


def _spellings() -> list[str]:
    values = set(_SECRETS) | {os.environ[k] for k in SECRET_ENV
                              if len(os.environ.get(k, "")) >= MIN_SECRET}
    forms = {f for v in values for f in (v, quote(v, safe=""), quote_plus(v, safe=""),
                                         quote(v))}
    return sorted(forms, key=len, reverse=True)  # longest first: no partial leftovers


def redact(text: str) -> str:
    """`s3://KEY:SECRET@bucket/x` -> `s3://***@bucket/x`, and every known secret -> `***`;
    other text unchanged."""
    out = _CREDENTIALS.sub(lambda m: f"{m.group('scheme')}{REDACTED}", str(text))
    for secret in _spellings():
        out = out.replace(secret, HIDDEN)
    return out


def log(msg: str) -> None:
    """One progress line on stderr, flushed (logs of concurrent processes interleave)."""
    print(redact(msg), file=sys.stderr, flush=True)


def say(msg: str = "") -> None:
    """One result line on stdout (what the command answers), flushed."""
    print(redact(msg), flush=True)


def user_command(argv: list[str] | None = None) -> list[str]:
    """The command line as the user typed it (`python -m tune_ablations.grid ...` rather than
    the module's file path), credentials redacted."""
    argv = list(sys.argv if argv is None else argv)
    head = Path(argv[0]) if argv else Path("")
    if head.suffix == ".py" and head.parent.name == "tune_ablations":
        module = "tune_ablations" if head.name == "__main__.py" else f"tune_ablations.{head.stem}"
        argv = ["python", "-m", module, *argv[1:]]
    return [redact(a) for a in argv]


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write `data` to `path` through a temporary sibling and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)
    return path


def to_json(obj: Any) -> str:
    """JSON with credentials redacted (the one way records are serialised)."""
    return redact(json.dumps(obj, indent=2, default=str))


def fail(exc: BaseException | str) -> int:
    """Bad input: one line on stderr naming the field, value and rule; exit code 2."""
    print(f"error: {redact(str(exc))}", file=sys.stderr, flush=True)
    return 2
