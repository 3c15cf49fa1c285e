"""Extra evaluation domains never score training text nor main-validation text, whatever the
overlap of corpora, say how many documents each rule removed, refuse a domain that is the
validation set under another name, and get their own unigram reference."""

import pytest

from tune_ablations.spec.presets import build_ablation
from tune_ablations.training.corpus import CorpusError, load_documents, shingles, split_documents
from tune_ablations.training.data import prepare_data
from tune_ablations.training.domains import (
    _domain_docs,
    build_domain,
    clean_documents,
    domain_names,
)


def test_clean_documents_drop_shared_documents_and_passages():
    shared = " ".join(f"w{i}" for i in range(20))
    train = [f"head {shared}", "another training document with words"]
    domain = [f"{shared} tail", "another training document with words",
              "wholly new text " * 5, "short"]
    assert clean_documents(train, domain) == ["wholly new text " * 5, "short"]


def test_a_domain_keeps_no_main_validation_document(tmp_path):
    """A domain corpus that holds the training corpus's documents (train and validation) and
    new ones: only the new ones are scored, and each rule's losses are counted."""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    words = [f"w{i}" for i in range(400)]
    docs = [" ".join(words[i * 20:(i + 1) * 20]) for i in range(20)]
    for i, d in enumerate(docs):
        (corpus / f"d{i:02d}.txt").write_text(d)
    cfg = build_ablation("baseline", "tiny", corpus=str(corpus), val_fraction=0.3).data
    train, val = split_documents(docs, 0.3, cfg.split_seed)
    new = [f"new text number {i} " + " ".join(f"n{i}x{j}" for j in range(15)) for i in range(3)]
    domain = tmp_path / "domain"
    domain.mkdir()
    for i, d in enumerate(docs + new):
        (domain / f"e{i:02d}.txt").write_text(d)
    kept, facts = _domain_docs(cfg, str(domain))
    assert sorted(kept) == sorted(new)
    assert facts == {"documents": 3, "dropped": len(train), "in_validation": len(val),
                     "total": 23}
    inside = tmp_path / "inside"
    inside.mkdir()
    for i, d in enumerate(docs):
        (inside / f"e{i:02d}.txt").write_text(d)
    with pytest.raises(CorpusError, match=f"each of its {len(val)} documents that share no "
                       "text with training is a main-validation document"):
        _domain_docs(cfg, str(inside))


@pytest.mark.extended  # loads and splits the whole stdlib corpus (about 10 s)
def test_pydoc_inside_embedded_is_refused_and_stdlib_to_pydoc_is_other_text():
    """The review's circular check (every kept pydoc document was a main-validation document of
    embedded) is refused with the fix; the fix is a real cross-domain check: of pydoc's
    documents, only those sharing a 12-word passage with stdlib's training split are left out,
    none is a stdlib validation document, and none shares a passage with any stdlib text."""
    with pytest.raises(CorpusError, match="is a main-validation document of "
                       "corpus='embedded'.*--data stdlib --eval-data pydoc"):
        _domain_docs(build_ablation("baseline", "cpu", eval_data="pydoc").data, "pydoc")
    cfg = build_ablation("baseline", "cpu", corpus="stdlib", eval_data="pydoc").data
    kept, facts = _domain_docs(cfg, "pydoc")
    stdlib = load_documents(build_ablation("baseline", "cpu", corpus="stdlib").data)
    seen = set().union(*map(shingles, stdlib))
    assert facts["in_validation"] == 0 and facts["documents"] == len(kept)
    assert facts["dropped"] <= 0.05 * facts["total"]  # 1 of 79 on Python 3.11
    assert not any(shingles(k) & seen for k in kept)


@pytest.mark.extended  # tokenizes the embedded corpus
def test_the_grid_refuses_the_circular_check_in_one_line_before_training(tmp_path, capsys):
    from tune_ablations import grid

    code = grid.main(["--preset", "tiny", "--eval-data", "pydoc", "--storage", str(tmp_path),
                      "--name", "circular"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: eval_data='pydoc': each of its ")
    assert not list(tmp_path.glob("circular/*/outcome.json"))  # nothing trained


@pytest.mark.parametrize("train_corpus, domain", [
    pytest.param("stdlib", "embedded", marks=pytest.mark.extended),  # tokenizes all of stdlib
    (None, "pydoc")])
def test_no_domain_document_is_training_text(train_corpus, domain, corpus_dir):
    """A domain that contains the training corpus (embedded around stdlib) and one unrelated
    to it (pydoc against the made-up corpus) are both scored only on documents sharing nothing
    with training."""
    train_corpus = train_corpus or str(corpus_dir)
    cfg = build_ablation("baseline", "tiny", corpus=train_corpus, eval_data=domain,
                         vocab_size=300)
    data = prepare_data(cfg.data, log=lambda s: None)
    train, val = split_documents(load_documents(cfg.data), cfg.data.val_fraction,
                                 cfg.data.split_seed)
    label, corpus = domain_names(cfg.data)[0]
    d = build_domain(cfg.data, data, label, corpus)
    docs = load_documents(build_ablation("baseline", "tiny", corpus=domain).data)
    kept = clean_documents(val, clean_documents(train, docs))
    seen = set().union(*map(shingles, train + val))
    assert d.documents == len(kept) and d.total == len(docs)
    assert d.dropped + d.in_validation == len(docs) - len(kept)
    assert not set(kept) & set(train + val) and not any(shingles(k) & seen for k in kept)
    if train_corpus == "stdlib":  # the 11% of characters that used to leak, and its val docs
        assert d.dropped >= len(train) and d.in_validation >= len(val)


def test_domains_report_their_own_unigram_reference(corpus_dir, tmp_path):
    from conftest import make_corpus

    from tune_ablations.training.domains import with_domains
    from tune_ablations.training.trainer import train

    other = make_corpus(tmp_path / "other", n_docs=20, seed=1)
    cfg = build_ablation("baseline", "tiny", corpus=str(corpus_dir), vocab_size=300,
                         eval_data=f"pydoc,{other}", max_steps=10, eval_every=10,
                         text_samples=0)
    assert [n for n, _ in domain_names(cfg.data)] == ["pydoc", "other"]
    r = train(cfg, data=with_domains(prepare_data(cfg.data, log=lambda s: None), cfg.data))
    last = r["history"][-1]
    for label in ("pydoc", "other"):
        assert last[f"val_loss@{label}"] > 0 and last[f"val_bpb@{label}"] > 0
        assert last[f"unigram_val_loss@{label}"] > 0 and last[f"val_loss_se@{label}"] > 0
    assert last["unigram_val_loss@other"] != last["unigram_val_loss@pydoc"]
    assert r["domains"]["other"]["in_validation"] == 0 and r["domains"]["pydoc"]["total"] > 0
