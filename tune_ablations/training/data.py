"""Tokenizer, on-disk token cache, and what a run reads: token streams, the tokenizer itself
and batches over a corpus's train/validation documents.

Design choices:
- The BPE tokenizer is trained on the training split only.
- Token ids are cached once per (corpus, documents, tokenizer, split) under the cache directory,
  as .npy arrays plus a manifest written last; a build happens in a temp folder renamed into
  place, so concurrent builds never see a half-written cache, and a cache whose files do not
  match their manifest is rebuilt.
- `TokenData` carries everything a run reads, the tokenizer (as JSON) and the extra evaluation
  domains included: a sweep prepares it once in the driver and hands it to trials on any host,
  which never rebuild a tokenizer or read the driver's disk (`data_id` names it without the
  filesystem).
- The validation split's documents alternate between two disjoint halves: `select`, scored by
  every evaluation (windows spread evenly over it), and `holdout`, which selection never sees
  (a search's best trial is re-evaluated there). No window of one overlaps a document of the
  other.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..spec.config import DataConfig
from ..spec.names import MANIFEST_FILE, TOKENIZER_JSON
from .corpus import SHINGLE_WORDS, CorpusError, corpus_identity, load_documents, split_documents
from .runtime import cache_root

CACHE_VERSION = 2  # 2: manifests record file sizes (O(1) checks on a hit)
EOS = "<|endoftext|>"


# --- tokenizer -------------------------------------------------------------------------------

def legacy_merges(tokenizer_json: str) -> str:
    """A BPE tokenizer.json with its merges in the "a b" form every tokenizers version reads
    (0.20+ writes ["a", "b"] pairs, which tokenizers 0.19 rejects); unchanged when a merge
    holds a space (only the pair form can say it) or the model is not BPE."""
    data = json.loads(tokenizer_json)
    model = data.get("model") or {}
    merges = model.get("merges")
    if model.get("type") != "BPE" or not merges or isinstance(merges[0], str):
        return tokenizer_json
    if any(" " in part for pair in merges for part in pair):
        return tokenizer_json
    model["merges"] = [" ".join(pair) for pair in merges]
    return json.dumps(data, ensure_ascii=False, indent=2)


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
    path = out_dir / TOKENIZER_JSON  # stored in the form every supported tokenizers reads
    path.write_text(legacy_merges(path.read_text(encoding="utf-8")), encoding="utf-8")


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


def load_tokenizer(source: str | Path):
    """A fast `tokenizers.Tokenizer` from its JSON text or from a folder holding
    tokenizer.json (no transformers import)."""
    from tokenizers import Tokenizer

    if not (isinstance(source, str) and source.lstrip().startswith("{")):
        source = (Path(source) / TOKENIZER_JSON).read_text(encoding="utf-8")
    return Tokenizer.from_str(legacy_merges(source))  # a cache written by a newer tokenizers


# --- cache -----------------------------------------------------------------------------------

def cache_key(cfg: DataConfig) -> str:
    ident = {"v": CACHE_VERSION, "corpus": corpus_identity(cfg), "n": cfg.num_documents,
             "tokenizer": cfg.tokenizer, "val_fraction": cfg.val_fraction,
             "split_seed": cfg.split_seed, "shingle": SHINGLE_WORDS}
    if cfg.tokenizer == "bpe":
        ident["vocab_size"] = cfg.vocab_size
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def data_id(cfg: DataConfig) -> str:
    """A name for the data a run reads, from its config alone (no filesystem: a trial on
    another host computes the same one)."""
    ident = {k: getattr(cfg, k) for k in ("corpus", "tokenizer", "vocab_size", "num_documents",
                                          "val_fraction", "split_seed", "eval_data")}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _digest(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_FILES = ("train.npy", "val.npy", "token_bytes.npy", "tokenizer/tokenizer.json")


def valid_cache(folder: Path, verify: bool = False) -> dict | None:
    """The manifest if every file matches it, else None. A hit checks what costs O(1) in the
    corpus size (the manifest, written last, and every file's size: a build killed mid-way
    fails it); `verify` also checks every file's digest (after a build, and on demand with
    `python -m tune_ablations.cache verify`)."""
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        for name in _FILES:
            if (folder / name).stat().st_size != manifest["sizes"][name]:
                return None
            if verify and _digest(folder / name) != manifest["digests"][name]:
                return None
        return manifest
    except (OSError, ValueError, KeyError):
        return None


@dataclass
class Domain:
    """An extra evaluation domain: held-out text of another source, in the run's tokenizer."""
    label: str
    """Short unique name (`val_loss@<label>`)."""
    corpus: str
    """The corpus it comes from."""
    tokens: np.ndarray
    """Token ids of the documents scored."""
    documents: int
    """Documents scored."""
    dropped: int
    """Documents left out: they are, or share a 12-word passage with, a training document."""
    total: int
    """Documents in the domain corpus."""
    in_validation: int = 0
    """Documents left out because they are, or share a 12-word passage with, a document of the
    main validation split (the check would otherwise compare that split with itself)."""

    def facts(self) -> dict:
        """What a run records of it (outcome.json's `domains`)."""
        return {"corpus": self.corpus, "documents": self.documents, "dropped": self.dropped,
                "in_validation": self.in_validation, "total": self.total}


@dataclass
class TokenData:
    """A prepared corpus: what a run reads, and what the trainer needs to know about it."""
    train: np.ndarray
    val: np.ndarray
    token_bytes: np.ndarray
    vocab_size: int
    eos_id: int
    manifest: dict
    tokenizer_json: str
    """The tokenizer (tokenizers JSON): samples and export need no cache folder."""
    path: Path | None = None
    """The cache folder it was read from (on the host that prepared it)."""
    domains: dict[str, Domain] = field(default_factory=dict)
    """label -> extra evaluation domain (see `domains.with_domains`)."""

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


class Progress:
    """Progress of long work: a tqdm bar on a terminal, else a `key=value` line at most every
    `every_s` seconds (logs stay readable). Streams without `isatty` (Ray's `Tee` inside a
    trial) count as logs."""

    def __init__(self, what: str, total: int, log=print, every_s: float = 5.0):
        self.what, self.total, self.log, self.every_s = what, max(1, total), log, every_s
        self.done, self.t0 = 0, time.perf_counter()
        self.last = self.t0
        self.bar = None
        if getattr(sys.stderr, "isatty", lambda: False)():
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=what, unit="doc", leave=False)

    def advance(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        if self.bar is not None:
            self.bar.update(n)
        elif now - self.last >= self.every_s:
            self.log(f"event=progress what={self.what} done={self.done} total={self.total} "
                     f"seconds={now - self.t0:.0f}")
            self.last = now

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _build(cfg: DataConfig, key: str, folder: Path, log=print) -> None:
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

    progress = Progress("tokenize", len(train_docs) + len(val_docs), log)

    def encode(texts: list[str]) -> np.ndarray:
        ids: list[int] = []
        for i in range(0, len(texts), 256):  # chunks, so long corpora show progress
            for enc in tok.encode_batch(texts[i:i + 256], add_special_tokens=False):
                ids.extend(enc.ids)
                ids.append(eos_id)
            progress.advance(len(texts[i:i + 256]))
        return np.asarray(ids, dtype=dtype)

    train, val = encode(train_docs), encode(val_docs)
    progress.close()
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
        "sizes": {name: (folder / name).stat().st_size for name in _FILES},
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))  # written last


def prepare_data(cfg: DataConfig, cache_dir: Path | None = None, *, log=print) -> TokenData:
    """Load the token cache for `cfg`, building it first if missing or corrupt."""
    root = Path(cache_dir) if cache_dir else cache_root()
    key = cache_key(cfg)
    folder = root / key
    manifest = valid_cache(folder)
    if manifest is None:
        if folder.exists():
            warnings.warn(f"token cache {folder} does not match its manifest; rebuilding",
                          stacklevel=2)
            shutil.rmtree(folder, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-{uuid.uuid4().hex[:6]}-", dir=root))
        t0 = time.perf_counter()
        try:
            _build(cfg, key, tmp, log)
            try:
                os.rename(tmp, folder)  # atomic; fails if another process won the race
            except OSError:
                if valid_cache(folder) is None:
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        manifest = valid_cache(folder, verify=True)  # the one full check, once per build
        if manifest is None:
            raise CorpusError(f"token cache {folder} is invalid right after building it")
        log(f"event=data_cached key={key} corpus={cfg.corpus} "
            f"train_tokens={manifest['train_tokens']} val_tokens={manifest['val_tokens']} "
            f"seconds={time.perf_counter() - t0:.1f}")
    return load_folder(folder, manifest)


STORED_FILES = (*_FILES, MANIFEST_FILE)
"""What a token cache folder holds: what an experiment stores to be resumed anywhere."""


def load_folder(folder: Path, manifest: dict | None = None) -> TokenData:
    """The token data of a valid cache folder (a cache entry, or one fetched from an
    experiment)."""
    manifest = manifest or valid_cache(folder)
    if manifest is None:
        raise CorpusError(f"token data in {folder} does not match its manifest")
    return TokenData(
        train=np.load(folder / "train.npy", mmap_mode="r"),
        val=np.load(folder / "val.npy", mmap_mode="r"),
        token_bytes=np.load(folder / "token_bytes.npy"),
        vocab_size=manifest["vocab_size"], eos_id=manifest["eos_id"], manifest=manifest,
        tokenizer_json=(folder / "tokenizer" / TOKENIZER_JSON).read_text(), path=folder)


def check_fits(data: TokenData, seq_len: int) -> None:
    """The training split and each half of the validation split hold at least one window of
    seq_len + 1 tokens."""
    for split, tokens in (("train", data.train),
                          *((f"val ({part})", val_part(data.val, data.eos_id, part))
                            for part in ("select", "holdout"))):
        if len(tokens) < seq_len + 1:
            raise CorpusError(f"corpus={data.manifest['corpus']!r}: {split} split has "
                              f"{len(tokens)} tokens, smaller than one window of seq_len + 1 = "
                              f"{seq_len + 1}")


# --- batches ---------------------------------------------------------------------------------

def sample_batch(tokens: np.ndarray, batch_size: int, seq_len: int, generator: torch.Generator
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of seq_len + 1 tokens: inputs and next-token targets, each (B, T) int64
    and contiguous: the layout a compiled step was built for (views into the (B, T + 1)
    windows have other strides, which made torch.compile build its graphs again inside the
    training clock)."""
    starts = torch.randint(0, len(tokens) - seq_len, (batch_size,), generator=generator).numpy()
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    w = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))  # (B, T + 1)
    return w[:, :-1].contiguous(), w[:, 1:].contiguous()


def val_part(tokens: np.ndarray, eos_id: int, part: str = "select") -> np.ndarray:
    """One half of the validation split by documents (each ends with `eos_id`): even-numbered
    documents are `select`, odd-numbered `holdout`; `all` is the whole split."""
    if part not in ("select", "holdout", "all"):
        raise ValueError(f"part={part!r} must be 'select', 'holdout' or 'all'")
    if part == "all":
        return tokens
    arr = np.asarray(tokens)
    ends = np.flatnonzero(arr == eos_id) + 1
    starts = np.concatenate([[0], ends[:-1]]) if len(ends) else np.array([0])
    stops = ends if len(ends) else np.array([len(arr)])
    keep = [slice(a, b) for i, (a, b) in enumerate(zip(starts, stops))
            if i % 2 == (0 if part == "select" else 1)]
    return np.concatenate([arr[k] for k in keep]) if keep else arr[:0]


def val_windows(tokens: np.ndarray, seq_len: int, eval_tokens: int) -> torch.Tensor:
    """`eval_tokens // seq_len` non-overlapping windows (N, seq_len + 1) spread evenly over the
    whole of `tokens` (one half of the validation split, or a domain). Deterministic: every
    trial with this seq_len is scored on the same text."""
    usable = len(tokens) - seq_len - 1  # last valid start
    n = max(1, min(eval_tokens // seq_len, (len(tokens) - 1) // seq_len))
    stride = (usable + 1) / n
    starts = np.minimum((stride * np.arange(n)).astype(np.int64), usable)
    idx = starts[:, None] + np.arange(seq_len + 1)[None, :]
    return torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64))
