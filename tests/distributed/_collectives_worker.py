"""Run under torchrun (2 ranks): the collectives' device rule for ShardedIndex and RetrievalState.

Usage: python -m torch.distributed.run --standalone --nproc_per_node 2 _collectives_worker.py BACKEND ENC_DIR OUT
BACKEND is gloo (CPU tensors) or nccl (each rank's own GPU). Every tensor handed to a collective is recorded;
each rank writes OUT/rank{r}.json with the devices seen and its search results.
"""
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


def _config():
    from jmlr.config import load_config

    base = ["index.type=exact", "refresh.every=0", "refresh.probe_size=8"]
    try:  # fp32 encoding, whichever name the precision key has
        return load_config(None, base + ["optim.precision=fp32"])
    except ValueError:
        return load_config(None, base + ["optim.precision=fp32"])


def main(backend: str, enc_dir: str, out: str) -> None:
    torch.set_num_threads(1)
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    from jmlr.index import ExactIndex, ShardedIndex, shard_range
    from jmlr.index.sharded import collective_device
    from jmlr.retriever import DualEncoder
    from jmlr.retriever.testing import random_texts
    from jmlr.train.retrieval import RetrievalState

    dev = collective_device()
    qdev = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")

    seen: list[str] = []  # devices of every tensor given to a collective

    def record(fn):
        def wrapped(*args, **kw):
            for a in args:
                for t in (a if isinstance(a, (list, tuple)) else [a]):
                    if isinstance(t, torch.Tensor):
                        seen.append(str(t.device))
            return fn(*args, **kw)
        return wrapped

    for name in ("all_gather", "all_reduce", "broadcast", "all_gather_into_tensor"):
        setattr(dist, name, record(getattr(dist, name)))

    # 1. ShardedIndex over int ids, queries on the accelerator (gloo: the CPU)
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((101, 16)).astype(np.float32)
    queries = torch.from_numpy(rng.standard_normal((3 + 2 * world, 16)).astype(np.float32))
    s, e = shard_range(len(docs))
    local = ExactIndex(16, device=str(qdev) if qdev.type != "cpu" else None)
    local.add(list(range(s, e)), docs[s:e])
    index = ShardedIndex(local)
    mine = (queries[:3] if rank == 0 else queries[3:]).to(qdev)
    scores, ids = index.search_tensors(mine, 5)
    n_total = len(index)
    # str ids: the object-gather path (not the training path) still agrees
    local_s = ExactIndex(16)
    local_s.add([f"d{i}" for i in range(s, e)], docs[s:e])
    _, str_ids = ShardedIndex(local_s).search(mine, 5)

    # 2. RetrievalState: sharded exact index on `qdev`, queries on `qdev`, results on `qdev`
    dual = DualEncoder.from_pretrained(enc_dir).to(qdev)
    texts = random_texts(37, seed=3, min_words=6)
    state = RetrievalState(dual, texts, _config(), rank=rank, world=world, device=qdev)
    state.build()
    with torch.no_grad():
        q = dual.embed_queries(texts[rank::world][:4]).float()  # (4, d) on qdev
    r_scores, r_rows = state.search(q, 6)
    state_index_device = str(state.refresher.index.embeddings.device)
    state.close()

    Path(out, f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "world": world, "backend": dist.get_backend(), "collective_device": str(dev),
        "index_device": str(local.embeddings.device),
        "seen": sorted(set(seen)), "n_total": n_total,
        "scores_device": str(scores.device), "ids_device": str(ids.device),
        "scores": scores.cpu().tolist(), "ids": ids.cpu().tolist(), "str_ids": str_ids.tolist(),
        "queries": mine.cpu().tolist(), "shard": [s, e],
        "r_device": [str(r_scores.device), str(r_rows.device)], "r_scores": r_scores.cpu().tolist(),
        "r_rows": r_rows.cpu().tolist(), "r_queries": q.cpu().tolist(),
        "state_index_device": state_index_device,
    }))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:4])
