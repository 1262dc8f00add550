"""faiss-gpu step of scripts/gpu_check.sh: a flat index on this process's GPU (jmlr.index.FaissIndex, the rank's
own GPU) against exact search, on 200k x 384 unit vectors; writes a small JSON.

    python scripts/gpu_check_faiss.py OUT.json
"""
import json
import sys
import time

import numpy as np
import torch

from jmlr.index import ExactIndex, FaissIndex


def main(out: str) -> None:
    rng = np.random.default_rng(0)
    docs = rng.standard_normal((200_000, 384)).astype(np.float32)
    docs /= np.linalg.norm(docs, axis=1, keepdims=True)
    q = docs[rng.choice(len(docs), 256, replace=False)] + 0.1 * rng.standard_normal((256, 384)).astype(np.float32)
    ids = list(range(len(docs)))
    t0 = time.perf_counter()
    gpu = FaissIndex(384, "flat", use_gpu=True)
    gpu.add(ids, docs)
    build_s = time.perf_counter() - t0
    exact = ExactIndex(384, device="cuda")
    exact.add(ids, docs)
    gpu.search(q, 10)  # warm-up
    t0 = time.perf_counter()
    _, got = gpu.search(q, 10)
    faiss_s = time.perf_counter() - t0
    _, want = exact.search(torch.from_numpy(q).cuda(), 10)
    recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got.tolist(), want.tolist())]))
    res = {"device": gpu.device, "n": len(docs), "d": 384, "batch": 256, "k": 10, "build_s": round(build_s, 3),
           "search_s": round(faiss_s, 4), "recall_at_10_vs_exact": recall}
    with open(out, "w") as f:
        json.dump(res, f, indent=2)
    print(json.dumps(res))
    if not (gpu.device.startswith("cuda") and recall >= 0.999):
        raise SystemExit(f"faiss-gpu check failed: {res}")


if __name__ == "__main__":
    main(sys.argv[1])
