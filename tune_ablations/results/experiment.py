"""`Experiment`: one sweep's folder, on a local disk or behind a URI that pyarrow understands
(`s3://`, `gs://`, `file://`). Every path inside an experiment, ours and Ray's, is built here;
nothing else in the package joins them or tests for a scheme.

Design choices:
- One pyarrow filesystem for both kinds (a local folder and `file://` are the same local
  filesystem), so every reader (status, analysis, export, resume) has one code path.
- Small files and tables are read directly; a checkpoint is fetched only when a caller needs
  that checkpoint (export, the held-out check), never mirrored. `bytes_read` counts what was
  read, for the status benchmark.
- The newest experiment is the one whose `sweep.json` records the latest creation time, not
  the latest mtime (object stores have no folder mtimes).
- Credentials and endpoints come from the usual environment (`AWS_ENDPOINT_URL`,
  `AWS_ACCESS_KEY_ID`, ...). Credentials written inside an s3:// URI are moved into that
  environment and removed from the URI, so nothing that is pickled (Ray's tuner.pkl), written or
  printed holds them.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from ..spec.io import redact, write_atomic
from ..spec.names import (
    CHECKPOINT_FILE,
    OUTCOME_FILE,
    RAY_CHECKPOINT_PREFIX,
    RAY_PARAMS_FILE,
    RAY_STATE_PREFIX,
    RAY_TUNER_FILE,
    RUN_FILE,
    SWEEP_FILE,
)


class ExperimentError(ValueError):
    """An experiment that is missing, or cannot be opened; the message says which."""


def is_remote(location: str | os.PathLike) -> bool:
    """A URI other than `file://`."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


def _local_path(location: str | os.PathLike) -> Path:
    text = str(location)
    if text.startswith("file://"):
        from urllib.parse import unquote, urlparse

        text = unquote(urlparse(text).path)
    return Path(text).expanduser().resolve()


def join(storage: str | os.PathLike, name: str) -> str:
    """`storage/name` for a folder or a URI."""
    text = str(storage)
    return f"{text.rstrip('/')}/{name}" if is_remote(text) else str(_local_path(text) / name)


# s3://KEY:SECRET@bucket/path: the secret runs to the last `@` (AWS secrets hold `/` and `+`;
# written raw or URL-encoded), the bucket and path hold no `@`.
_INLINE = re.compile(r"^(?P<scheme>s3://)(?P<key>[^/@:]+):(?P<secret>.+)@(?P<rest>[^@]+)$")


def has_credentials(location: str) -> bool:
    """Whether a storage URI carries credentials inline (`s3://KEY:SECRET@bucket`)."""
    return _INLINE.match(str(location)) is not None


def strip_credentials(location: str) -> str:
    """`s3://KEY:SECRET@bucket/x` -> `s3://bucket/x`, the credentials moved into this process's
    environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), where pyarrow, Ray's workers
    started from here and S3 clients read them. Nothing pickled or written holds them."""
    from urllib.parse import unquote

    from ..spec.io import register_secret

    m = _INLINE.match(str(location))
    if not m:
        return str(location)
    os.environ["AWS_ACCESS_KEY_ID"] = unquote(m["key"])
    os.environ["AWS_SECRET_ACCESS_KEY"] = unquote(m["secret"])
    register_secret(m["secret"])
    register_secret(unquote(m["secret"]))
    return m["scheme"] + m["rest"]


def _filesystem(location: str):
    import pyarrow.fs as pafs

    if not is_remote(location):
        return pafs.LocalFileSystem(), str(_local_path(location))
    try:
        fs, path = pafs.FileSystem.from_uri(location)
    except Exception as exc:  # an unknown scheme, bad credentials configuration, ...
        raise ExperimentError(f"--storage {redact(location)!r} is not a storage URI pyarrow can "
                              f"open ({type(exc).__name__}: {redact(str(exc))[:160]})") from None
    return fs, path.rstrip("/")


class Experiment:
    """A sweep's folder. `location` is a local path, `file://...` or a remote URI."""

    def __init__(self, location: str | os.PathLike):
        self._location = strip_credentials(str(location))
        self.remote = is_remote(self._location)
        self.fs, self.root = _filesystem(self._location)
        self.bytes_read = 0

    def __str__(self) -> str:
        return redact(self._location) if self.remote else self.root

    def __repr__(self) -> str:
        return f"Experiment({str(self)!r})"

    @property
    def location(self) -> str:
        """Where it is, safe to store and hand to other processes (no credentials)."""
        return self._location

    @property
    def name(self) -> str:
        return self.root.rstrip("/").rsplit("/", 1)[-1]

    @property
    def local_dir(self) -> Path | None:
        """The folder on this machine, for a local experiment."""
        return None if self.remote else Path(self.root)

    def path(self, *parts: str) -> str:
        """A path inside the experiment, on its filesystem."""
        return "/".join([self.root, *parts])

    def where(self, *parts: str) -> str:
        """A path inside the experiment as a user would name it (URI or local path)."""
        return "/".join([str(self).rstrip("/"), *parts])

    # --- small files --------------------------------------------------------------------------

    def exists(self, *parts: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def read_bytes(self, *parts: str) -> bytes:
        try:
            with self.fs.open_input_stream(self.path(*parts)) as f:
                data = f.read()
        except (FileNotFoundError, OSError) as exc:
            if self.exists(*parts):
                raise
            raise FileNotFoundError(f"{self}/{'/'.join(parts)}") from exc
        self.bytes_read += len(data)
        return data

    def read_text(self, *parts: str) -> str:
        return self.read_bytes(*parts).decode()

    def read_json(self, *parts: str, default: Any = None) -> Any:
        try:
            return json.loads(self.read_bytes(*parts))
        except (FileNotFoundError, ValueError):
            return default

    def write_bytes(self, data: bytes | str, *parts: str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        if not self.remote:
            write_atomic(self.path(*parts), raw)
            return
        with self.fs.open_output_stream(self.path(*parts)) as f:  # one object: atomic
            f.write(raw)

    def write_json(self, obj: Any, *parts: str) -> None:
        from ..spec.io import to_json

        self.write_bytes(to_json(obj), *parts)

    def delete(self, *parts: str) -> None:
        import pyarrow.fs as pafs

        info = self.fs.get_file_info(self.path(*parts))
        if info.type == pafs.FileType.Directory:
            self.fs.delete_dir(self.path(*parts))
        elif info.type == pafs.FileType.File:
            self.fs.delete_file(self.path(*parts))

    # --- the sweep ----------------------------------------------------------------------------

    def read_sweep(self) -> dict[str, Any]:
        sweep = self.read_json(SWEEP_FILE)
        if sweep is None:
            raise ExperimentError(f"no sweep at {self} (no {SWEEP_FILE})")
        return sweep

    def has_ray_state(self) -> bool:
        return self.exists(RAY_TUNER_FILE)

    def ray_storage(self) -> tuple[str, Any]:
        """(storage_path, storage_filesystem) for Ray's RunConfig: the parent folder, and the
        filesystem for a remote one (None: Ray's own local handling)."""
        parent = self.root.rstrip("/").rsplit("/", 1)[0]
        return parent, (self.fs if self.remote else None)

    def ray_states(self) -> list[str]:
        """Ray's experiment snapshots (experiment_state-*.json), newest last by name."""
        return sorted(n for n, is_dir in self.listdir() if not is_dir
                      and n.startswith(RAY_STATE_PREFIX) and n.endswith(".json"))

    # --- listing ------------------------------------------------------------------------------

    def listdir(self, *parts: str) -> list[tuple[str, bool]]:
        """(name, is_dir) of the entries directly under a folder of the experiment."""
        import pyarrow.fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.path(*parts)))
        except (FileNotFoundError, OSError):
            return []
        return [(i.base_name, i.type == pafs.FileType.Directory) for i in infos]

    def trials(self) -> list[str]:
        """Trial folder names: those holding our run.json or Ray's params.json."""
        import pyarrow.fs as pafs

        try:
            infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True))
        except (FileNotFoundError, OSError):
            return []
        found = set()
        for i in infos:
            rel = i.path[len(self.root):].strip("/").split("/")
            if len(rel) == 2 and rel[1] in (RUN_FILE, RAY_PARAMS_FILE):
                found.add(rel[0])
        return sorted(found)

    def checkpoints(self, trial: str) -> list[str]:
        """Checkpoint folder names of a trial, oldest first."""
        return sorted(n for n, is_dir in self.listdir(trial)
                      if is_dir and n.startswith(RAY_CHECKPOINT_PREFIX))

    def fetch_checkpoint(self, trial: str, name: str | None = None,
                         dest: Path | None = None) -> Path:
        """A trial's checkpoint (the latest unless named) as a local folder."""
        names = self.checkpoints(trial)
        if not names:
            raise ExperimentError(f"trial {trial!r} of {self} has no checkpoint "
                                  f"({RAY_CHECKPOINT_PREFIX}*/{CHECKPOINT_FILE})")
        name = name or names[-1]
        if not self.remote:
            return Path(self.path(trial, name))
        dest = dest or Path(tempfile.mkdtemp(prefix="ta-ckpt-"))
        self.download_dir(dest, trial, name)
        return dest

    def has_outcome(self, trial: str) -> bool:
        return self.exists(trial, OUTCOME_FILE)

    # --- folders and tables -------------------------------------------------------------------

    def upload_dir(self, local: Path, *parts: str) -> None:
        """Copy a local folder into the experiment (the tokenizer, a report)."""
        for f in sorted(p for p in Path(local).rglob("*") if p.is_file()):
            self.write_bytes(f.read_bytes(), *parts, *f.relative_to(local).parts)

    def download_dir(self, dest: Path, *parts: str) -> Path:
        """Copy a folder of the experiment to `dest` (created)."""
        import pyarrow.fs as pafs

        base = self.path(*parts)
        dest.mkdir(parents=True, exist_ok=True)
        for i in self.fs.get_file_info(pafs.FileSelector(base, recursive=True)):
            if i.type == pafs.FileType.File:
                rel = i.path[len(base):].strip("/")
                target = dest / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                with self.fs.open_input_stream(i.path) as src:
                    data = src.read()
                self.bytes_read += len(data)
                target.write_bytes(data)
        return dest

    def write_table(self, name: str, frame) -> list[str]:
        """`<name>.parquet` and `<name>.csv`."""
        import io

        written = []
        for ext in ("parquet", "csv"):
            buf = io.BytesIO()
            getattr(frame, f"to_{ext}")(buf, index=False)
            self.write_bytes(buf.getvalue(), f"{name}.{ext}")
            written.append(f"{name}.{ext}")
        return written

    def read_table(self, name: str):
        import io

        import pandas as pd

        return pd.read_parquet(io.BytesIO(self.read_bytes(f"{name}.parquet")))


def as_experiment(source: Experiment | str | os.PathLike) -> Experiment:
    return source if isinstance(source, Experiment) else Experiment(source)


def open_experiment(storage: str | os.PathLike, name: str | None = None, *,
                    kind: str | None = None) -> Experiment:
    """An existing sweep in `storage`: `name`, or the newest (of `kind`) by the creation time
    its sweep.json records."""
    if name is not None:
        exp = Experiment(join(storage, name))
        if not exp.exists(SWEEP_FILE):
            raise ExperimentError(f"no sweep {name!r} in {redact(str(storage))!r} (no "
                                  f"{SWEEP_FILE} yet: a submitted sweep writes it once its "
                                  "driver has started)")
        return exp
    root = Experiment(storage)
    found = []
    for entry, is_dir in root.listdir():
        sweep = root.read_json(entry, SWEEP_FILE) if is_dir else None
        if sweep and (kind is None or sweep.get("kind") == kind):
            found.append((str(sweep.get("created", "")), entry))
    if not found:
        what = f"{kind} experiment" if kind else "sweep"
        raise ExperimentError(f"no {what} in {redact(str(storage))!r}")
    return Experiment(join(storage, max(found)[1]))


def new_experiment(storage: str | os.PathLike, name: str) -> Experiment:
    """A sweep folder for a new sweep: refused if `name` already holds one."""
    if not name or "/" in name or name.startswith("."):
        raise ExperimentError(f"--name={name!r} must be a plain folder name")
    exp = Experiment(join(storage, name))
    if exp.exists(SWEEP_FILE) or (exp.local_dir is not None and exp.local_dir.exists()
                                  and any(exp.local_dir.iterdir())):
        raise ExperimentError(f"experiment {exp} already exists; add --resume to continue it, "
                              "or choose another --name")
    return exp
