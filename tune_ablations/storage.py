"""Where results live: a local folder, or a URI that pyarrow understands (`s3://`, `gs://`,
`file://`), for sweeps that outgrow one machine.

Design choices:
- Ray persists trials to the URI itself (`storage_path` + `storage_filesystem`). Everything this
  package reads or writes (sweep.json, the tables, the study, the report) works on a local
  mirror of the experiment under the cache folder, synced with the URI: downloaded before it is
  read (each trial's files and only its latest checkpoint), uploaded after it is written.
- The filesystem comes from pyarrow's `FileSystem.from_uri`, so credentials and endpoints come
  from the usual environment (`AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, ...); nothing secret is
  written anywhere.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def is_uri(storage: str | os.PathLike) -> bool:
    return "://" in str(storage)


def filesystem(uri: str):
    """(pyarrow filesystem, path inside it) for a URI."""
    import pyarrow.fs as pafs

    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # an unknown scheme, bad credentials configuration, ...
        raise ValueError(f"--storage {uri!r} is not a storage URI pyarrow can open "
                         f"({type(exc).__name__}: {str(exc)[:160]})") from None


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *parts])


def mirror(uri: str) -> Path:
    """The local folder that mirrors `uri` (stable per URI)."""
    from .data import cache_root

    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return cache_root() / "remote" / digest / uri.rstrip("/").rsplit("/", 1)[-1]


def exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def list_dirs(uri: str) -> list[tuple[str, float]]:
    """(name, modification time) of the folders directly under `uri`."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return [(i.base_name, i.mtime.timestamp() if i.mtime else 0.0) for i in infos
            if i.type == pafs.FileType.Directory]


def upload(local: Path, uri: str) -> None:
    """Copy a local file or folder to `uri`."""
    import pyarrow.fs as pafs

    fs, path = filesystem(uri)
    if local.is_dir():
        pafs.copy_files(str(local), path, source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=fs)
        return
    with open(local, "rb") as src, fs.open_output_stream(path) as dst:
        dst.write(src.read())


def download(uri: str, local: Path | None = None) -> Path:
    """Mirror an experiment: every file except checkpoints, plus each trial's latest
    checkpoint. Returns the local folder."""
    import pyarrow.fs as pafs

    fs, root = filesystem(uri)
    local = local or mirror(uri)
    if fs.get_file_info(root).type == pafs.FileType.NotFound:
        raise ValueError(f"experiment {uri!r} does not exist")
    infos = [i for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
             if i.type == pafs.FileType.File]
    latest: dict[str, str] = {}
    for i in infos:
        rel = i.path[len(root):].lstrip("/")
        parts = rel.split("/")
        if len(parts) >= 3 and parts[1].startswith("checkpoint_"):
            latest[parts[0]] = max(latest.get(parts[0], ""), parts[1])
    for i in infos:
        rel = i.path[len(root):].lstrip("/")
        parts = rel.split("/")
        if len(parts) >= 3 and parts[1].startswith("checkpoint_") and \
                parts[1] != latest[parts[0]]:
            continue
        target = local / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(i.path) as src:
            target.write_bytes(src.read())
    return local
