"""Index construction: ``make_index`` (empty index by type name) and ``build_index`` (encode a corpus + add)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from jmlr.core.fs import FolderLockedError, run_folder_lock

from .base import corpus_parts
from .bm25 import BM25Index
from .exact import ExactIndex
from .faiss_index import FaissIndex
from .store import EmbeddingStore

INDEX_TYPES = ("exact", "flat", "ivf", "ivfpq", "hnsw", "sq8", "sq16", "bm25")


def make_index(index_type: str, dim: int, metric: str = "ip", **kwargs):
    """An empty index: ``exact`` (kernel top-k), a faiss type (flat, ivf, ivfpq, hnsw, sq8, sq16) or any faiss
    ``index_factory`` string (``"IVF4096,PQ64x4fs"``, ``"HNSW32,Flat"``)."""
    t = str(index_type).lower()
    if t == "exact":
        return ExactIndex(dim, metric, **kwargs)
    if t == "bm25":
        raise ValueError("bm25 indexes hold texts, not vectors: use jmlr.index.BM25Index")
    return FaissIndex(dim, index_type, metric, **kwargs)  # a faiss index_factory string keeps its case


def build_index(encoder, corpus, *, index_type: str = "flat", metric: str = "ip", out: str | os.PathLike | None = None,
                store_dir: str | os.PathLike | None = None, dtype: str = "float32", batch_size: int = 64,
                chunk_size: int = 4096, progress: bool = True, info: dict[str, Any] | None = None,
                **index_kwargs):
    """Encode ``corpus`` with ``encoder``'s doc tower and index it; save to ``out`` when given.

    ``corpus`` is a ``jmlr.data.Corpus`` or an ``(ids, texts)`` pair. With ``store_dir`` the embeddings go
    to a memory-mapped :class:`~jmlr.index.store.EmbeddingStore` chunk by chunk, so an interrupted build
    resumes where it stopped (an ``exact`` index then searches the memmap directly). ``index_type="bm25"``
    builds a :class:`jmlr.index.bm25.BM25Index` and ignores ``encoder``. The saved metadata records the
    encoder and corpus fingerprints.
    """
    ids, texts, corpus_fp = corpus_parts(corpus)
    if not ids:
        raise ValueError("the corpus is empty")
    info = dict(info or {})
    if index_type == "bm25":
        index = BM25Index(**index_kwargs)
        index.add(ids, texts)
        index.corpus_fingerprint = corpus_fp
        index.info.update(info)
    else:
        enc_fp = encoder.fingerprint("doc")

        def encode(chunk):
            return encoder.encode_docs(chunk, batch_size=batch_size, progress=False)

        if store_dir is not None:
            emb = EmbeddingStore(store_dir).encode(encode, texts, fingerprint=f"{enc_fp}/{corpus_fp}", dtype=dtype,
                                                   chunk_size=chunk_size, progress=progress)
        else:
            emb = encoder.encode_docs(texts, batch_size=batch_size, progress=progress)  # (N, d)
        if index_type == "exact" and store_dir is not None:
            index = ExactIndex.from_array(ids, emb, **index_kwargs)
        else:
            if index_type == "exact":
                index_kwargs.setdefault("dtype", dtype)
            index = make_index(index_type, emb.shape[1], metric, **index_kwargs)
            index.add(ids, emb)
        index.encoder_fingerprint = enc_fp
        index.corpus_fingerprint = corpus_fp
        info.setdefault("encoder", getattr(encoder, "name_or_path", None))
        info.update(pooling=encoder.pooling, normalize=encoder.normalize, max_length=encoder.max_length)
        index.info.update(info)
    if out is not None:
        index.save(out)
    return index


def remove_store(store_dir: str | os.PathLike) -> None:
    """Delete an embedding store folder once its index is saved (left alone while another build uses it)."""
    import logging

    p = Path(store_dir)
    if not p.is_dir():
        return
    lock = run_folder_lock(p, f"embedding store {p}")
    try:
        lock.acquire()
    except FolderLockedError as e:
        logging.getLogger(__name__).warning("not removing %s: %s", p, e)
        return
    try:
        shutil.rmtree(p)
    finally:
        lock.release()
