"""Corpus indexes behind one protocol, and the asynchronous refresher.

* :class:`ExactIndex` -- brute force through ``jmlr.kernels.topk.topk`` (CPU/GPU, fp32/fp16 storage).
* :class:`FaissIndex` -- Flat, IVF-Flat, IVF-PQ, HNSW, SQ int8/fp16; GPU when faiss has GPUs.
* :class:`BM25Index` -- lexical BM25 (``bm25s``) over texts instead of vectors.
* :class:`ShardedIndex` -- one shard per ``torch.distributed`` rank, merged top-k.
* :class:`EmbeddingStore` -- memory-mapped doc embeddings, resumable chunked encoding.
* :class:`AsyncRefresher` -- background re-encoding with a doc-tower snapshot, atomic swap, staleness;
  :func:`policy_from_config` / :func:`parse_policy` -- when it refreshes.
* :func:`load_index` -- load any saved kind, refusing a mismatched encoder or corpus unless forced.

Names are imported lazily (``import jmlr.index`` does not import torch or faiss).
"""
from __future__ import annotations

from jmlr.core.lazy import lazy_getattr

_LAZY = {
    "Index": "jmlr.index.base",
    "BaseIndex": "jmlr.index.base",
    "IndexMismatchError": "jmlr.index.base",
    "load_index": "jmlr.index.base",
    "read_meta": "jmlr.index.base",
    "corpus_parts": "jmlr.index.base",
    "BM25Index": "jmlr.index.bm25",
    "ExactIndex": "jmlr.index.exact",
    "FaissIndex": "jmlr.index.faiss_index",
    "ShardedIndex": "jmlr.index.sharded",
    "shard_range": "jmlr.index.sharded",
    "EmbeddingStore": "jmlr.index.store",
    "make_index": "jmlr.index.build",
    "build_index": "jmlr.index.build",
    "INDEX_TYPES": "jmlr.index.build",
    "AsyncRefresher": "jmlr.index.refresh",
    "RefreshError": "jmlr.index.refresh_record",
    "RefreshRecord": "jmlr.index.refresh_record",
    "probe_agreement": "jmlr.index.refresh_record",
    "RefreshPolicy": "jmlr.index.refresh_policy",
    "parse_policy": "jmlr.index.refresh_policy",
    "policy_from_config": "jmlr.index.refresh_policy",
    "RerankSearcher": "jmlr.index.rerank",
    "rescore": "jmlr.index.rerank",
}

__all__ = sorted(_LAZY)


__getattr__ = lazy_getattr("jmlr.index", _LAZY)
