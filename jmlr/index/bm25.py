"""BM25 baseline (through ``bm25s``) behind the jmlr Index interface, with texts instead of vectors."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .base import BaseIndex

_TOKENIZER_DIR = "tokenizer"
_BM25_DIR = "bm25"


def make_stemmer(name: str | None):
    """A PyStemmer stemmer for ``name`` ("english", ...), None for no stemming, "auto" = english if installed."""
    if name in (None, "none", ""):
        return None
    try:
        import Stemmer
    except ImportError:
        if name == "auto":
            return None
        raise ImportError(f"stemmer={name!r} needs PyStemmer: pip install PyStemmer") from None
    return Stemmer.Stemmer("english" if name == "auto" else name).stemWord


class BM25Index(BaseIndex):
    """Sparse lexical retrieval: ``add(ids, texts)``, ``search(query_texts, k) -> (scores, ids)``.

    ``method`` is a bm25s variant (``lucene``, ``robertson``, ``atire``, ``bm25l``, ``bm25+``); stopwords are
    English by default; ``stemmer="auto"`` stems with PyStemmer when it is installed. Documents added after
    a search trigger a re-index at the next search (bm25s indexes a whole corpus at once).
    """

    kind = "bm25"

    def __init__(self, *, k1: float = 1.5, b: float = 0.75, method: str = "lucene", stopwords: str | None = "en",
                 stemmer: str | None = "auto"):
        super().__init__(1, "ip")
        self.k1, self.b, self.method = float(k1), float(b), method
        self.stopwords = stopwords
        self.stemmer = stemmer
        self._texts: list[str] = []
        self._retriever = None
        self._tokenizer = None

    def params(self) -> dict[str, Any]:
        return {"k1": self.k1, "b": self.b, "method": self.method, "stopwords": self.stopwords,
                "stemmer": self.stemmer}

    def add(self, ids: Sequence, texts: Sequence[str]) -> None:  # type: ignore[override]
        """Append documents ``texts`` under ``ids``."""
        ids = self._check_new_ids(ids)
        texts = list(texts)
        if len(ids) != len(texts):
            raise ValueError(f"add: {len(ids)} ids but {len(texts)} texts")
        for j, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"text {j} (id {ids[j]!r}) is {type(t).__name__}, expected str")
        self._texts.extend(texts)
        self._register_ids(ids)
        self._retriever = None

    def _ensure_index(self) -> None:
        if self._retriever is not None:
            return
        import bm25s
        from bm25s.tokenization import Tokenizer

        self._tokenizer = Tokenizer(stopwords=self.stopwords, stemmer=make_stemmer(self.stemmer))
        tokens = self._tokenizer.tokenize(self._texts, update_vocab=True, return_as="ids", show_progress=False)
        self._retriever = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
        self._retriever.index(tokens, show_progress=False)

    def search_positions(self, q, k: int):
        """``q``: a list of query texts. Returns ``(scores (B, k), positions (B, k))`` as torch tensors."""
        import torch

        if isinstance(q, str):
            q = [q]
        q = list(q)
        if not all(isinstance(t, str) for t in q):
            raise ValueError("BM25Index.search takes query texts (a list of str), not embeddings")
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        B, n = len(q), len(self)
        scores = torch.full((B, k), float("-inf"))
        pos = torch.full((B, k), -1, dtype=torch.long)
        kk = min(int(k), n)
        if not (B and kk):
            return scores, pos
        self._ensure_index()
        toks = self._tokenizer.tokenize(q, update_vocab=False, return_as="ids", show_progress=False)
        res, sc = self._retriever.retrieve(toks, k=kk, show_progress=False, n_threads=0)  # (B, kk)
        scores[:, :kk] = torch.as_tensor(np.asarray(sc, dtype=np.float32))
        pos[:, :kk] = torch.as_tensor(np.asarray(res, dtype=np.int64))
        return scores, pos

    def search(self, q, k: int):
        """``(scores (B, k) tensor, ids (B, k) ndarray)`` for query texts."""
        scores, pos = self.search_positions(q, k)
        return scores, self.lookup(pos)

    def _save_payload(self, folder: Path) -> None:
        self._ensure_index()
        self._retriever.save(str(folder / _BM25_DIR), show_progress=False)
        self._tokenizer.save_vocab(str(folder / _TOKENIZER_DIR))
        (folder / "texts.json").write_text(json.dumps(self._texts))

    @classmethod
    def _load_payload(cls, folder: Path, meta: dict, **_: Any) -> "BM25Index":
        import bm25s
        from bm25s.tokenization import Tokenizer

        idx = cls(**(meta.get("params") or {}))
        idx._texts = json.loads((folder / "texts.json").read_text())
        idx._restore_common(folder, meta)
        idx._retriever = bm25s.BM25.load(str(folder / _BM25_DIR))
        idx._tokenizer = Tokenizer(stopwords=idx.stopwords, stemmer=make_stemmer(idx.stemmer))
        idx._tokenizer.load_vocab(str(folder / _TOKENIZER_DIR))
        return idx
