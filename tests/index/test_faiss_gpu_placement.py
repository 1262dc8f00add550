"""faiss-gpu puts each rank's shard on that rank's own GPU (issue 16), not a copy on every GPU of the node."""
import types

import numpy as np
import pytest
import torch

from jmlr.index import faiss_index
from jmlr.index.faiss_index import FaissIndex, num_gpus, rank_gpu


class FakeGpuFaiss:
    """Records index_cpu_to_gpu calls; the all-GPUs copy must not be used."""

    def __init__(self):
        self.calls = []

    def StandardGpuResources(self):  # noqa: N802 - faiss's name
        return types.SimpleNamespace(kind="res")

    def index_cpu_to_gpu(self, res, gpu, index):
        self.calls.append((res.kind, gpu, index))
        return types.SimpleNamespace(on_gpu=gpu, ntotal=index.ntotal)

    def index_cpu_to_all_gpus(self, index):  # pragma: no cover - the test fails if this is called
        raise AssertionError("index_cpu_to_all_gpus copies the shard onto every GPU")


@pytest.mark.parametrize("local_rank, n_gpus, want", [("0", 8, 0), ("3", 8, 3), ("5", 4, 1), (None, 2, 0)])
def test_each_rank_uses_its_own_gpu(monkeypatch, local_rank, n_gpus, want):
    import faiss

    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    fake = FakeGpuFaiss()
    monkeypatch.setattr(faiss_index, "num_gpus", lambda: n_gpus)
    monkeypatch.setattr(faiss_index, "_GPU_RESOURCES", {})
    raw = faiss.IndexFlatIP(8)
    raw.add(np.eye(8, dtype=np.float32))
    idx = FaissIndex(8, "flat", use_gpu=False)
    idx.use_gpu = "auto"
    monkeypatch.setattr(faiss_index, "_faiss", lambda: fake)
    out = idx._maybe_to_gpu(raw)
    assert fake.calls == [("res", want, raw)] and out.on_gpu == want
    assert idx._on_gpu and idx.gpu == want
    assert rank_gpu(n_gpus) == want


def test_explicit_gpu_and_hnsw_stay(monkeypatch):
    import faiss

    fake = FakeGpuFaiss()
    monkeypatch.setattr(faiss_index, "num_gpus", lambda: 4)
    monkeypatch.setattr(faiss_index, "_GPU_RESOURCES", {})
    idx = FaissIndex(8, "flat", use_gpu=False, gpu=2)
    idx.use_gpu = True
    monkeypatch.setattr(faiss_index, "_faiss", lambda: fake)
    idx._maybe_to_gpu(faiss.IndexFlatIP(8))
    assert [c[1] for c in fake.calls] == [2]
    hnsw = FaissIndex.__new__(FaissIndex)
    hnsw.use_gpu, hnsw.index_type = "auto", "hnsw"
    assert hnsw._maybe_to_gpu("cpu-index") == "cpu-index"  # HNSW has no GPU kind: stays on the CPU


@pytest.mark.gpu
@pytest.mark.skipif(num_gpus() == 0, reason="needs faiss-gpu and a GPU (faiss-cpu or no GPU here)")
def test_faiss_gpu_flat_matches_cpu():
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((500, 32)).astype(np.float32)
    q = rng.standard_normal((7, 32)).astype(np.float32)
    cpu, gpu = FaissIndex(32, "flat", use_gpu=False), FaissIndex(32, "flat", use_gpu=True)
    cpu.add(list(range(500)), docs)
    gpu.add(list(range(500)), docs)
    assert gpu._on_gpu and gpu.gpu == rank_gpu()
    s_c, i_c = cpu.search(q, 10)
    s_g, i_g = gpu.search(q, 10)
    assert (i_c == i_g).all()
    np.testing.assert_allclose(s_g.numpy(), s_c.numpy(), rtol=1e-4, atol=1e-4)
