"""Extra evaluation domains (`eval_data = "pydoc,stdlib,/path/corpus"`): text from other sources,
scored with the run's own tokenizer, so a conclusion can be checked for generality.

Design choices:
- One rule for every domain, whatever the overlap of corpora (a subset of the training corpus,
  one that contains it, or an unrelated one): a domain is scored only on its documents that
  share no document and no 12-word passage with the training split, the same rule as the main
  split. How many documents each domain lost to the rule is recorded and reported.
- Other text must be other than the main validation set too: a domain inside the training
  corpus (`pydoc` inside `embedded`) keeps exactly the main validation documents after the
  rule above, and "the ranking holds on other text" would be the validation set agreeing with
  itself. So a domain's documents that are, or share a 12-word passage with, a main-validation
  document are left out as well and counted (`in_validation`); a domain left with nothing is
  refused with the fix (evaluate on a corpus the training corpus does not contain).
- Each domain gets its own unigram reference (the training split's token frequencies on the
  domain's eval tokens), computed by the trainer like the main one.
- Token ids are cached per (run corpus, domain, rule) and built where the data is prepared
  (the driver, before trials start); trials receive them inside `TokenData`.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..spec.config import HUB_PREFIX, DataConfig
from ..spec.io import write_atomic
from .corpus import CorpusError, load_documents, shingles, split_documents
from .data import Domain, TokenData, load_tokenizer
from .runtime import cache_root

RULE_VERSION = 3  # 3: none shared with the training split, nor with the main validation split
HUB_DOMAIN_DOCUMENTS = 1000  # a Hub domain is streamed: its first documents


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


def clean_documents(train_docs: list[str], domain_docs: list[str]) -> list[str]:
    """The domain's documents that share no document and no 12-word passage with training."""
    seen: set[int] = set()
    for doc in train_docs:
        seen |= shingles(doc)
    return [d for d in domain_docs if not (shingles(d) & seen)]


def _domain_docs(cfg: DataConfig, corpus: str) -> tuple[list[str], dict[str, int]]:
    """(documents kept, facts): the domain's documents that share no text with the training
    split nor with the main validation split, and how many each rule left out."""
    train, val = split_documents(load_documents(replace(cfg, eval_data="")), cfg.val_fraction,
                                 cfg.split_seed)
    n = HUB_DOMAIN_DOCUMENTS if corpus.startswith(HUB_PREFIX) else 0
    docs = load_documents(replace(cfg, corpus=corpus, num_documents=n, eval_data=""))
    unseen = clean_documents(train, docs)
    kept = clean_documents(val, unseen)
    facts = {"documents": len(kept), "dropped": len(docs) - len(unseen),
             "in_validation": len(unseen) - len(kept), "total": len(docs)}
    if not kept:
        raise CorpusError(_nothing_left(cfg, corpus, facts))
    return kept, facts


def _nothing_left(cfg: DataConfig, corpus: str, f: dict[str, int]) -> str:
    if f["in_validation"]:
        return (f"eval_data={corpus!r}: each of its {f['in_validation']} documents that share "
                f"no text with training is a main-validation document of corpus={cfg.corpus!r} "
                "(which contains it), so scoring it would be the validation set agreeing with "
                "itself; evaluate on a corpus the training corpus does not contain (e.g. "
                "--data stdlib --eval-data pydoc)")
    return (f"eval_data={corpus!r}: all {f['total']} of its documents are, or share a 12-word "
            "passage with, training documents: nothing held out to score")


def build_domain(cfg: DataConfig, data: TokenData, label: str, corpus: str,
                 cache_dir: Path | None = None) -> Domain:
    """The held-out tokens of one domain in the run's tokenizer (cached)."""
    key = hashlib.sha256(json.dumps([data.key, corpus, RULE_VERSION]).encode()).hexdigest()[:16]
    folder = (cache_dir or cache_root()) / "domains"
    path, meta = folder / f"{key}.npy", folder / f"{key}.json"
    if path.exists() and meta.exists():
        facts = json.loads(meta.read_text())
        return Domain(label, corpus, np.load(path, mmap_mode="r"), **facts)
    docs, facts = _domain_docs(cfg, corpus)
    tok = load_tokenizer(data.tokenizer_json)
    ids: list[int] = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        ids.extend(enc.ids)
        ids.append(data.eos_id)
    arr = np.asarray(ids, dtype=data.train.dtype)
    buf = io.BytesIO()
    np.save(buf, arr)
    write_atomic(path, buf.getvalue())
    write_atomic(meta, json.dumps(facts))
    return Domain(label, corpus, arr, **facts)


def with_domains(data: TokenData, cfg: DataConfig, cache_dir: Path | None = None) -> TokenData:
    """`data` with every extra domain of `cfg` attached (what a run with eval_data reads)."""
    domains = {label: build_domain(cfg, data, label, corpus, cache_dir)
               for label, corpus in domain_names(cfg)}
    return replace(data, domains=domains) if domains else data


def check_fits_tokens(tokens, seq_len: int, what: str) -> None:
    if len(tokens) < seq_len + 1:
        raise CorpusError(f"{what} has {len(tokens)} held-out tokens, fewer than one window of "
                          f"seq_len + 1 = {seq_len + 1}")
