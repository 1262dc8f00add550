"""The work of one refresh: snapshot the doc tower, encode the corpus (or some rows) with the snapshot, build the
new index (the :class:`~jmlr.index.refresh.AsyncRefresher` takes these methods from :class:`SnapshotBuild`).

The snapshot copy runs in the training thread between steps; encoding and building run in the worker (a thread
of this process; with ``worker="process"`` the encoding runs in :mod:`jmlr.index.refresh_worker`).
"""
from __future__ import annotations

import contextlib
import time
from typing import Any, Callable

import torch

from jmlr.core.precision import autocast
from jmlr.retriever.embedding import embedding_state, encode_token_lists, tensor_digest

from .build import make_index
from .exact import ExactIndex
from .refresh_record import RefreshRecord


def _amp_name(dtype: Any) -> str | None:
    """``None`` (fp32), ``"bfloat16"`` or ``"float16"``: a picklable name for the worker process."""
    names = {None: None, "fp32": None, "float32": None, torch.float32: None, "bf16": "bfloat16",
             "bfloat16": "bfloat16", torch.bfloat16: "bfloat16", "fp16": "float16", "float16": "float16",
             torch.float16: "float16"}
    try:
        return names[dtype]
    except (KeyError, TypeError):
        raise ValueError(f"autocast_dtype must be None, 'bfloat16', 'float16' or a torch dtype, got {dtype!r}") from None


class SnapshotBuild:
    """Uses the refresher's ``dual``, ``ids``, ``_snap`` (the doc-tower snapshot), ``_tokens``, ``batch_size``,
    ``autocast_dtype``, ``probe_rows``, ``index_type`` / ``index_kwargs`` / ``index_factory`` and ``budget``."""

    def _copy_weights(self) -> None:
        """Copy the live doc tower into the worker's snapshot (between steps; the worker is idle).

        One thread: the copy is memory-bound, and an OpenMP team per tensor costs more than it saves (on a busy
        2-core machine, 2 threads made the MiniLM copy 18x slower: 0.63 s vs 0.035 s).
        """
        dst = self._snap.doc_model.state_dict(keep_vars=True)
        with torch.no_grad(), _threads(1):
            for name, src in self.dual.doc_model.state_dict(keep_vars=True).items():
                dst[name].data.copy_(src.data)

    def _snapshot_fingerprint(self) -> str:
        d = self._snap
        return tensor_digest(embedding_state(d.doc_model), {"pooling": d.pooling, "normalize": d.normalize,
                                                        "max_length": d.max_length, "prefix": d.doc_prefix})

    def _amp(self):
        return autocast(self.autocast_dtype, self._snap.doc_model)

    def _initial_embeddings(self, cache):
        """Version 0's ``(n, d)`` embeddings: from ``cache`` (an :class:`~jmlr.index.embedding_cache.EmbeddingCache`)
        when it holds this doc tower's vectors of this corpus at this dtype, else encoded here (and stored)."""
        if cache is None:
            t0 = time.perf_counter()
            emb = self._encode_here()
            self.full_encode_s = time.perf_counter() - t0
            return emb
        key = cache.key(self._snapshot_fingerprint(), self.corpus_fingerprint, self.autocast_dtype)
        emb = cache.get(key, rows=len(self.ids))
        if emb is not None:
            self.initial_from_cache = True
            self.full_encode_s = (cache.meta(key) or {}).get("encode_s")
            return emb
        t0 = time.perf_counter()
        emb = self._encode_here()
        self.full_encode_s = time.perf_counter() - t0
        cache.put(key, emb, encode_s=self.full_encode_s)
        return emb

    def _encode_here(self, rows=None):
        """Encode the corpus (or the positions ``rows``) with the snapshot in the calling thread."""
        d = self._snap
        toks = self._tokens if rows is None else [self._tokens[i] for i in rows]
        with self._amp():
            return encode_token_lists(d.doc_model, toks, pad_id=d.tokenizer.pad_token_id,
                                      pooling=d.pooling, normalize=d.normalize, batch_size=self.batch_size,
                                      progress=self.progress, desc="refresh: encode corpus",
                                      should_stop=self._cancel.is_set)

    def _encode_and_build(self, rec: RefreshRecord, encode: Callable[[], Any]):
        """Encode (all rows, or ``rec._rows``), splice into the served embeddings if partial, build the index."""
        t0 = time.perf_counter()
        fresh = encode()
        rec.encode_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if rec._rows is None:
            emb = fresh
        else:
            emb = self._served.clone()  # the served rows stay untouched: the new index gets its own copy
            emb[torch.from_numpy(rec._rows)] = fresh
        index = self._build(emb, rec.version, self._snapshot_fingerprint())
        rec.build_s = time.perf_counter() - t0
        return emb, index

    def _encode_probe_with(self, model):
        d = self._snap
        with self._amp():
            return encode_token_lists(model, [self._tokens[i] for i in self.probe_rows],
                                      pad_id=d.tokenizer.pad_token_id, pooling=d.pooling, normalize=d.normalize,
                                      batch_size=self.batch_size)

    def _build(self, emb, version: int, fingerprint: str):
        if self.index_factory is not None:
            index = self.index_factory(emb.shape[1])
        elif self.budget is not None and self.index_type == "exact" and \
                self.index_kwargs.get("dtype", "float32") in ("float32", "fp32"):
            # budgeted mode keeps ``emb`` as the served rows: the index wraps it instead of a second copy (each
            # refresh builds a new ``emb``, so the served index's rows are never written)
            kw = {k: v for k, v in self.index_kwargs.items() if k != "dtype"}
            index = ExactIndex.from_array(self.ids, emb.numpy(), **kw)
        else:
            index = make_index(self.index_type, emb.shape[1], **self.index_kwargs)
        if not len(index):
            index.add(self.ids, emb)
        index.version = version
        index.encoder_fingerprint = fingerprint
        index.corpus_fingerprint = self.corpus_fingerprint
        return index


@contextlib.contextmanager
def _threads(n: int):
    """Run a block with ``n`` intra-op threads in this thread, then restore the count."""
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            torch.set_num_threads(before)
