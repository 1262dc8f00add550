"""Collectives on the process group's device (issue 16): CPU tensors under gloo, each rank's GPU under NCCL.

The 2-rank tests launch ``_collectives_worker.py`` with torchrun; the worker records the device of every tensor
it hands to a collective and checks that queries are never moved off their device.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

HERE = Path(__file__).resolve().parent
WORKER = HERE / "_collectives_worker.py"


def _launch(backend: str, enc: Path, out: Path) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
           backend, str(enc), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def _check_results(res: list[dict], enc: Path) -> None:
    """Both ranks' answers equal a single-process exact search over the whole corpus."""
    from jmlr.index import ExactIndex
    from jmlr.retriever import DualEncoder
    from jmlr.retriever.testing import random_texts

    rng = np.random.default_rng(0)
    docs = rng.standard_normal((101, 16)).astype(np.float32)
    full = ExactIndex(16)
    full.add(list(range(101)), docs)
    for r in res:
        assert r["n_total"] == 101
        want_s, want_i = full.search(np.asarray(r["queries"], dtype=np.float32), 5)
        assert (np.asarray(r["ids"]) == want_i).all()
        assert (np.asarray(r["str_ids"]) == np.char.add("d", want_i.astype(str))).all()
        np.testing.assert_allclose(r["scores"], want_s.numpy(), rtol=1e-5, atol=1e-5)
    assert {i for r in res for i in np.ravel(r["ids"])} & set(range(51, 101)), "hits come from both shards"

    dual = DualEncoder.from_pretrained(str(enc))
    texts = random_texts(37, seed=3, min_words=6)
    emb = dual.encode_docs(texts, progress=False)
    ref = ExactIndex(emb.shape[1])
    ref.add(list(range(len(texts))), emb)
    for r in res:
        want_s, want_i = ref.search(torch.tensor(r["r_queries"]), 6)
        assert (np.asarray(r["r_rows"]) == want_i).all()
        np.testing.assert_allclose(r["r_scores"], want_s.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.distributed
def test_gloo_collectives_use_cpu_tensors(tmp_path):
    from jmlr.retriever.testing import tiny_encoder_dir

    enc = tiny_encoder_dir(tmp_path / "enc")
    out = tmp_path / "out"
    out.mkdir()
    res = _launch("gloo", enc, out)
    for r in res:
        assert r["backend"] == "gloo" and r["world"] == 2
        assert r["collective_device"] == "cpu"
        assert r["seen"] == ["cpu"], f"rank {r['rank']} gave a collective tensors on {r['seen']}"
        assert r["scores_device"] == r["ids_device"] == "cpu"
        assert r["r_device"] == ["cpu", "cpu"]
    _check_results(res, enc)


@pytest.mark.gpu
@pytest.mark.distributed
def test_nccl_collectives_use_each_ranks_gpu(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 CUDA GPUs for 2 NCCL ranks (this machine has {torch.cuda.device_count()})")
    if not torch.distributed.is_nccl_available():
        pytest.skip("this torch build has no NCCL")
    from jmlr.retriever.testing import tiny_encoder_dir

    enc = tiny_encoder_dir(tmp_path / "enc")
    out = tmp_path / "out"
    out.mkdir()
    res = _launch("nccl", enc, out)
    for r in res:
        mine = f"cuda:{r['rank']}"
        assert r["backend"] == "nccl" and r["collective_device"] == mine
        assert r["seen"] == [mine], f"rank {r['rank']} gave NCCL tensors on {r['seen']}"
        assert r["scores_device"] == r["ids_device"] == mine and r["r_device"] == [mine, mine]
        assert r["index_device"] == r["state_index_device"] == mine, "each rank's shard lives on its own GPU"
    _check_results(res, enc)


# ---------------------------------------------------------------------------------------- the rule itself

@pytest.mark.parametrize("backend, types", [("gloo", ("cpu",)), ("nccl", ("cuda",)), ("mpi", ("cpu",)),
                                            ("cpu:gloo,cuda:nccl", ("cpu", "cuda")), ("NCCL", ("cuda",))])
def test_backend_device_types(backend, types):
    from jmlr.index.sharded import backend_device_types

    assert backend_device_types(backend) == types


def test_backend_device_types_unknown():
    from jmlr.index.sharded import backend_device_types

    with pytest.raises(ValueError, match="unknown torch.distributed backend 'carrier-pigeon'"):
        backend_device_types("carrier-pigeon")


def test_collective_device_rule(monkeypatch):
    """gloo -> CPU; NCCL -> the current GPU; a mixed group follows where the data is."""
    import torch.distributed as dist

    from jmlr.index import sharded

    backend = {"b": "gloo"}
    monkeypatch.setattr(sharded, "_dist", lambda: dist)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: backend["b"])
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert sharded.collective_device() == torch.device("cpu")
    assert sharded.collective_device(prefer="cuda:1") == torch.device("cpu")
    backend["b"] = "nccl"
    assert sharded.collective_device() == torch.device("cuda", 3)
    assert sharded.collective_device(prefer="cpu") == torch.device("cuda", 3)
    assert sharded.collective_device(prefer="cuda:1") == torch.device("cuda", 1)
    backend["b"] = "cpu:gloo,cuda:nccl"
    assert sharded.collective_device(prefer="cpu") == torch.device("cpu")
    assert sharded.collective_device(prefer="cuda") == torch.device("cuda", 3)
    assert sharded.collective_device() == torch.device("cuda", 3)
