"""Stale-index mitigation: over-retrieve from a stale index, rerank with the current doc tower."""
import numpy as np
import pytest
import torch

from jmlr.index import ExactIndex, RerankSearcher, rescore


@pytest.fixture()
def setup(tmp_path):
    from jmlr.retriever import DualEncoder
    from jmlr.retriever.testing import random_texts, tiny_encoder_dir

    dual = DualEncoder.from_pretrained(tiny_encoder_dir(tmp_path / "enc"))
    texts = random_texts(80, seed=4)
    ids = [f"p{i}" for i in range(80)]
    stale = ExactIndex(dual.dim)
    stale.add(ids, dual.encode_docs(texts, progress=False))
    with torch.no_grad():  # the doc tower moves on after the index was built
        for p in dual.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return dual, ids, texts, stale


def test_rescore_uses_the_current_doc_tower_with_grad(setup):
    dual, ids, texts, _ = setup
    text_of = dict(zip(ids, texts))
    q = dual.embed_queries(texts[:3])  # (3, d)
    cand = np.array([["p1", "p2", None], ["p2", "p5", "p9"], ["p0", None, None]], dtype=object)
    s = rescore(dual, q, cand, text_of)  # (3, 3)
    assert s.shape == (3, 3) and s.requires_grad
    assert torch.isneginf(s[0, 2]) and torch.isneginf(s[2, 1:]).all()
    want = (q[1:2] @ dual.embed_docs([texts[2], texts[5], texts[9]]).T)[0]
    torch.testing.assert_close(s[1], want)
    s[torch.isfinite(s)].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in dual.doc_model.parameters())


def test_full_overfetch_recovers_the_fresh_ranking(setup):
    dual, ids, texts, stale = setup
    queries = texts[:10]
    fresh = ExactIndex(dual.dim)
    fresh.add(ids, dual.encode_docs(texts, progress=False))
    q = dual.encode_queries(queries, progress=False)
    want_s, want_i = fresh.search(q, 5)
    _, stale_i = stale.search(q, 5)
    assert (stale_i != want_i).any(), "the perturbation must make the stale index disagree"
    searcher = RerankSearcher(stale, dual, (ids, texts), overfetch=16)  # K' = 80 = the whole corpus
    got_s, got_i = searcher.search(queries, 5)
    assert (got_i == want_i).all()
    torch.testing.assert_close(got_s, want_s, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="overfetch"):
        RerankSearcher(stale, dual, (ids, texts), overfetch=0)
