"""DualEncoder.from_sentence_transformer: every ST pooling mode, Dense / Normalize modules, prompts, two towers.

Tiny random BERTs are built here and wrapped in SentenceTransformer(modules=[...]); embeddings must equal
SentenceTransformer.encode on the same texts within 1e-5.
"""
import pytest
import torch

from jmlr.retriever import DualEncoder
from jmlr.retriever.embedding import pool
from jmlr.retriever.pooling import POOLINGS
from jmlr.retriever.st_layout import prompts_to_prefixes


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    from jmlr.retriever.testing import tiny_encoder_dir

    return str(tiny_encoder_dir(tmp_path_factory.mktemp("bert"), sentence_transformers=False, max_length=48))


def make_st(bert_dir, pooling="mean", dense=(), normalize=True, prompts=None, default_prompt_name=None, seed=0):
    from sentence_transformers import SentenceTransformer, models

    torch.manual_seed(seed)
    tr = models.Transformer(bert_dir, max_seq_length=48)
    dim = tr.get_embedding_dimension()
    mods = [tr, models.Pooling(dim, pooling_mode=pooling)]
    width = dim * (len(pooling) if isinstance(pooling, tuple) else 1)
    for out in dense:
        mods.append(models.Dense(width, out))
        width = out
    if normalize:
        mods.append(models.Normalize())
    return SentenceTransformer(modules=mods, device="cpu", prompts=prompts, default_prompt_name=default_prompt_name)


def st_encode(model, texts, prompt=None):
    return model.encode(texts, prompt=prompt, convert_to_tensor=True, batch_size=5).cpu().float()


@pytest.mark.parametrize("pooling", list(POOLINGS) + [("cls", "mean")])
@pytest.mark.parametrize("dense,normalize", [((), True), ((24,), True), ((40, 16), False)])
def test_encodings_equal_sentence_transformers(bert_dir, texts, pooling, dense, normalize):
    st = make_st(bert_dir, pooling, dense, normalize)
    dual = DualEncoder.from_sentence_transformer(st)
    assert dual.shared and dual.normalize is normalize and dual.max_length == 48
    ref = st_encode(st, texts)
    ours = dual.encode_docs(texts, batch_size=7, progress=False)
    assert ours.shape == ref.shape == (len(texts), dense[-1] if dense else 32 * (2 if isinstance(pooling, tuple) else 1))
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dual.encode_queries(texts[:6], progress=False), ref[:6], atol=1e-5, rtol=1e-5)
    assert dual.dim == ours.shape[1]
    # embed_* (with gradient) agrees with encode_* and reaches the Dense weights
    dual.train()
    e = dual.embed_docs(texts[:4])
    torch.testing.assert_close(e.detach(), ref[:4], atol=1e-5, rtol=1e-5)
    e.sum().backward()
    if dense:
        assert st[2].linear.weight.grad is not None and st[2].linear.weight.grad.abs().sum() > 0


def test_towers_are_the_instance_modules(bert_dir, texts):
    st = make_st(bert_dir, "mean", (16,))
    dual = DualEncoder.from_sentence_transformer(st)
    assert set(map(id, dual.parameters())) == set(map(id, st.parameters()))


def test_prompts_become_prefixes(bert_dir, texts):
    st = make_st(bert_dir, "mean", prompts={"query": "query: ", "passage": "passage: "})
    dual = DualEncoder.from_sentence_transformer(st)
    assert (dual.query_prefix, dual.doc_prefix) == ("query: ", "passage: ")
    torch.testing.assert_close(dual.encode_queries(texts, progress=False), st_encode(st, texts, "query: "),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dual.encode_docs(texts, progress=False),
                               st_encode(st, texts, st.prompts["passage"]), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(dual.encode_docs(texts[:3], progress=False), st_encode(st, texts[:3]), atol=1e-4)
    # the config keys (retriever.query_prefix / doc_prefix) override; "" turns a prompt off
    dual2 = DualEncoder.from_sentence_transformer(st, query_prefix="", doc_prefix="Represent: ")
    assert (dual2.query_prefix, dual2.doc_prefix) == ("", "Represent: ")


def test_prompt_rules():
    assert prompts_to_prefixes({"query": "q: ", "document": "", "passage": "p: "}) == ("q: ", "p: ")
    assert prompts_to_prefixes({"query": "q: ", "document": "d: "}) == ("q: ", "d: ")
    assert prompts_to_prefixes({"query": "", "document": ""}) == ("", "")
    assert prompts_to_prefixes({"sts": "Represent: "}, "sts") == ("Represent: ", "Represent: ")
    assert prompts_to_prefixes({"query": "q: "}, "query") == ("q: ", "")  # a query default is not a doc prompt
    assert prompts_to_prefixes(None) == ("", "")


def test_two_towers(bert_dir, texts, tmp_path):
    from jmlr.retriever.testing import tiny_encoder_dir

    other = str(tiny_encoder_dir(tmp_path / "other", sentence_transformers=False, max_length=48, seed=5))
    q_st = make_st(bert_dir, "lasttoken", (16,), prompts={"query": "query: "})
    d_st = make_st(other, "lasttoken", (16,), prompts={"document": "doc: "}, seed=1)
    dual = DualEncoder.from_sentence_transformer(q_st, d_st)
    assert not dual.shared and (dual.query_prefix, dual.doc_prefix) == ("query: ", "doc: ")
    torch.testing.assert_close(dual.encode_queries(texts, progress=False), st_encode(q_st, texts, "query: "),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(dual.encode_docs(texts, progress=False), st_encode(d_st, texts, "doc: "),
                               atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="pooling"):
        DualEncoder.from_sentence_transformer(q_st, make_st(other, "mean", (16,)))
    with pytest.raises(ValueError, match="16-d|24-d"):
        DualEncoder.from_sentence_transformer(q_st, make_st(other, "lasttoken", (24,)))


@pytest.mark.parametrize("shared", [True, False])
def test_save_load_round_trip_with_dense(bert_dir, texts, tmp_path, shared):
    from sentence_transformers import SentenceTransformer

    st = make_st(bert_dir, "weightedmean", (24,), prompts={"query": "query: ", "document": "passage: "})
    dual = DualEncoder.from_sentence_transformer(st)
    if not shared:
        dual.untie()
        with torch.no_grad():
            dual.doc_model.post[0].linear.weight.mul_(1.5)
    out = dual.save_pretrained(tmp_path / "ret")
    back = DualEncoder.from_pretrained(out)
    assert (back.shared, back.pooling, back.dim, back.query_prefix, back.doc_prefix) == \
        (shared, "weightedmean", 24, "query: ", "passage: ")
    torch.testing.assert_close(back.encode_docs(texts, progress=False), dual.encode_docs(texts, progress=False))
    torch.testing.assert_close(back.encode_queries(texts, progress=False), dual.encode_queries(texts, progress=False))
    assert back.fingerprint("doc") == dual.fingerprint("doc")
    if shared:  # the saved folder is a sentence-transformers model too, prompts included
        ref = SentenceTransformer(str(out), device="cpu")
        torch.testing.assert_close(st_encode(ref, texts, ref.prompts["document"]),
                                   dual.encode_docs(texts, progress=False), atol=1e-5, rtol=1e-5)
        st_folder = tmp_path / "st"
        st.save(str(st_folder))  # and an ST-saved folder with Dense loads through from_pretrained
        again = DualEncoder.from_pretrained(st_folder)
        assert (again.pooling, again.dim, again.doc_prefix) == ("weightedmean", 24, "passage: ")
        torch.testing.assert_close(again.encode_docs(texts, progress=False), dual.encode_docs(texts, progress=False),
                                   atol=1e-5, rtol=1e-5)


def test_refused_layouts_are_named(bert_dir):
    from sentence_transformers import SentenceTransformer, models

    tr = models.Transformer(bert_dir, max_seq_length=48)
    with pytest.raises(ValueError, match="module 1 is nothing; expected a Pooling"):
        DualEncoder.from_sentence_transformer(SentenceTransformer(modules=[tr], device="cpu"))
    bad = SentenceTransformer(modules=[tr, models.Pooling(32, include_prompt=False)], device="cpu")
    with pytest.raises(ValueError, match="include_prompt"):
        DualEncoder.from_sentence_transformer(bad)
    odd = SentenceTransformer(modules=[tr, models.Pooling(32), models.WeightedLayerPooling(32, num_hidden_layers=2)],
                              device="cpu")
    with pytest.raises(ValueError, match="module 2 is WeightedLayerPooling"):
        DualEncoder.from_sentence_transformer(odd)


def test_pool_modes_by_hand():
    h = torch.tensor([[[1.0], [3.0], [5.0]], [[2.0], [4.0], [9.0]]])  # (2, 3, 1); row 1 has one pad token
    m = torch.tensor([[1, 1, 1], [1, 1, 0]])
    assert pool(h, m, "cls").flatten().tolist() == [1.0, 2.0]
    assert pool(h, m, "mean").flatten().tolist() == [3.0, 3.0]
    assert pool(h, m, "max").flatten().tolist() == [5.0, 4.0]
    assert pool(h, m, "lasttoken").flatten().tolist() == [5.0, 4.0]
    torch.testing.assert_close(pool(h, m, "mean_sqrt_len_tokens").flatten(), torch.tensor([9 / 3 ** 0.5, 6 / 2 ** 0.5]))
    torch.testing.assert_close(pool(h, m, "weightedmean").flatten(), torch.tensor([22 / 6, 10 / 3]))
    assert pool(h, m, "cls+max").shape == (2, 2)
    with pytest.raises(ValueError, match="unknown pooling"):
        pool(h, m, "median")
