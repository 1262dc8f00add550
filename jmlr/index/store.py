"""Memory-mapped doc embeddings, encoded in chunks and resumable after an interruption.

Layout of a store folder::

    embeddings.npy   (n, d) float32 or float16, preallocated, filled chunk by chunk
    state.json       {"n", "dim", "dtype", "fingerprint", "done", "chunk_size"}

``state.json`` is replaced atomically after each chunk is flushed, so ``done`` never counts rows that
are not on disk. Re-running :meth:`EmbeddingStore.encode` with the same texts and fingerprint continues
at ``done``; a different fingerprint (another encoder or corpus) starts over.

One process encodes into a store at a time (a lock, ``.jmlr.lock`` inside it). Starting over unlinks the old
``embeddings.npy`` and creates a new file, so a finished memmap that an index wraps is never rewritten in place.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from jmlr.core.fs import run_folder_lock, write_json_atomic

from .base import as_float32_matrix

logger = logging.getLogger(__name__)

EMB_NAME = "embeddings.npy"
STATE_NAME = "state.json"
_DTYPES = {"float32": np.float32, "float16": np.float16}


class EmbeddingStore:
    """A folder holding ``(n, d)`` embeddings as a memory-mapped ``.npy``.

    >>> store = EmbeddingStore("runs/emb")                                            # doctest: +SKIP
    >>> emb = store.encode(lambda t: dual.encode_docs(t, progress=False), texts,
    ...                    fingerprint=dual.fingerprint("doc") + corpus.fingerprint())  # (n, d) memmap
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)

    @property
    def state(self) -> dict | None:
        """The saved progress, or None for an empty folder."""
        path = self.directory / STATE_NAME
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e

    @property
    def done(self) -> int:
        """Rows encoded so far."""
        st = self.state
        return int(st["done"]) if st else 0

    @property
    def complete(self) -> bool:
        st = self.state
        return bool(st) and int(st["done"]) == int(st["n"])

    def array(self, writable: bool = False) -> np.memmap:
        """The embeddings as a memmap (read-only unless ``writable``)."""
        path = self.directory / EMB_NAME
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: nothing has been encoded into this store")
        return np.load(path, mmap_mode="r+" if writable else "r")

    def encode(self, encode_fn: Callable[[list[str]], object], texts: Sequence[str], *, fingerprint: str,
               dtype: str = "float32", chunk_size: int = 4096, progress: bool = True) -> np.memmap:
        """Encode ``texts`` with ``encode_fn`` (texts -> (m, d) array/tensor) chunk by chunk; resume if possible.

        Returns the finished ``(n, d)`` read-only memmap.
        """
        from tqdm.auto import tqdm

        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        texts = list(texts)
        n = len(texts)
        self.directory.mkdir(parents=True, exist_ok=True)
        with run_folder_lock(self.directory, f"embedding store {self.directory}"):
            return self._encode(encode_fn, texts, n, fingerprint, dtype, chunk_size, progress)

    def _encode(self, encode_fn, texts, n, fingerprint, dtype, chunk_size, progress) -> np.memmap:
        from tqdm.auto import tqdm

        st = self.state
        start, dim = 0, None
        if st and (st.get("n"), st.get("dtype"), st.get("fingerprint")) == (n, dtype, fingerprint) \
                and (self.directory / EMB_NAME).is_file():
            start, dim = int(st["done"]), int(st["dim"])
            if start:
                logger.info("%s: resuming at row %d of %d", self.directory, start, n)
        elif st:
            logger.warning("%s: stored embeddings are for another corpus, encoder or dtype; starting over",
                           self.directory)
            (self.directory / STATE_NAME).unlink()
        mm = self.array(writable=True) if start and dim else None
        bar = tqdm(total=n, initial=start, desc="encode corpus", unit="doc", disable=not progress)
        for s in range(start, n, chunk_size):
            chunk = texts[s:s + chunk_size]
            emb = as_float32_matrix(encode_fn(chunk), dim, what=f"embeddings of rows {s}..{s + len(chunk) - 1}")
            if emb.shape[0] != len(chunk):
                raise ValueError(f"encode_fn returned {emb.shape[0]} rows for {len(chunk)} texts (rows {s}..)")
            if mm is None:
                dim = emb.shape[1]
                if (self.directory / EMB_NAME).exists():  # a new inode: never rewrite a file someone may map
                    (self.directory / EMB_NAME).unlink()
                mm = np.lib.format.open_memmap(self.directory / EMB_NAME, mode="w+", dtype=_DTYPES[dtype],
                                               shape=(n, dim))
            mm[s:s + len(chunk)] = emb
            mm.flush()
            write_json_atomic(self.directory / STATE_NAME, {"n": n, "dim": dim, "dtype": dtype,
                                                            "fingerprint": fingerprint, "done": s + len(chunk),
                                                            "chunk_size": chunk_size})
            bar.update(len(chunk))
        bar.close()
        if n == 0:
            raise ValueError("no texts to encode")
        del mm
        return self.array()
