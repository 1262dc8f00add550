"""Exact and faiss indexes: agreement, recall at defaults, persistence, fingerprints, bad input."""
import json

import numpy as np
import pytest
import torch

from jmlr.index import ExactIndex, FaissIndex, IndexMismatchError, load_index, make_index


def recall(found, truth):
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, truth)]))


def test_exact_and_faiss_flat_identical(small):
    ids, docs, q = small
    exact, flat = ExactIndex(48), FaissIndex(48, "flat")
    exact.add(ids, docs)
    flat.add(ids, docs)
    for k in (1, 10, 64):
        s1, i1 = exact.search(q, k)
        s2, i2 = flat.search(torch.from_numpy(q), k)
        assert i1.shape == (17, k) and s1.dtype == torch.float32
        assert (i1 == i2).all()
        torch.testing.assert_close(s1, s2, atol=1e-5, rtol=1e-5)
        brute = docs @ q.T  # (N, B)
        top = np.argsort(-brute, axis=0)[:k].T  # (B, k)
        assert (i1 == np.asarray(ids, dtype=object)[top]).all()


def test_exact_matches_kernel_reference_for_batch_shapes(small):
    from jmlr.kernels.topk import topk_reference

    ids, docs, q = small
    exact = ExactIndex(48)
    exact.add(ids[:1500], docs[:1500])
    exact.add(ids[1500:], docs[1500:])  # two adds: rows concatenate in order
    for B in (1, 3, 17):
        s, pos = exact.search_positions(q[:B], 7)
        rs, ri = topk_reference(torch.from_numpy(q[:B]), torch.from_numpy(docs), 7)
        assert torch.equal(pos, ri)
        torch.testing.assert_close(s, rs)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_recall_at_defaults_on_clustered_20k(data_20k, kind):
    docs, q = data_20k
    ids = list(range(len(docs)))
    exact = ExactIndex(384)
    exact.add(ids, docs)
    _, truth = exact.search(q, 10)
    approx = make_index(kind, 384)
    approx.add(ids, docs)
    _, found = approx.search(q, 10)
    assert found.dtype == np.int64
    r = recall(found, truth)
    assert r >= 0.95, f"{kind} recall@10 {r:.3f} at its defaults ({approx!r})"


@pytest.mark.parametrize("kind,min_recall", [("sq8", 0.9), ("sq16", 0.99), ("ivfpq", 0.3)])
def test_compressed_kinds_search(small, kind, min_recall):
    ids, docs, q = small
    exact = ExactIndex(48)
    exact.add(ids, docs)
    _, truth = exact.search(q, 10)
    idx = FaissIndex(48, kind)
    idx.add(ids, docs)
    scores, found = idx.search(q, 10)
    assert (scores[:, :-1] >= scores[:, 1:] - 1e-5).all(), "best first"
    assert recall(found, truth) >= min_recall


@pytest.mark.parametrize("spec", [("exact", {}), ("exact", {"dtype": "float16"}), ("exact", {"dtype": "int8"}),
                                  ("flat", {}), ("ivf", {}), ("hnsw", {}), ("sq8", {}), ("ivfpq", {}),
                                  ("flat", {"metric": "l2"})])
def test_save_load_round_trip(small, tmp_path, spec):
    kind, kw = spec
    ids, docs, q = small
    idx = make_index(kind, 48, **kw)
    idx.add(ids, docs)
    idx.version = 7
    idx.encoder_fingerprint, idx.corpus_fingerprint = "enc-a", "corpus-a"
    s1, i1 = idx.search(q, 5)
    idx.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["dim"] == 48 and meta["count"] == 3000 and meta["version"] == 7
    assert meta["metric"] == kw.get("metric", "ip")
    assert meta["encoder_fingerprint"] == "enc-a" and meta["corpus_fingerprint"] == "corpus-a"
    back = load_index(tmp_path / "idx", encoder_fingerprint="enc-a", corpus_fingerprint="corpus-a")
    assert type(back) is type(idx) and len(back) == 3000 and back.version == 7
    s2, i2 = back.search(q, 5)
    assert (i1 == i2).all()
    torch.testing.assert_close(s1, s2)
    if kw.get("metric") == "l2":
        assert (s1[:, :-1] <= s1[:, 1:]).all(), "l2 scores are distances, ascending"


def test_mismatched_fingerprints_are_refused_unless_forced(small, tmp_path):
    ids, docs, _ = small
    idx = ExactIndex(48)
    idx.add(ids, docs)
    idx.encoder_fingerprint, idx.corpus_fingerprint = "enc-a", "corpus-a"
    idx.save(tmp_path / "idx")
    with pytest.raises(IndexMismatchError, match="encoder fingerprint enc-a.*enc-b"):
        load_index(tmp_path / "idx", encoder_fingerprint="enc-b")
    with pytest.raises(IndexMismatchError, match="corpus fingerprint"):
        load_index(tmp_path / "idx", corpus=(["x"], ["some other corpus"]))
    assert len(load_index(tmp_path / "idx", encoder_fingerprint="enc-b", force=True)) == 3000


def test_encoder_fingerprint_from_a_dual_encoder(tmp_path):
    from jmlr.index import build_index
    from jmlr.retriever import DualEncoder
    from jmlr.retriever.testing import random_texts, tiny_encoder_dir

    dual = DualEncoder.from_pretrained(tiny_encoder_dir(tmp_path / "enc"))
    corpus = ([f"p{i}" for i in range(30)], random_texts(30))
    build_index(dual, corpus, index_type="flat", out=tmp_path / "idx", progress=False)
    assert len(load_index(tmp_path / "idx", encoder=dual, corpus=corpus)) == 30
    with torch.no_grad():
        next(dual.doc_model.parameters()).add_(0.5)
    with pytest.raises(IndexMismatchError, match="encoder"):
        load_index(tmp_path / "idx", encoder=dual)


def test_save_is_atomic(small, tmp_path):
    ids, docs, q = small
    old = ExactIndex(48)
    old.add(ids[:10], docs[:10])
    old.save(tmp_path / "idx")
    new = ExactIndex(48)
    new.add(ids, docs)

    def boom(folder):
        raise OSError("disk full")

    new._save_payload = boom
    with pytest.raises(OSError, match="disk full"):
        new.save(tmp_path / "idx")
    assert len(load_index(tmp_path / "idx")) == 10, "a failed save leaves the old index intact"
    assert [p.name for p in tmp_path.iterdir()] == ["idx"], "no temporary folder left behind"
    del new._save_payload
    new.save(tmp_path / "idx")
    assert len(load_index(tmp_path / "idx")) == 3000


def test_small_index_pads_and_int_ids():
    idx = ExactIndex(4)
    idx.add([10, 20, 30], np.eye(3, 4, dtype=np.float32))
    scores, ids = idx.search(np.array([[0, 1, 0, 0]], dtype=np.float32), 5)
    assert ids.dtype == np.int64 and ids[0, 0] == 20 and list(ids[0, 3:]) == [-1, -1]
    assert torch.isneginf(scores[0, 3:]).all()
    empty = FaissIndex(4, "flat")
    s, i = empty.search(np.ones((2, 4), dtype=np.float32), 3)
    assert (i == -1).all() and len(empty) == 0


def test_bad_input_is_named(small):
    ids, docs, q = small
    idx = ExactIndex(48)
    with pytest.raises(ValueError, match="dimension 47, expected 48"):
        idx.add(ids[:2], docs[:2, :47])
    with pytest.raises(ValueError, match="3 ids but 2 embedding rows"):
        idx.add(ids[:3], docs[:2])
    idx.add(ids[:2], docs[:2])
    with pytest.raises(ValueError, match="duplicate id 'doc-1'"):
        idx.add(["doc-5", "doc-1"], docs[:2])
    with pytest.raises(ValueError, match="expected all ids to be str"):
        idx.add([5], docs[:1])
    bad = docs[:2].copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="row 1 holds NaN"):
        idx.add(["x", "y"], bad)
    with pytest.raises(ValueError, match="queries have dimension"):
        idx.search(q[:, :10], 3)
    with pytest.raises(ValueError, match="k must be >= 1"):
        idx.search(q, 0)
    with pytest.raises(ValueError, match="unknown faiss index type"):
        FaissIndex(48, "lsh")
    with pytest.raises(FileNotFoundError, match="meta.json"):
        load_index("/nonexistent/index")


def test_blas_threshold_is_measured_and_cached(small, monkeypatch):
    import faiss

    from jmlr.index import faiss_index

    ids, docs, q = small
    monkeypatch.setattr(faiss_index, "_BLAS_CHOICE", {})
    idx = FaissIndex(48, "flat")
    idx.add(ids, docs)
    calls = []
    real = idx._calibrate
    monkeypatch.setattr(idx, "_calibrate", lambda x, k: calls.append(x.shape) or real(x, k))
    s1, i1 = idx.search(q, 5)
    s2, i2 = idx.search(q, 5)
    assert calls == [(17, 48)], "one calibration per batch shape, then cached"
    assert (i1 == i2).all()
    (key, use_blas), = faiss_index.blas_calibration_cache().items()
    assert key[:4] == ("flat", 48, 11, 17)
    thr = faiss.cvar.distance_compute_blas_threshold
    assert (thr <= 17 * 48) == use_blas, "the threshold sends this batch down the measured path"
    idx.search(q[:3], 5)
    assert calls == [(17, 48), (3, 48)]


@pytest.mark.parametrize("spec", [("exact", {}), ("exact", {"dtype": "float16"}), ("flat", {}), ("hnsw", {}),
                                  ("ivf", {})])
def test_vectors_gives_back_the_stored_rows(small, spec):
    kind, kw = spec
    ids, docs, _ = small
    idx = make_index(kind, 48, **kw)
    idx.add(ids, docs)
    pos = torch.tensor([[5, 0], [2999, -1]])
    got = idx.vectors(pos)
    assert got.shape == (2, 2, 48) and got.dtype == torch.float32
    want = torch.from_numpy(docs[[5, 0, 2999]])
    tol = 1e-3 if kw.get("dtype") == "float16" else 1e-6
    torch.testing.assert_close(got.reshape(-1, 48)[:3], want, atol=tol, rtol=tol)
    assert (got[1, 1] == 0).all()
