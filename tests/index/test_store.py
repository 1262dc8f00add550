"""Memory-mapped embedding store: chunked encoding that resumes after an interruption."""
import json

import numpy as np
import pytest

from jmlr.index import EmbeddingStore, ExactIndex


def fake_encoder(calls, fail_after=None):
    """texts -> (m, 6) deterministic vectors; raises after ``fail_after`` calls (a simulated crash)."""
    def encode(texts):
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt("simulated interruption")
        calls.append(len(texts))
        return np.stack([np.full(6, float(len(t)), dtype=np.float32) + np.arange(6) for t in texts])
    return encode


TEXTS = [f"passage {'x' * i}" for i in range(23)]


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_resume_after_interruption_encodes_only_the_rest(tmp_path, dtype):
    store = EmbeddingStore(tmp_path / "emb")
    calls = []
    with pytest.raises(KeyboardInterrupt):
        store.encode(fake_encoder(calls, fail_after=2), TEXTS, fingerprint="f1", dtype=dtype, chunk_size=5,
                     progress=False)
    assert store.done == 10 and not store.complete
    calls2 = []
    emb = store.encode(fake_encoder(calls2), TEXTS, fingerprint="f1", dtype=dtype, chunk_size=5, progress=False)
    assert calls2 == [5, 5, 3], "resumed at row 10"
    assert isinstance(emb, np.memmap) and emb.dtype == np.dtype(dtype) and emb.shape == (23, 6)
    full = np.concatenate([fake_encoder([])(TEXTS[i:i + 5]) for i in range(0, 23, 5)])
    np.testing.assert_allclose(emb, full.astype(dtype))
    assert store.complete and json.loads((tmp_path / "emb" / "state.json").read_text())["done"] == 23


def test_changed_fingerprint_starts_over(tmp_path):
    store = EmbeddingStore(tmp_path / "emb")
    store.encode(fake_encoder([]), TEXTS, fingerprint="f1", chunk_size=10, progress=False)
    calls = []
    store.encode(fake_encoder(calls), TEXTS, fingerprint="f2", chunk_size=10, progress=False)
    assert calls == [10, 10, 3]
    calls = []
    store.encode(fake_encoder(calls), TEXTS, fingerprint="f2", chunk_size=10, progress=False)
    assert calls == [], "complete and matching: nothing to do"


def test_exact_index_searches_the_memmap(tmp_path):
    emb = EmbeddingStore(tmp_path / "emb").encode(fake_encoder([]), TEXTS, fingerprint="f", progress=False)
    idx = ExactIndex.from_array([f"p{i}" for i in range(23)], emb)
    assert idx.embeddings.data_ptr() == emb.ctypes.data, "no copy of the memmap"
    _, ids = idx.search(np.ones((1, 6), dtype=np.float32), 2)
    assert list(ids[0]) == ["p22", "p21"]


def test_bad_encoder_output_is_named(tmp_path):
    with pytest.raises(ValueError, match="returned 1 rows for 5 texts"):
        EmbeddingStore(tmp_path / "e").encode(lambda t: np.zeros((1, 3), np.float32), TEXTS, fingerprint="f",
                                              chunk_size=5, progress=False)
