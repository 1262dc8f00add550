"""The fast corpus encoder (jmlr.retriever.encoding): same embeddings as the plain per-batch path, input order,
little padding, tokenisation in a background thread."""
import threading

import pytest
import torch

from jmlr.retriever.embedding import encode_token_lists, pad_batch
from jmlr.retriever.encoding import encode_texts, padded_batches, padding_stats


def _plain(dual, texts, batch_size):
    """The plain path: tokenize all, then one padded batch at a time (longest first)."""
    toks = dual.tokenize(texts, "doc")
    return encode_token_lists(dual.doc_model, toks, pad_id=dual.tokenizer.pad_token_id, pooling=dual.pooling,
                              normalize=dual.normalize, batch_size=batch_size)


def _varied(n=157, seed=3):
    from jmlr.retriever.testing import random_texts

    texts = random_texts(n, seed=seed)
    return [t if i % 3 else " ".join([t] * 4) for i, t in enumerate(texts)]  # lengths from a few to max_length


@pytest.mark.parametrize("batch_size,chunk_batches,overlap", [(7, 2, True), (16, 1, False), (64, 8, True), (1, 3, True)])
def test_fast_encoder_equals_plain_per_batch_path(dual, batch_size, chunk_batches, overlap):
    texts = _varied()
    want = _plain(dual, texts, batch_size)
    got = encode_texts(dual.doc_model, dual.tokenizer, texts, max_length=dual.max_length, pooling=dual.pooling,
                       normalize=dual.normalize, batch_size=batch_size, chunk_batches=chunk_batches, overlap=overlap)
    assert got.shape == want.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_each_row_matches_its_own_unpadded_forward(dual):
    texts = _varied(40)
    got = dual.encode_docs(texts, batch_size=9, progress=False)
    for i in (0, 1, 5, 39):
        ids, mask = pad_batch(dual.tokenize([texts[i]], "doc"), dual.tokenizer.pad_token_id)
        with torch.no_grad():
            from jmlr.retriever.embedding import embed_tokens

            one = embed_tokens(dual.doc_model, ids, mask, dual.pooling, dual.normalize)[0]
        torch.testing.assert_close(got[i], one, atol=1e-5, rtol=0)


def test_encode_docs_uses_fast_path_keeps_order_and_train_mode(dual):
    texts = _varied(50)
    dual.train()
    out = dual.encode_docs(texts, batch_size=8, progress=False)
    assert dual.doc_model.training, "the model's train/eval mode is restored"
    assert not out.is_inference(), "the result must be usable in autograd afterwards"
    q = torch.randn(3, out.shape[1], requires_grad=True)
    (q @ out.T).sum().backward()  # an inference tensor would refuse to be saved for backward
    torch.testing.assert_close(out[10], dual.encode_docs([texts[10]], progress=False)[0], atol=1e-5, rtol=0)
    assert dual.encode_docs([], progress=False).shape == (0, dual.dim)


def test_query_prefix_applied(dual):
    dual.query_prefix = "query: "
    a = dual.encode_queries(["fever and cough"], progress=False)
    dual.query_prefix = ""
    b = dual.encode_queries(["query: fever and cough"], progress=False)
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_padded_batches_sort_by_tokens_and_pad_per_batch():
    toks = {10: [1, 2, 3], 11: [4], 12: [5, 6, 7, 8, 9], 13: [1, 2]}
    out = list(padded_batches(toks, [10, 11, 12, 13], 2, pad_id=0))
    assert [r.tolist() for r, _, _ in out] == [[12, 10], [13, 11]]
    assert out[0][1].shape == (2, 5) and out[1][1].shape == (2, 2)
    assert out[1][1].tolist() == [[1, 2], [4, 0]] and out[1][2].tolist() == [[1, 1], [1, 0]]


def test_padding_stats_sorted_batches_waste_less():
    import random

    rng = random.Random(0)
    lengths = [rng.randint(5, 256) for _ in range(2000)]
    # encode_texts orders by character count first (a noisy proxy of token count), then re-sorts chunks by tokens
    by_chars = sorted(lengths, key=lambda n: -(n + rng.randint(-8, 8)))
    chunked = padding_stats(by_chars, 32, chunk=256)["padding_fraction"]
    exact = padding_stats(lengths, 32)["padding_fraction"]
    unsorted = padding_stats(lengths, 32, chunk=32)["padding_fraction"]
    assert exact <= chunked < 0.02 < 0.3 < unsorted


def test_tokenizer_runs_in_background_thread_and_errors_surface(dual):
    texts = _varied(60)
    seen = set()
    real = dual.tokenizer.__class__.__call__

    class Spy:
        pad_token_id = dual.tokenizer.pad_token_id

        def __call__(self, batch, **kw):
            seen.add(threading.current_thread().name)
            return real(dual.tokenizer, batch, **kw)

    encode_texts(dual.doc_model, Spy(), texts, max_length=dual.max_length, pooling=dual.pooling,
                 normalize=dual.normalize, batch_size=4, chunk_batches=2, overlap=True)
    assert "jmlr-tokenize" in seen
    seen.clear()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(max(before, __import__("os").cpu_count() or 1))  # no spare core: tokenize inline
        encode_texts(dual.doc_model, Spy(), texts, max_length=dual.max_length, pooling=dual.pooling,
                     normalize=dual.normalize, batch_size=4, chunk_batches=2)
    finally:
        torch.set_num_threads(before)
    assert seen == {threading.current_thread().name}

    class Broken(Spy):
        def __call__(self, batch, **kw):
            raise RuntimeError("tokenizer exploded")

    with pytest.raises(RuntimeError, match="tokenizer exploded"):
        encode_texts(dual.doc_model, Broken(), texts, max_length=dual.max_length, pooling=dual.pooling,
                     normalize=dual.normalize, batch_size=4, chunk_batches=2, overlap=True)
