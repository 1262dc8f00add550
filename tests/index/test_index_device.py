"""Tensor queries stay on their device (issue 16): the exact index searches where its rows live and returns
results where the queries are; int ids map to a tensor without a host round trip."""
import numpy as np
import pytest
import torch

from jmlr.index import ExactIndex

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU on this machine)")


def _index(n=257, d=24, ids=None, **kw):
    rng = np.random.default_rng(4)
    docs = rng.standard_normal((n, d)).astype(np.float32)
    idx = ExactIndex(d, **kw)
    idx.add(list(range(100, 100 + n)) if ids is None else ids, docs)
    return idx, rng.standard_normal((9, d)).astype(np.float32)


def test_tensor_queries_equal_array_queries():
    idx, q = _index()
    s_np, p_np = idx.search_positions(q, 7)
    qt = torch.from_numpy(q).t().contiguous().t()  # same values; the tensor path makes it contiguous
    s_t, p_t = idx.search_positions(qt[:, :], 7)
    assert torch.equal(p_t, p_np) and torch.allclose(s_t, s_np)
    s_big, p_big = idx.search_positions(torch.from_numpy(q), 300)  # k > n: empty slots
    assert (p_big[:, 257:] == -1).all() and torch.isinf(s_big[:, 257:]).all()
    with pytest.raises(ValueError, match="row 2 holds NaN"):
        bad = torch.from_numpy(q.copy())
        bad[2, 0] = float("nan")
        idx.search_positions(bad, 3)
    with pytest.raises(ValueError, match="dimension 5, expected 24"):
        idx.search_positions(torch.zeros(2, 5), 3)


def test_lookup_tensor_matches_lookup():
    idx, q = _index()
    _, pos = idx.search_positions(torch.from_numpy(q), 5)
    pos[0, 0] = -1
    got = idx.lookup_tensor(pos)
    assert got.dtype == torch.int64 and (got.numpy() == idx.lookup(pos)).all() and got[0, 0] == -1
    idx.add([9999], np.ones((1, 24), dtype=np.float32))  # the cache follows new rows
    assert int(idx.lookup_tensor(torch.tensor([257]))[0]) == 9999
    str_idx, _ = _index(n=5, ids=[f"p{i}" for i in range(5)])
    with pytest.raises(ValueError, match="int ids"):
        str_idx.lookup_tensor(torch.tensor([0]))
    assert (ExactIndex(3).lookup_tensor(torch.tensor([[0, 1]])) == -1).all()


@pytest.mark.gpu
@CUDA
def test_exact_index_on_cuda_matches_cpu():
    cpu, q = _index()
    gpu, _ = _index(device="cuda")
    assert gpu.embeddings.device.type == "cuda"
    s_c, p_c = cpu.search_positions(torch.from_numpy(q), 10)
    s_g, p_g = gpu.search_positions(torch.from_numpy(q).cuda(), 10)
    assert s_g.device.type == "cuda" and p_g.device.type == "cuda"
    assert torch.equal(p_g.cpu(), p_c)
    torch.testing.assert_close(s_g.cpu(), s_c, rtol=1e-4, atol=1e-4)
    ids = gpu.lookup_tensor(p_g)
    assert ids.device.type == "cuda" and (ids.cpu().numpy() == cpu.lookup(p_c)).all()
    s_cq, p_cq = gpu.search_positions(torch.from_numpy(q), 10)  # CPU queries, GPU rows: results on the CPU
    assert s_cq.device.type == "cpu" and torch.equal(p_cq, p_c)


@pytest.mark.gpu
@CUDA
def test_retrieval_state_on_cuda(tmp_path):
    """The trainer's RetrievalState(device=cuda): the exact index lives on the GPU, queries and results stay there."""
    from jmlr.config import load_config
    from jmlr.retriever import DualEncoder
    from jmlr.retriever.testing import random_texts, tiny_encoder_dir
    from jmlr.train.retrieval import RetrievalState

    try:
        cfg = load_config(None, ["refresh.every=0", "refresh.probe_size=8", "optim.precision=fp32"])
    except ValueError:
        cfg = load_config(None, ["refresh.every=0", "refresh.probe_size=8", "optim.precision=fp32"])
    dual = DualEncoder.from_pretrained(tiny_encoder_dir(tmp_path / "enc")).to("cuda")
    texts = random_texts(40, seed=2, min_words=6)
    cpu_state = RetrievalState(dual, texts, cfg)
    gpu_state = RetrievalState(dual, texts, cfg, device=torch.device("cuda"))
    cpu_state.build()
    gpu_state.build()
    try:
        assert gpu_state.refresher.index.embeddings.device.type == "cuda"
        with torch.no_grad():
            q = dual.embed_queries(texts[:5]).float()  # (5, d) on cuda
        s_g, r_g = gpu_state.search(q, 4)
        s_c, r_c = cpu_state.search(q.cpu(), 4)
        assert s_g.device.type == "cuda" and r_g.device.type == "cuda"
        assert torch.equal(r_g.cpu(), r_c)
        torch.testing.assert_close(s_g.cpu(), s_c, rtol=1e-4, atol=1e-4)
        assert gpu_state.embeddings(r_g).device.type == "cuda"
    finally:
        cpu_state.close()
        gpu_state.close()
