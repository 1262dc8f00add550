"""The contrastive baseline equals sentence-transformers' MNRL / CachedMNRL: losses and gradients, tiny model.

Like sentence-transformers' own test_cmnrl: one batch with hard negatives, the loss and every parameter's
gradient compared across (ours, ours with GradCache at two mini-batch sizes, ST MNRL, ST CMNRL).
"""
import pytest
import torch

from jmlr.retriever import DualEncoder
from jmlr.retriever.contrastive import (ContrastiveConfig, ContrastiveExample, ContrastiveTrainer,
                                        cached_info_nce_backward)
from jmlr.retriever.testing import random_texts


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    from jmlr.retriever.testing import tiny_encoder_dir

    return str(tiny_encoder_dir(tmp_path_factory.mktemp("bert"), sentence_transformers=False, max_length=32,
                                initializer_range=0.2))


def make_st(bert_dir):
    from sentence_transformers import SentenceTransformer, models

    torch.manual_seed(0)
    tr = models.Transformer(bert_dir, max_seq_length=32)
    return SentenceTransformer(modules=[tr, models.Pooling(32, pooling_mode="mean"), models.Dense(32, 16),
                                        models.Normalize()], device="cpu")


def batch(n=6):
    q, p, neg = random_texts(n, seed=1), random_texts(n, seed=2), random_texts(n, seed=3)
    return [ContrastiveExample(a, b, [c]) for a, b, c in zip(q, p, neg)]


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def st_loss_and_grads(st, loss_fn, exs):
    feats = [st.preprocess(texts) if hasattr(st, "preprocess") else st.tokenize(texts)
             for texts in ([e.query for e in exs], [e.positive for e in exs], [e.negatives[0] for e in exs])]
    st.zero_grad(set_to_none=True)
    loss = loss_fn(feats, None)
    loss.backward()
    return float(loss.detach()), grads(st)


def ours_loss_and_grads(st, exs, mini_batch_size):
    dual = DualEncoder.from_sentence_transformer(st)  # the same modules: gradients land on st's parameters
    trainer = ContrastiveTrainer(dual, ContrastiveConfig(temperature=0.05, hard_negatives=1,
                                                         mini_batch_size=mini_batch_size))
    dual.zero_grad(set_to_none=True)
    dual.train()
    loss = trainer.backward(exs)
    return loss, grads(st)


def test_losses_and_gradients_equal_sentence_transformers(bert_dir):
    from sentence_transformers.losses import CachedMultipleNegativesRankingLoss, MultipleNegativesRankingLoss

    st = make_st(bert_dir)
    st.train()
    exs = batch()
    runs = {
        "st_mnrl": st_loss_and_grads(st, MultipleNegativesRankingLoss(st, scale=20.0), exs),
        "st_cmnrl_2": st_loss_and_grads(st, CachedMultipleNegativesRankingLoss(st, scale=20.0, mini_batch_size=2), exs),
        "ours": ours_loss_and_grads(st, exs, 0),
        "ours_gradcache_2": ours_loss_and_grads(st, exs, 2),
        "ours_gradcache_4": ours_loss_and_grads(st, exs, 4),
    }
    ref_loss, ref_grads = runs["st_mnrl"]
    assert ref_loss > 0.1 and len(ref_grads) == len(list(st.parameters())) - 2  # all but the unused BERT pooler
    for name, (loss, g) in runs.items():
        assert abs(loss - ref_loss) < 1e-5, (name, loss, ref_loss)
        assert g.keys() == ref_grads.keys(), name
        for k in g:
            torch.testing.assert_close(g[k], ref_grads[k], atol=1e-6, rtol=1e-4, msg=f"{name}: {k}")


def test_gradcache_replays_dropout(bert_dir):
    """With dropout on, the re-embedding in GradCache's third step must see the same dropout masks as the
    first: the gradient then equals that of the loss on the first step's embeddings."""
    st = make_st(bert_dir)
    for m in st.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.3
    dual = DualEncoder.from_sentence_transformer(st)
    dual.train()
    exs = batch(4)
    queries, docs = [e.query for e in exs], [e.positive for e in exs] + [e.negatives[0] for e in exs]
    torch.manual_seed(7)
    loss = cached_info_nce_backward(dual, queries, docs, 0.05, mini_batch_size=3)
    cached = grads(st)
    # the same dropout draws, taken in the same order, with ordinary autograd
    dual.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    q = torch.cat([dual.embed_queries(queries[s:s + 3]) for s in range(0, 4, 3)])
    d = torch.cat([dual.embed_docs(docs[s:s + 3]) for s in range(0, 8, 3)])
    from jmlr.retriever.contrastive import info_nce

    ref = info_nce(q, d, 0.05)
    ref.backward()
    assert abs(float(ref) - loss) < 1e-5
    for k, v in grads(st).items():
        torch.testing.assert_close(cached[k], v, atol=1e-6, rtol=1e-4, msg=k)


def test_trainer_with_gradcache_trains(bert_dir):
    st = make_st(bert_dir)
    dual = DualEncoder.from_sentence_transformer(st)
    exs = batch(8)
    losses = ContrastiveTrainer(dual, ContrastiveConfig(lr=5e-3, batch_size=8, epochs=6, mini_batch_size=3,
                                                        warmup_ratio=0.0)).train(exs, progress=False)
    assert len(losses) == 6 and losses[-1] < losses[0]
    with pytest.raises(ValueError, match="mini_batch_size must be >= 0"):
        ContrastiveTrainer(dual, ContrastiveConfig(mini_batch_size=-1))
