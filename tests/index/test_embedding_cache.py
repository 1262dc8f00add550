"""index.embedding_cache: the initial (version 0) corpus embeddings come from the cache only when the doc tower,
the corpus and the precision are the ones that wrote them; everything else misses and re-encodes."""
import logging

import numpy as np
import pytest
import torch

from jmlr.index import AsyncRefresher
from jmlr.index.embedding_cache import EmbeddingCache


@pytest.fixture(scope="module")
def enc_dir(tmp_path_factory):
    from jmlr.retriever.testing import tiny_encoder_dir

    return tiny_encoder_dir(tmp_path_factory.mktemp("enc"))


@pytest.fixture(scope="module")
def corpus():
    from jmlr.retriever.testing import random_texts

    texts = random_texts(40, seed=5)
    return [f"p{i}" for i in range(len(texts))], texts


def dual_of(enc_dir):
    from jmlr.retriever import DualEncoder

    return DualEncoder.from_pretrained(enc_dir)


def build(enc_dir, corpus, cache, dual=None, **kw):
    r = AsyncRefresher(dual or dual_of(enc_dir), corpus, policy="never", probe_size=8, embedding_cache=cache, **kw)
    emb = r.index.embeddings.clone()
    hit = r.initial_from_cache
    r.close()
    return emb, hit


def test_second_build_reads_the_vectors_the_first_wrote(enc_dir, corpus, tmp_path):
    cache = EmbeddingCache(tmp_path / "emb")
    plain, _ = build(enc_dir, corpus, None)
    first, hit1 = build(enc_dir, corpus, cache)
    assert not hit1 and len(list((tmp_path / "emb").glob("*.npy"))) == 1
    # poison the stored matrix: a hit must return what is on disk, not a fresh encode
    npy = next((tmp_path / "emb").glob("*.npy"))
    stored = np.load(npy)
    np.save(npy, stored * 0 + 7.0)
    second, hit2 = build(enc_dir, corpus, cache)
    assert hit2 and torch.equal(second, torch.full_like(second, 7.0))
    np.save(npy, stored)
    third, hit3 = build(enc_dir, corpus, cache)
    assert hit3 and torch.equal(third, first)
    torch.testing.assert_close(first, plain, rtol=0, atol=0)


def test_a_changed_encoder_corpus_or_precision_misses(enc_dir, corpus, tmp_path):
    cache = EmbeddingCache(tmp_path / "emb")
    base, _ = build(enc_dir, corpus, cache)
    dual = dual_of(enc_dir)
    with torch.no_grad():  # one step of "training" of the doc tower
        next(p for p in dual.doc_model.parameters() if p.ndim == 2).add_(0.05)
    moved, hit = build(enc_dir, corpus, cache, dual=dual)
    assert not hit and not torch.allclose(moved, base)
    ids, texts = corpus
    edited = (ids, [texts[0] + " extra words"] + list(texts[1:]))
    _, hit = build(enc_dir, edited, cache)
    assert not hit
    _, hit = build(enc_dir, (list(reversed(ids)), list(reversed(texts))), cache)
    assert not hit, "the same texts in another order are another corpus"
    _, hit = build(enc_dir, corpus, cache, autocast_dtype=torch.bfloat16)
    assert not hit
    assert len(list((tmp_path / "emb").glob("*.npy"))) == 5
    _, hit = build(enc_dir, corpus, cache)
    assert hit


def test_an_unreadable_entry_is_a_miss_and_is_rewritten(enc_dir, corpus, tmp_path, caplog):
    cache = EmbeddingCache(tmp_path / "emb")
    first, _ = build(enc_dir, corpus, cache)
    npy = next((tmp_path / "emb").glob("*.npy"))
    npy.write_bytes(npy.read_bytes()[:100])  # truncated, as a killed writer without the atomic rename would leave
    with caplog.at_level(logging.WARNING, logger="jmlr.index.embedding_cache"):
        again, hit = build(enc_dir, corpus, cache)
    assert not hit and "unreadable" in caplog.text
    assert torch.equal(again, first)
    _, hit = build(enc_dir, corpus, cache)
    assert hit, "the miss rewrote the entry"


def trainer(out, enc_dir, reader_dir, corpus):
    from jmlr.config import load_config
    from jmlr.data import Corpus, Passage, QAExample
    from jmlr.reader import Reader
    from jmlr.retriever import DualEncoder
    from jmlr.train.trainer import JointTrainer

    ids, texts = corpus
    qa = [QAExample(id=f"q{i}", question=texts[i][:40] + "?", options={"A": "yes", "B": "no"}, answer="A",
                    gold_passage_ids=[ids[i]]) for i in range(4)]
    cfg = load_config(None, [f"output_dir={out}", "index.embedding_cache=true", "optim.steps=1", "eval_every=0",
                             "optim.batch_size=2", "index.top_k=2", "optim.precision=fp32", "refresh.probe_size=8"])
    return JointTrainer(cfg, DualEncoder.from_pretrained(enc_dir), Reader.from_pretrained(reader_dir, max_length=96),
                        Corpus([Passage(id=i, title="", text=t) for i, t in zip(ids, texts)]), qa, [], progress=False)


def test_trainer_uses_the_cache_under_jmlr_cache(tmp_path, tiny_bert_dir, tiny_reader_dir, corpus, monkeypatch):
    import jmlr.index.embedding_cache as ec

    # the default folder is $JMLR_CACHE/embeddings; only it moves (a fresh JMLR_CACHE would recompile the kernels)
    monkeypatch.setattr(ec, "default_folder", lambda: tmp_path / "cache" / "embeddings")
    assert ec.EmbeddingCache().folder == tmp_path / "cache" / "embeddings"
    a = trainer(tmp_path / "a", tiny_bert_dir, tiny_reader_dir, corpus)
    a.setup()
    assert not a.retrieval.refresher.initial_from_cache
    assert len(list((tmp_path / "cache" / "embeddings").glob("*.npy"))) == 1
    b = trainer(tmp_path / "b", tiny_bert_dir, tiny_reader_dir, corpus)
    b.setup()
    assert b.retrieval.refresher.initial_from_cache
    assert torch.equal(a.retrieval.refresher.index.embeddings, b.retrieval.refresher.index.embeddings)
    assert b.train()["costs"]["refresh"]["initial_from_cache"] is True
    a.release()
