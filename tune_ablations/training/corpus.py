"""Corpora as lists of documents, and the document-level train/validation split.

Design choices:
- Three sources behind one interface: the embedded corpora (CPython's documentation prose and
  the standard library's docstrings, read with `ast`, never imported), the user's local files,
  and the Hugging Face Hub (streamed; a clear error when unreachable).
- Documents are split into train/validation *before* any windowing. The reference split stride-1
  windows at random, so nearly every validation window overlapped training text. Documents that
  share a 12-word passage are grouped first (some pydoc topics repeat others verbatim), and a
  whole group lands on one side.
"""

from __future__ import annotations

import ast
import hashlib
import os
import sys
import time
from pathlib import Path

from ..spec.config import EMBEDDED_CORPORA, HUB_PREFIX, DataConfig

SHINGLE_WORDS = 12
_LOCAL_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
_STDLIB_SKIP = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "ensurepip",
                "tkinter", "__pycache__", "dist-packages"}


class CorpusError(ValueError):
    """A corpus that cannot be loaded or used: the message says which and why."""


# --- corpora ---------------------------------------------------------------------------------

def load_pydoc_documents() -> list[str]:
    """CPython's own documentation prose (`pydoc_data.topics`), one document per topic."""
    from pydoc_data.topics import topics

    return [topics[k].strip() for k in sorted(topics) if topics[k].strip()]


def load_stdlib_documents() -> list[str]:
    """Docstrings of the standard library's modules (parsed with `ast`, never imported), one
    document per module."""
    import sysconfig

    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _STDLIB_SKIP and d[0] != ".")
        for fn in sorted(f for f in filenames if f.endswith(".py")):
            try:
                tree = ast.parse(Path(dirpath, fn).read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            nodes = [tree] + [n for n in ast.walk(tree) if isinstance(
                n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
            parts = [d for n in nodes if (d := ast.get_docstring(n)) and len(d) > 40]
            if parts:
                docs.append("\n\n".join(parts))
    return docs


def _load_text_file(path: Path) -> list[str]:
    blocks = path.read_text(encoding="utf-8", errors="replace").split("\n\n")
    return [b.strip() for b in blocks if b.strip()]


def _texts_from_dataset(ds, limit: int, source: str) -> list[str]:
    """First `limit` (0: all) non-empty `text` values of a datasets (streaming) dataset."""
    cols = getattr(ds, "column_names", None) or getattr(ds, "features", {}) or {}
    if cols and "text" not in cols:
        raise CorpusError(f"corpus={source!r} has no 'text' column (columns: {list(cols)})")
    out, t_last = [], time.perf_counter()
    for row in ds:
        if "text" not in row:
            raise CorpusError(f"corpus={source!r} has no 'text' column (columns: {list(row)})")
        text = (row["text"] or "").strip()
        if text:
            out.append(text)
            if limit and len(out) >= limit:
                break
            if time.perf_counter() - t_last > 5:  # streaming can take minutes: say so
                print(f"event=progress what=stream corpus={source} documents={len(out)}"
                      f"{f'/{limit}' if limit else ''}", file=sys.stderr, flush=True)
                t_last = time.perf_counter()
    return out


def load_local_documents(path: Path, limit: int = 0) -> list[str]:
    """`.txt`: a folder holds one document per file; a single file holds one document per
    blank-line-separated block. `.jsonl`/`.json`/`.parquet`: a `text` column, through
    `datasets.load_dataset`."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in _LOCAL_SUFFIXES)
        if not files:
            raise CorpusError(f"corpus={str(path)!r}: folder has no {'/'.join(_LOCAL_SUFFIXES)} "
                              "files")
        if all(p.suffix == ".txt" for p in files):
            docs = [p.read_text(encoding="utf-8", errors="replace").strip() for p in files]
            docs = [d for d in docs if d]
            return docs[:limit] if limit else docs
    else:
        files = [path]
    if all(p.suffix == ".txt" for p in files):
        docs = _load_text_file(path)
        return docs[:limit] if limit else docs
    kinds = {p.suffix for p in files}
    if len(kinds) > 1:
        raise CorpusError(f"corpus={str(path)!r} mixes file types {sorted(kinds)}; use one")
    import datasets

    builder = "parquet" if kinds == {".parquet"} else "json"
    old = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # we report the error, once
    try:
        ds = datasets.load_dataset(builder, data_files=[str(p) for p in files], split="train",
                                   streaming=True)
        return _texts_from_dataset(ds, limit, str(path))
    except CorpusError:
        raise
    except Exception as exc:  # malformed JSON lines, a file that is not parquet, ...
        raise CorpusError(f"corpus={str(path)!r} could not be read as {builder} with a 'text' "
                          f"column ({type(exc).__name__}: {str(exc)[:160]})") from None
    finally:
        datasets.logging.set_verbosity(old)


def hub_reachable(spec: str, timeout: float = 3.0) -> None:
    """Fail at once, naming the alternatives, when the Hub cannot be reached (offline mode, or
    no connection), instead of after a minute of client retries."""
    import socket

    alternatives = (f"use an embedded corpus ({', '.join(EMBEDDED_CORPORA)}) or a local path "
                    "(.txt, .jsonl, .json, .parquet)")
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes") or \
            os.environ.get("HF_DATASETS_OFFLINE", "0").lower() in ("1", "true", "yes"):
        raise CorpusError(f"corpus={spec!r} needs the Hugging Face Hub, but HF_HUB_OFFLINE is "
                          f"set; {alternatives}")
    from urllib.parse import urlsplit

    url = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise CorpusError(f"corpus={spec!r}: the Hugging Face Hub ({host}) is not reachable "
                          f"({type(exc).__name__}); {alternatives}") from None


def load_hub_documents(spec: str, limit: int, **load_kwargs) -> list[str]:
    """`hf:<dataset>/<config>` streamed from the Hugging Face Hub, first `limit` documents.
    `load_kwargs` reach `datasets.load_dataset` (tests point `data_files` at local files)."""
    name = spec[len(HUB_PREFIX):]
    repo, _, config = name.rpartition("/") if name.count("/") >= 2 else (name, "", None)
    import datasets

    if not load_kwargs:
        hub_reachable(spec)
    try:
        ds = datasets.load_dataset(repo, config or None, split="train", streaming=True,
                                   **load_kwargs)
        return _texts_from_dataset(ds, limit, spec)
    except CorpusError:
        raise
    except Exception as exc:  # network, auth and missing-dataset errors all end the same way
        raise CorpusError(
            f"corpus={spec!r}: could not load from the Hugging Face Hub ({type(exc).__name__}: "
            f"{str(exc)[:200]}). Check the network and the name, or use an embedded corpus "
            f"({', '.join(EMBEDDED_CORPORA)}) or a local path.") from None


def load_documents(cfg: DataConfig) -> list[str]:
    """The corpus's documents, first `num_documents` (0: all)."""
    n = cfg.num_documents
    if cfg.corpus == "pydoc":
        docs = load_pydoc_documents()
    elif cfg.corpus == "stdlib":
        docs = load_stdlib_documents()
    elif cfg.corpus == "embedded":
        docs = load_pydoc_documents() + load_stdlib_documents()
    elif cfg.corpus.startswith(HUB_PREFIX):
        return load_hub_documents(cfg.corpus, n)
    else:
        path = Path(cfg.corpus).expanduser()
        if not path.exists():
            raise CorpusError(f"corpus={cfg.corpus!r}: no such file or folder (expected one of "
                              f"{', '.join(EMBEDDED_CORPORA)}, a local path, or 'hf:<dataset>')")
        if path.is_file() and path.suffix not in _LOCAL_SUFFIXES:
            raise CorpusError(f"corpus={cfg.corpus!r}: file type {path.suffix!r} must be one of "
                              f"{', '.join(_LOCAL_SUFFIXES)}")
        docs = load_local_documents(path, n)
    docs = docs[:n] if n else docs
    if not docs:
        raise CorpusError(f"corpus={cfg.corpus!r} is empty: no non-blank documents")
    return docs


def corpus_identity(cfg: DataConfig) -> dict:
    """What the cache key depends on: for files, their paths, sizes and mtimes (cheap to read)."""
    if cfg.corpus in EMBEDDED_CORPORA:
        return {"embedded": cfg.corpus, "python": sys.version.split()[0]}
    if cfg.corpus.startswith(HUB_PREFIX):
        return {"hub": cfg.corpus}
    path = Path(cfg.corpus).expanduser().resolve()
    if not path.exists():
        raise CorpusError(f"corpus={cfg.corpus!r}: no such file or folder (expected one of "
                          f"{', '.join(EMBEDDED_CORPORA)}, a local path, or 'hf:<dataset>')")
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return {"files": [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]}


# --- document-level split --------------------------------------------------------------------

def shingles(doc: str, shingle_words: int = SHINGLE_WORDS) -> set[int]:
    """Hashes of every `shingle_words`-word passage of `doc` (the whole of a shorter one): two
    documents share text when their sets meet."""
    words = doc.split()
    return {hash(" ".join(words[j:j + shingle_words]))
            for j in range(max(1, len(words) - shingle_words + 1))}


def group_documents(docs: list[str], shingle_words: int = SHINGLE_WORDS) -> list[int]:
    """Group id per document: documents sharing any `shingle_words`-word passage share a group."""
    parent = list(range(len(docs)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[int, int] = {}
    for i, doc in enumerate(docs):
        for h in shingles(doc, shingle_words):
            k = owner.setdefault(h, i)
            if k != i:
                ri, rk = find(i), find(k)
                if ri != rk:
                    parent[ri] = rk
    return [find(i) for i in range(len(docs))]


def split_documents(docs: list[str], val_fraction: float, seed: int = 0
                    ) -> tuple[list[str], list[str]]:
    """(train, val) by document groups, val holding about `val_fraction` of the characters."""
    groups: dict[int, list[int]] = {}
    for i, g in enumerate(group_documents(docs)):
        groups.setdefault(g, []).append(i)
    if len(groups) < 2:
        raise CorpusError(f"corpus has {len(docs)} document(s) in {len(groups)} group(s) of "
                          "shared text: need at least 2 to split train/validation by document")
    # Deterministic order independent of Python's hash randomisation: a digest of the group.
    def order(members: list[int]) -> str:
        return hashlib.sha256(f"{seed}:{docs[members[0]][:200]}".encode()).hexdigest()

    target = val_fraction * sum(len(d) for d in docs)
    val_idx: set[int] = set()
    size = 0
    ordered = sorted(groups.values(), key=order)
    for members in ordered:
        g_size = sum(len(docs[i]) for i in members)
        if size + g_size <= target * 1.05:  # a group too big for the budget stays in train
            val_idx.update(members)
            size += g_size
        if size >= target:
            break
    if not val_idx:  # every group exceeds the budget: hold out the smallest
        val_idx.update(min(ordered, key=lambda m: sum(len(docs[i]) for i in m)))
    if len(val_idx) == len(docs):
        raise CorpusError(f"val_fraction={val_fraction} leaves no training documents")
    train = [d for i, d in enumerate(docs) if i not in val_idx]
    val = [d for i, d in enumerate(docs) if i in val_idx]
    return train, val
