"""Extra evaluation domains never score training text, whatever the overlap of corpora, say
how many documents the rule removed, and get their own unigram reference."""

import pytest

from tune_ablations.spec.presets import build_ablation
from tune_ablations.training.corpus import load_documents, shingles, split_documents
from tune_ablations.training.data import prepare_data
from tune_ablations.training.domains import build_domain, clean_documents, domain_names


def test_clean_documents_drop_shared_documents_and_passages():
    shared = " ".join(f"w{i}" for i in range(20))
    train = [f"head {shared}", "another training document with words"]
    domain = [f"{shared} tail", "another training document with words",
              "wholly new text " * 5, "short"]
    assert clean_documents(train, domain) == ["wholly new text " * 5, "short"]


@pytest.mark.parametrize("train_corpus, domain", [
    pytest.param("stdlib", "embedded", marks=pytest.mark.extended),  # tokenizes all of stdlib
    ("embedded", "pydoc")])
def test_no_domain_document_is_training_text(train_corpus, domain):
    """A domain that contains the training corpus (embedded around stdlib) and one inside it
    (pydoc inside embedded) are both scored only on documents sharing nothing with training."""
    cfg = build_ablation("baseline", "tiny", corpus=train_corpus, eval_data=domain)
    data = prepare_data(cfg.data, log=lambda s: None)
    train, _ = split_documents(load_documents(cfg.data), cfg.data.val_fraction,
                               cfg.data.split_seed)
    label, corpus = domain_names(cfg.data)[0]
    d = build_domain(cfg.data, data, label, corpus)
    docs = load_documents(build_ablation("baseline", "tiny", corpus=domain).data)
    kept = clean_documents(train, docs)
    seen = set().union(*map(shingles, train))
    assert d.documents == len(kept) and d.dropped == len(docs) - len(kept) > 0
    assert d.total == len(docs)
    assert not set(kept) & set(train) and not any(shingles(k) & seen for k in kept)
    if train_corpus == "stdlib":  # the 11% of characters that used to leak
        assert d.dropped >= len(train)


def test_domains_report_their_own_unigram_reference(corpus_dir):
    from tune_ablations.training.domains import with_domains
    from tune_ablations.training.trainer import train

    cfg = build_ablation("baseline", "tiny", eval_data=f"pydoc,{corpus_dir}", max_steps=10,
                         eval_every=10, text_samples=0)
    assert [n for n, _ in domain_names(cfg.data)] == ["pydoc", "corpus0"]
    r = train(cfg, data=with_domains(prepare_data(cfg.data, log=lambda s: None), cfg.data))
    last = r["history"][-1]
    for label in ("pydoc", "corpus0"):
        assert last[f"val_loss@{label}"] > 0 and last[f"val_bpb@{label}"] > 0
        assert last[f"unigram_val_loss@{label}"] > 0 and last[f"val_loss_se@{label}"] > 0
    assert last["unigram_val_loss@corpus0"] != last["unigram_val_loss@pydoc"]
