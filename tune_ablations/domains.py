"""Extra evaluation domains (`eval_data = "pydoc,stdlib,/path/corpus"`): held-out text from other
sources, scored with the run's own tokenizer, so a conclusion can be checked for generality.

Design choices:
- A domain that is the training corpus, or a source inside it (`pydoc` and `stdlib` inside
  `embedded`), is scored on the training split's *validation* documents from that source only:
  never on text the model trained on. Another corpus is scored on its own validation split.
- Token ids are cached per (run corpus cache key, domain), built in the driver before trials
  start; trials only read them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .config import DataConfig
from .corpus import (
    CorpusError,
    load_documents,
    load_pydoc_documents,
    load_stdlib_documents,
    split_documents,
)
from .data import TokenData, load_tokenizer, val_windows
from .runtime import cache_root

SOURCES = {"pydoc": load_pydoc_documents, "stdlib": load_stdlib_documents}


def domain_names(cfg: DataConfig) -> list[tuple[str, str]]:
    """(label, corpus) of every extra domain: labels are short and unique."""
    out: list[tuple[str, str]] = []
    for corpus in (c.strip() for c in cfg.eval_data.split(",") if c.strip()):
        label = corpus if "/" not in corpus else Path(corpus).stem or corpus.rsplit("/", 1)[-1]
        label = label.replace("hf:", "").replace("@", "_")
        if label in (name for name, _ in out):
            label = f"{label}{len(out)}"
        out.append((label, corpus))
    return out


def _held_out_texts(cfg: DataConfig, corpus: str) -> list[str]:
    same = DataConfig(**{**cfg.__dict__, "eval_data": ""})
    if corpus == cfg.corpus or (cfg.corpus == "embedded" and corpus in SOURCES):
        _, val = split_documents(load_documents(same), cfg.val_fraction, cfg.split_seed)
        if corpus == cfg.corpus:
            return val
        source = set(SOURCES[corpus]())
        return [d for d in val if d in source]
    other = DataConfig(**{**same.__dict__, "corpus": corpus, "num_documents": 0})
    _, val = split_documents(load_documents(other), cfg.val_fraction, cfg.split_seed)
    return val


def domain_tokens(cfg: DataConfig, data: TokenData, corpus: str) -> np.ndarray:
    """Held-out token ids of `corpus`, in the run's tokenizer (cached)."""
    key = hashlib.sha256(json.dumps([data.key, corpus]).encode()).hexdigest()[:16]
    path = cache_root() / "domains" / f"{key}.npy"
    if path.exists():
        return np.load(path, mmap_mode="r")
    texts = _held_out_texts(cfg, corpus)
    if not texts:
        raise CorpusError(f"eval_data={corpus!r} has no held-out documents to score")
    tok = load_tokenizer(data.path / "tokenizer")
    ids: list[int] = []
    for enc in tok.encode_batch(texts, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(data.eos_id)
    arr = np.asarray(ids, dtype=data.train.dtype)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
    np.save(tmp, arr)
    os.replace(tmp, path)
    return arr


def domain_windows(cfg: DataConfig, data: TokenData, seq_len: int, eval_tokens: int) -> dict:
    """label -> evaluation windows of each extra domain (the same sizing as the main set)."""
    out = {}
    for label, corpus in domain_names(cfg):
        tokens = domain_tokens(cfg, data, corpus)
        check_fits_tokens(tokens, seq_len, f"eval_data {corpus!r}")
        out[label] = val_windows(tokens, seq_len, eval_tokens)
    return out


def check_fits_tokens(tokens, seq_len: int, what: str) -> None:
    if len(tokens) < seq_len + 1:
        raise ValueError(f"{what} has {len(tokens)} held-out tokens, fewer than one window of "
                         f"seq_len + 1 = {seq_len + 1}")
