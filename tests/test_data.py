import json
import multiprocessing as mp

import numpy as np
import pytest
import torch

from tune_ablations.spec.config import DataConfig
from tune_ablations.training import corpus as C
from tune_ablations.training import data as D


def _cfg(corpus, **kw) -> DataConfig:
    return DataConfig(corpus=str(corpus), vocab_size=kw.pop("vocab_size", 300), **kw)


def test_local_txt_folder_one_document_per_file(corpus_dir):
    docs = C.load_documents(_cfg(corpus_dir))
    assert len(docs) == 60 and docs[0].startswith("Document 0.")
    assert len(C.load_documents(_cfg(corpus_dir, num_documents=5))) == 5


def test_local_txt_file_blank_line_blocks(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("first block\nstill first\n\nsecond\n\n\n\nthird\n")
    assert C.load_documents(_cfg(f)) == ["first block\nstill first", "second", "third"]


@pytest.mark.parametrize("fmt", ["jsonl", "json", "parquet"])
def test_local_text_column_files(tmp_path, fmt):
    import pandas as pd

    texts = [f"doc number {i} " * 5 for i in range(7)]
    path = tmp_path / f"c.{fmt}"
    frame = pd.DataFrame({"text": texts, "id": range(7)})
    if fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    elif fmt == "json":
        path.write_text(json.dumps([{"text": t} for t in texts]))
    else:
        frame.to_parquet(path)
    assert C.load_documents(_cfg(path)) == [t.strip() for t in texts]
    assert len(C.load_documents(_cfg(path, num_documents=3))) == 3


def test_missing_text_column_is_named(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"body": "x"}\n')
    with pytest.raises(D.CorpusError, match="no 'text' column"):
        C.load_documents(_cfg(path))


def test_empty_corpus_rejected(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("\n\n  \n")
    with pytest.raises(D.CorpusError, match="is empty"):
        C.load_documents(_cfg(f))


def test_hub_code_path_on_local_files_in_the_same_format(tmp_path):
    """The Hub loader's own calls (streaming load_dataset, first N, text column), pointed at
    local parquet shards like cosmopedia-v2's."""
    import pandas as pd

    for shard in range(2):
        pd.DataFrame({"text": [f"shard {shard} doc {i}" for i in range(5)],
                      "audience": "x"}).to_parquet(tmp_path / f"train-{shard}.parquet")
    docs = C.load_hub_documents("hf:parquet", 7, data_files=sorted(
        str(p) for p in tmp_path.glob("*.parquet")))
    assert docs[:2] == ["shard 0 doc 0", "shard 0 doc 1"] and len(docs) == 7


def test_hub_unreachable_is_a_clear_error_at_once(monkeypatch):
    """Offline: no connection is even tried. Unreachable: one connection attempt, then the
    error, never the client's minute of retries (`datasets.load_dataset` is not reached)."""
    import socket

    import datasets

    attempts = []
    real = socket.create_connection

    def counted(address, *args, **kwargs):
        attempts.append(address)
        return real(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", counted)
    monkeypatch.setattr(datasets, "load_dataset",
                        lambda *a, **k: pytest.fail("the Hub client's retries were reached"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(C.CorpusError, match="HF_HUB_OFFLINE is set; use an embedded corpus"):
        C.load_hub_documents("hf:HuggingFaceTB/smollm-corpus/cosmopedia-v2", 3)
    assert attempts == []
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(C.CorpusError, match=r"Hub \(127.0.0.1\) is not reachable.*local path"):
        C.load_hub_documents("hf:HuggingFaceTB/smollm-corpus/cosmopedia-v2", 3)
    assert attempts == [("127.0.0.1", 9)]


def test_reference_corpus_at_the_cpu_preset_fails_cleanly(tmp_path, capsys):
    from tune_ablations import grid

    assert grid.main(["--data", "reference", "--preset", "cpu", "--storage", str(tmp_path),
                      "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "num_documents" not in err and "use an embedded corpus" in err


def test_embedded_corpora_load_offline():
    pydoc = C.load_pydoc_documents()
    assert len(pydoc) > 50 and all(isinstance(d, str) and d for d in pydoc)
    stdlib = C.load_stdlib_documents()
    assert len(stdlib) > 100
    assert sum(map(len, stdlib)) > 2 * sum(map(len, pydoc))  # 2.75x on 3.13, 3.5x on 3.11


def test_split_groups_documents_sharing_passages():
    shared = " ".join(f"w{i}" for i in range(30))
    docs = [f"alpha {shared} tail", f"prefix {shared}", *[f"unique doc {i} " * 20
                                                          for i in range(20)]]
    groups = C.group_documents(docs)
    assert groups[0] == groups[1]
    assert len(set(groups)) == 21


def _shingles(doc: str, n: int = 12) -> set[str]:
    w = doc.split()
    return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}


def test_embedded_split_has_no_shared_document_or_passage():
    docs = C.load_pydoc_documents()
    train, val = C.split_documents(docs, 0.1, seed=0)
    assert train and val and len(train) + len(val) == len(docs)
    assert not set(train) & set(val)
    train_sh = set().union(*map(_shingles, train))
    val_sh = set().union(*map(_shingles, val))
    assert not train_sh & val_sh
    # The known verbatim repeat lands on one side.
    topics = __import__("pydoc_data.topics", fromlist=["topics"]).topics
    a, b = topics["specialnames"].strip(), topics["customization"].strip()
    assert (a in train) == (b in train)
    frac = sum(map(len, val)) / sum(map(len, docs))
    assert 0.05 < frac < 0.2


def test_cache_hit_does_not_tokenize_again(tmp_path, corpus_dir, monkeypatch):
    cfg = _cfg(corpus_dir)
    first = D.prepare_data(cfg, tmp_path, log=lambda s: None)
    monkeypatch.setattr(D, "_build", lambda *a, **k: pytest.fail("tokenized again"))
    second = D.prepare_data(cfg, tmp_path, log=lambda s: None)
    assert np.array_equal(first.train, second.train) and second.key == first.key
    facts = second.facts(tokens_budget=2 * len(second.train))
    assert facts["epochs"] == pytest.approx(2.0)
    assert facts["train_documents"] + facts["val_documents"] == 60


def test_corrupted_cache_is_rebuilt(tmp_path, corpus_dir):
    cfg = _cfg(corpus_dir)
    first = D.prepare_data(cfg, tmp_path, log=lambda s: None)
    good = np.array(first.train)
    path = first.path / "train.npy"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # killed mid-write
    with pytest.warns(UserWarning, match="does not match its manifest"):
        again = D.prepare_data(cfg, tmp_path, log=lambda s: None)
    assert np.array_equal(np.array(again.train), good)
    (first.path / "manifest.json").unlink()  # killed before the manifest: rebuilt too
    with pytest.warns(UserWarning):
        D.prepare_data(cfg, tmp_path, log=lambda s: None)


def _prepare_in_child(args):
    corpus, cache = args
    d = D.prepare_data(_cfg(corpus), cache, log=lambda s: None)
    return d.key, int(d.train.sum()), len(d.val)


def test_concurrent_cache_creation(tmp_path, corpus_dir):
    with mp.get_context("spawn").Pool(3) as pool:
        out = pool.map(_prepare_in_child, [(str(corpus_dir), str(tmp_path))] * 3)
    assert len(set(out)) == 1
    folders = [p for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert len(folders) == 1 and D.valid_cache(folders[0]) is not None
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


def test_tokenizer_loads_with_autotokenizer_and_counts_bytes(tiny_data):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_data.path / "tokenizer"))
    assert D.load_tokenizer(tiny_data.tokenizer_json).get_vocab_size() == tok.vocab_size
    text = "The model reads a document, then a window."
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert tiny_data.token_bytes[ids].sum() == len(text.encode())
    assert tiny_data.token_bytes[tiny_data.eos_id] == 0


def test_cached_tokenizer_is_readable_by_every_supported_tokenizers(tiny_data):
    """A token cache is shared by environments with different tokenizers versions (CI's
    minimum-versions one read a cache the newest had written): stored with "a b" merges, which
    tokenizers 0.19 reads, and a cache in the 0.20+ pair form loads the same tokenizer."""
    stored = json.loads(tiny_data.tokenizer_json)["model"]["merges"]
    assert stored and all(isinstance(m, str) and m.count(" ") == 1 for m in stored)
    as_pairs = json.loads(tiny_data.tokenizer_json)
    as_pairs["model"]["merges"] = [m.split(" ") for m in stored]
    text = "The model reads a document, then a window."
    want = D.load_tokenizer(tiny_data.tokenizer_json).encode(text).ids
    assert D.load_tokenizer(json.dumps(as_pairs)).encode(text).ids == want
    assert D.load_tokenizer(tiny_data.path / "tokenizer").encode(text).ids == want


def test_batches_are_shifted_windows_and_seeded(tiny_data):
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x1, y1 = D.sample_batch(tiny_data.train, 4, 16, g1)
    x2, y2 = D.sample_batch(tiny_data.train, 4, 16, g2)
    assert x1.shape == y1.shape == (4, 16) and x1.dtype == torch.int64
    assert torch.equal(x1[:, 1:], y1[:, :-1])
    assert torch.equal(x1, x2) and torch.equal(y1, y2)


def test_validation_windows_spread_over_the_select_documents(tiny_data):
    select = np.asarray(D.val_part(tiny_data.val, tiny_data.eos_id, "select"), dtype=np.int64)
    w1 = D.val_windows(select, 16, 160)
    assert torch.equal(w1, D.val_windows(select, 16, 160)) and w1.shape == (10, 17)
    starts = []
    for row in w1.numpy():  # each window is a contiguous slice of the select half
        hits = [s for s in range(len(select) - 16) if np.array_equal(select[s:s + 17], row)]
        starts.append(hits[0])
    n = len(select)
    assert starts[0] == 0 and starts[-1] > 0.85 * (n - 17)  # not one corner of the split
    gaps = np.diff(starts)
    assert gaps.min() >= 17 and gaps.max() - gaps.min() <= 2  # evenly spaced, no overlap
    with pytest.raises(ValueError, match="part='test' must be"):
        D.val_part(tiny_data.val, tiny_data.eos_id, "test")


def test_holdout_documents_are_not_the_selection_documents(tiny_data):
    """The held-out half shares no document with the half every evaluation scores: documents
    alternate between the two, whole."""
    val = np.asarray(tiny_data.val)
    ends = np.flatnonzero(val == tiny_data.eos_id) + 1
    docs = [tuple(d) for d in np.split(val, ends)[:-1]]
    select = D.val_part(val, tiny_data.eos_id, "select")
    holdout = D.val_part(val, tiny_data.eos_id, "holdout")
    assert len(select) + len(holdout) == len(val)
    assert np.array_equal(select, np.concatenate(docs[0::2]))
    assert np.array_equal(holdout, np.concatenate(docs[1::2]))
    sel_docs = {d for d in docs[0::2]}
    assert not any(d in sel_docs for d in docs[1::2])


def test_corpus_smaller_than_a_window(tiny_data):
    with pytest.raises(D.CorpusError, match="smaller than one window"):
        D.check_fits(tiny_data, len(tiny_data.val) + 5)


def test_split_keeps_an_oversized_group_in_train():
    docs = ["huge " * 5000] + [f"small document number {i} " * 20 for i in range(30)]
    train, val = C.split_documents(docs, 0.1)
    assert docs[0] in train and val
    assert sum(map(len, val)) <= 0.1 * 1.05 * sum(map(len, docs))


def test_progress_lines_in_logs(monkeypatch):
    lines = []
    monkeypatch.setattr(D.sys.stderr, "isatty", lambda: False, raising=False)
    p = D.Progress("tokenize", 10, lines.append, every_s=0.0)
    p.advance(4)
    p.advance(6)
    assert lines[-1].startswith("event=progress what=tokenize done=10 total=10")


def test_progress_on_a_stream_without_isatty(monkeypatch):
    """Inside a Ray trial, sys.stderr is Ray's Tee, which has no isatty(): progress must log,
    not crash (it crashed every trial on a host without the driver's token cache)."""
    class Tee:
        def write(self, s):
            return len(s)

        def flush(self):
            pass

    monkeypatch.setattr(D.sys, "stderr", Tee())
    lines = []
    p = D.Progress("tokenize", 2, lines.append, every_s=0.0)
    p.advance(2)
    p.close()
    assert lines and "done=2" in lines[-1]


def test_a_cache_hit_is_o1_and_verify_finds_silent_corruption(tmp_path, corpus_dir, monkeypatch,
                                                              capsys):
    from tune_ablations import cache

    cfg = _cfg(corpus_dir)
    first = D.prepare_data(cfg, tmp_path, log=lambda s: None)
    monkeypatch.setattr(D, "_digest", lambda p: pytest.fail("a hit hashed a file"))
    D.prepare_data(cfg, tmp_path, log=lambda s: None)  # sizes only
    monkeypatch.undo()
    path = first.path / "val.npy"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF  # same size: only a digest can tell
    path.write_bytes(bytes(raw))
    assert cache.main(["verify", "--cache-dir", str(tmp_path)]) == 1
    assert f"bad={first.key}" in capsys.readouterr().out
    assert cache.main(["list", "--cache-dir", str(tmp_path)]) == 0
    listed = json.loads(capsys.readouterr().out.splitlines()[0])
    assert listed["key"] == first.key and listed["train_tokens"] == len(first.train)
    assert cache.main(["clean", "--cache-dir", str(tmp_path)]) == 2
    assert cache.main(["clean", first.key, "--cache-dir", str(tmp_path)]) == 0
    assert not first.path.exists()
