"""BM25 baseline behind the Index interface."""
import numpy as np
import pytest

from jmlr.index import load_index
from jmlr.index import BM25Index

DOCS = {
    "a": "aspirin irreversibly inhibits cyclooxygenase in platelets",
    "b": "insulin lowers blood glucose in diabetes",
    "c": "warfarin is monitored with the INR",
    "d": "heparin is monitored with the aPTT",
}


@pytest.fixture()
def bm25():
    idx = BM25Index(stemmer=None)
    idx.add(list(DOCS), list(DOCS.values()))
    return idx


def test_lexical_match_ranks_first(bm25):
    scores, ids = bm25.search(["which drug inhibits cyclooxygenase", "how is heparin monitored"], 2)
    assert ids.shape == (2, 2) and scores.shape == (2, 2)
    assert ids[0, 0] == "a" and ids[1, 0] == "d"
    assert scores[0, 0] > scores[0, 1] and scores[1, 0] > scores[1, 1]
    assert len(bm25) == 4


def test_k_beyond_corpus_pads(bm25):
    scores, ids = bm25.search(["insulin"], 6)
    assert ids[0, 0] == "b" and list(ids[0, 4:]) == [None, None]
    assert np.isneginf(scores[0, 4:].numpy()).all()


def test_save_load_round_trip(bm25, tmp_path):
    bm25.corpus_fingerprint = "corpus-1"
    bm25.save(tmp_path / "bm25")
    back = load_index(tmp_path / "bm25", corpus_fingerprint="corpus-1")
    q = ["warfarin monitoring", "glucose"]
    s1, i1 = bm25.search(q, 3)
    s2, i2 = back.search(q, 3)
    assert (i1 == i2).all()
    np.testing.assert_allclose(s1.numpy(), s2.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="corpus fingerprint"):
        load_index(tmp_path / "bm25", corpus_fingerprint="corpus-2")


def test_add_after_search_reindexes(bm25):
    bm25.search(["x"], 1)
    bm25.add(["e"], ["vancomycin treats MRSA"])
    assert bm25.search(["vancomycin"], 1)[1][0, 0] == "e"


def test_bad_inputs(bm25):
    with pytest.raises(ValueError, match="query texts"):
        bm25.search(np.zeros((1, 4), dtype=np.float32), 1)
    with pytest.raises(ValueError, match="duplicate id 'a'"):
        bm25.add(["a"], ["again"])
    with pytest.raises(ValueError, match="2 ids but 1 texts"):
        bm25.add(["x", "y"], ["one"])
