"""Corpora, tokenizer, document-level split, on-disk token cache, batches.

Design choices:
- Documents are split into train/validation *before* any windowing. The reference split stride-1
  windows at random, so nearly every validation window overlapped training text. Documents that
  share a 12-word passage are grouped first (some pydoc topics repeat others verbatim), and a
  whole group lands on one side.
- The BPE tokenizer is trained on the training split only.
- Token ids are cached once per (corpus, documents, tokenizer, split) under the cache directory,
  as .npy arrays plus a manifest written last; a build happens in a temp folder renamed into
  place, so concurrent trials never see a half-written cache, and a cache whose files do not
  match their manifest is rebuilt.
- Validation is the first `eval_tokens` of the validation split tiled into seq_len windows:
  every trial is scored on the same text, whatever its batch size.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import EMBEDDED_CORPORA, HUB_PREFIX, DataConfig

CACHE_VERSION = 1
EOS = "<|endoftext|>"
SHINGLE_WORDS = 12
_LOCAL_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
_STDLIB_SKIP = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "ensurepip",
                "tkinter", "__pycache__", "dist-packages"}


class CorpusError(ValueError):
    """A corpus that cannot be loaded or used: the message says which and why."""


def cache_root() -> Path:
    return Path(os.environ.get("TUNE_ABLATIONS_CACHE", Path.home() / ".cache" / "tune_ablations"))


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
    out = []
    for row in ds:
        if "text" not in row:
            raise CorpusError(f"corpus={source!r} has no 'text' column (columns: {list(row)})")
        text = (row["text"] or "").strip()
        if text:
            out.append(text)
            if limit and len(out) >= limit:
                break
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
    ds = datasets.load_dataset(builder, data_files=[str(p) for p in files], split="train",
                               streaming=True)
    return _texts_from_dataset(ds, limit, str(path))


def load_hub_documents(spec: str, limit: int, **load_kwargs) -> list[str]:
    """`hf:<dataset>/<config>` streamed from the Hugging Face Hub, first `limit` documents.
    `load_kwargs` reach `datasets.load_dataset` (tests point `data_files` at local files)."""
    name = spec[len(HUB_PREFIX):]
    repo, _, config = name.rpartition("/") if name.count("/") >= 2 else (name, "", None)
    import datasets

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
        words = doc.split()
        for j in range(max(1, len(words) - shingle_words + 1)):
            h = hash(" ".join(words[j:j + shingle_words]))
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


# --- tokenizer -------------------------------------------------------------------------------

def train_bpe(texts: list[str], vocab_size: int, out_dir: Path) -> None:
    """Byte-level BPE trained on `texts`, saved so `AutoTokenizer.from_pretrained(out_dir)`
    loads it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS).save_pretrained(str(out_dir))


def fetch_tokenizer(name: str, out_dir: Path) -> None:
    """A named Hugging Face tokenizer, saved locally so trials never touch the network."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(name)
    except Exception as exc:
        raise CorpusError(f"tokenizer={name!r}: could not load ({type(exc).__name__}: "
                          f"{str(exc)[:200]}). Use tokenizer='bpe' to train one offline."
                          ) from None
    tok.save_pretrained(str(out_dir))


def token_byte_lengths(tokenizer) -> np.ndarray:
    """UTF-8 bytes each token id stands for (0 for special tokens), for bits per byte."""
    from tokenizers import pre_tokenizers

    byte_of = {c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    vocab = tokenizer.get_vocab()
    special = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
    out = np.zeros(tokenizer.get_vocab_size(), dtype=np.int32)
    for piece, idx in vocab.items():
        if idx >= len(out) or piece in special:
            continue
        if all(c in byte_of for c in piece):  # byte-level: one char per byte
            out[idx] = len(piece)
        else:
            out[idx] = len(tokenizer.decode([idx]).encode("utf-8"))
    return out


def load_tokenizer(path: Path):
    """The fast `tokenizers.Tokenizer` saved in a cache folder (no transformers import)."""
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(path) / "tokenizer.json"))


# --- cache -----------------------------------------------------------------------------------

def cache_key(cfg: DataConfig) -> str:
    ident = {"v": CACHE_VERSION, "corpus": corpus_identity(cfg), "n": cfg.num_documents,
             "tokenizer": cfg.tokenizer, "val_fraction": cfg.val_fraction,
             "split_seed": cfg.split_seed, "shingle": SHINGLE_WORDS}
    if cfg.tokenizer == "bpe":
        ident["vocab_size"] = cfg.vocab_size
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_FILES = ("train.npy", "val.npy", "token_bytes.npy", "tokenizer/tokenizer.json")


def _valid_cache(folder: Path) -> dict | None:
    """The manifest if every file matches it, else None."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        for name in _FILES:
            if _digest(folder / name) != manifest["digests"][name]:
                return None
        return manifest
    except (OSError, ValueError, KeyError):
        return None


@dataclass
class TokenData:
    """A prepared corpus: token streams and what the trainer needs to know about them."""
    train: np.ndarray
    val: np.ndarray
    token_bytes: np.ndarray
    vocab_size: int
    eos_id: int
    path: Path
    manifest: dict

    @property
    def key(self) -> str:
        return self.manifest["key"]

    def facts(self, tokens_budget: int | None = None) -> dict:
        """Documents, tokens per split, vocab size and the epochs a budget implies."""
        m = self.manifest
        out = {k: m[k] for k in ("corpus", "train_documents", "val_documents", "train_tokens",
                                 "val_tokens", "vocab_size", "tokenizer", "key")}
        if tokens_budget is not None:
            out["epochs"] = tokens_budget / m["train_tokens"]
        return out


def _build(cfg: DataConfig, key: str, folder: Path) -> None:
    docs = load_documents(cfg)
    train_docs, val_docs = split_documents(docs, cfg.val_fraction, cfg.split_seed)
    tok_dir = folder / "tokenizer"
    if cfg.tokenizer == "bpe":
        train_bpe(train_docs, cfg.vocab_size, tok_dir)
    else:
        fetch_tokenizer(cfg.tokenizer, tok_dir)
    tok = load_tokenizer(tok_dir)
    eos_id = tok.token_to_id(EOS)
    if eos_id is None:  # a named tokenizer with another end-of-text token
        eos_id = json.loads((tok_dir / "tokenizer_config.json").read_text()).get("eos_token_id",
                                                                                   0) or 0
    vocab = tok.get_vocab_size()
    dtype = np.uint16 if vocab <= 65535 else np.uint32

    def encode(texts: list[str]) -> np.ndarray:
        ids: list[int] = []
        for enc in tok.encode_batch(texts, add_special_tokens=False):
            ids.extend(enc.ids)
            ids.append(eos_id)
        return np.asarray(ids, dtype=dtype)

    train, val = encode(train_docs), encode(val_docs)
    np.save(folder / "train.npy", train)
    np.save(folder / "val.npy", val)
    np.save(folder / "token_bytes.npy", token_byte_lengths(tok))
    manifest = {
        "key": key, "version": CACHE_VERSION, "corpus": cfg.corpus, "tokenizer": cfg.tokenizer,
        "num_documents": cfg.num_documents, "val_fraction": cfg.val_fraction,
        "split_seed": cfg.split_seed, "vocab_size": vocab, "eos_id": int(eos_id),
        "train_documents": len(train_docs), "val_documents": len(val_docs),
        "train_tokens": int(len(train)), "val_tokens": int(len(val)),
        "train_chars": sum(map(len, train_docs)), "val_chars": sum(map(len, val_docs)),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "digests": {name: _digest(folder / name) for name in _FILES},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))  # written last


def prepare_data(cfg: DataConfig, cache_dir: Path | None = None, *, log=print) -> TokenData:
    """Load the token cache for `cfg`, building it first if missing or corrupt."""
    root = Path(cache_dir) if cache_dir else cache_root()
    key = cache_key(cfg)
    folder = root / key
    manifest = _valid_cache(folder)
    if manifest is None:
        if folder.exists():
            warnings.warn(f"token cache {folder} does not match its manifest; rebuilding",
                          stacklevel=2)
            shutil.rmtree(folder, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-{uuid.uuid4().hex[:6]}-", dir=root))
        t0 = time.perf_counter()
        try:
            _build(cfg, key, tmp)
            try:
                os.rename(tmp, folder)  # atomic; fails if another process won the race
            except OSError:
                if _valid_cache(folder) is None:
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        manifest = _valid_cache(folder)
        if manifest is None:
            raise CorpusError(f"token cache {folder} is invalid right after building it")
        log(f"event=data_cached key={key} corpus={cfg.corpus} "
            f"train_tokens={manifest['train_tokens']} val_tokens={manifest['val_tokens']} "
            f"seconds={time.perf_counter() - t0:.1f}")
    data = TokenData(
        train=np.load(folder / "train.npy", mmap_mode="r"),
        val=np.load(folder / "val.npy", mmap_mode="r"),
        token_bytes=np.load(folder / "token_bytes.npy"),
        vocab_size=manifest["vocab_size"], eos_id=manifest["eos_id"], path=folder,
        manifest=manifest)
    return data


def check_fits(data: TokenData, seq_len: int) -> None:
    """Both splits must hold at least one window of seq_len + 1 tokens."""
    for split in ("train", "val"):
        n = len(getattr(data, split))
        if n < seq_len + 1:
            raise CorpusError(f"corpus={data.manifest['corpus']!r}: {split} split has {n} tokens, "
                              f"smaller than one window of seq_len + 1 = {seq_len + 1}")


# --- batches ---------------------------------------------------------------------------------

def sample_batch(tokens: np.ndarray, batch_size: int, seq_len: int, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of seq_len + 1 tokens: inputs and next-token targets, each (B, T) int64."""
    starts = torch.randint(0, len(tokens) - seq_len, (batch_size,), generator=generator).numpy()
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    w = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))  # (B, T + 1)
    return w[:, :-1], w[:, 1:]


def val_windows(tokens: np.ndarray, seq_len: int, eval_tokens: int) -> torch.Tensor:
    """The first `eval_tokens` validation tokens as non-overlapping windows (N, seq_len + 1):
    each scored token appears once, and every trial with this seq_len sees the same ones."""
    n = max(1, min(eval_tokens, len(tokens) - 1) // seq_len)
    idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    return torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))
