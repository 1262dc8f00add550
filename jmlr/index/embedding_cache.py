"""A disk cache of a corpus's initial embeddings, keyed by everything that determines them.

Building the first index means encoding the whole corpus with the doc tower as loaded (version 0). For an
off-the-shelf encoder over a fixed corpus those vectors are the same every run: `jmlr demo` re-encoded its 1,800
passages in 42 s per run on a 2-core host. With ``index.embedding_cache=true`` the trainer keeps them in
``$JMLR_CACHE/embeddings`` and reuses them when the key matches.

The key hashes the doc tower's weights and embedding settings (``DualEncoder.fingerprint``-style digest), the
corpus fingerprint (ids and texts in order) and the autocast dtype, so a trained, re-tokenised or re-ordered
encoder or corpus misses the cache instead of reading wrong vectors. Entries are written through a temporary file
and an atomic rename; an unreadable or mismatched entry is treated as a miss and rewritten.

>>> import tempfile, torch
>>> cache = EmbeddingCache(tempfile.mkdtemp())
>>> key = cache.key("enc-fp", "corpus-fp", "fp32")
>>> cache.get(key, rows=2) is None
True
>>> _ = cache.put(key, torch.ones(2, 3), encode_s=0.5)
>>> cache.get(key, rows=2).shape, cache.meta(key)["encode_s"]
(torch.Size([2, 3]), 0.5)
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch

from jmlr.core.fs import atomic_file, write_json_atomic
from jmlr.core.paths import cache_dir

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


def default_folder() -> Path:
    """``$JMLR_CACHE/embeddings`` (``~/.cache/jmlr/embeddings`` by default)."""
    return cache_dir() / "embeddings"


class EmbeddingCache:
    """``key -> (n, d) float32`` matrices in ``folder`` as ``KEY.npy`` plus ``KEY.json`` (shape, timing)."""

    def __init__(self, folder: str | os.PathLike | None = None):
        self.folder = Path(folder) if folder is not None else default_folder()

    @staticmethod
    def key(encoder_fingerprint: str, corpus_fingerprint: str, dtype: str | None) -> str:
        """A 32-hex key of what determines the vectors (the encoder, the corpus, the autocast dtype)."""
        h = hashlib.blake2b(digest_size=16)
        for part in (f"v{FORMAT_VERSION}", encoder_fingerprint, corpus_fingerprint, str(dtype or "fp32")):
            h.update(part.encode())
            h.update(b"\0")
        return h.hexdigest()

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.folder / f"{key}.npy", self.folder / f"{key}.json"

    def meta(self, key: str) -> dict | None:
        """The sidecar of ``key`` (``rows``, ``dim``, ``encode_s``), or None."""
        try:
            return json.loads(self._paths(key)[1].read_text())
        except (OSError, ValueError):
            return None

    def get(self, key: str, rows: int) -> torch.Tensor | None:
        """The cached ``(rows, d)`` float32 matrix, or None on a miss (absent, unreadable, or another shape)."""
        npy, _ = self._paths(key)
        meta = self.meta(key)
        if meta is None or not npy.exists():
            return None
        try:
            arr = np.load(npy, allow_pickle=False)
        except (OSError, ValueError) as e:
            logger.warning("embedding cache: %s is unreadable (%s); re-encoding", npy, e)
            return None
        if arr.dtype != np.float32 or arr.ndim != 2 or arr.shape != (rows, meta.get("dim")) or \
                meta.get("rows") != rows:
            logger.warning("embedding cache: %s holds shape %s, expected (%d, %s); re-encoding", npy, arr.shape,
                           rows, meta.get("dim"))
            return None
        return torch.from_numpy(arr)

    def put(self, key: str, emb: torch.Tensor, encode_s: float | None = None) -> Path:
        """Store ``emb (n, d)`` under ``key`` atomically (the matrix first, then its sidecar)."""
        npy, side = self._paths(key)
        arr = np.ascontiguousarray(emb.detach().float().cpu().numpy())
        with atomic_file(npy) as tmp, open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        write_json_atomic(side, {"format_version": FORMAT_VERSION, "rows": int(arr.shape[0]),
                                 "dim": int(arr.shape[1]), "encode_s": encode_s})
        return npy
