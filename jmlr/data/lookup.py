"""Ids and texts of a corpus, whatever holds it: a :class:`~jmlr.data.Corpus`, an ``(ids, texts)`` pair, a
dict or a callable. The index, the refresher and the hard-negative miner all read corpora through these."""
from __future__ import annotations

import hashlib
from typing import Callable, Mapping, Sequence

__all__ = ["texts_fingerprint", "corpus_parts", "text_lookup"]


def texts_fingerprint(ids: Sequence, texts: Sequence[str]) -> str:
    """blake2b-128 of ids and texts in order (used when a corpus has no ``fingerprint()``)."""
    h = hashlib.blake2b(digest_size=16)
    for i, t in zip(ids, texts):
        h.update(str(i).encode() + b"\x00" + t.encode() + b"\x01")
    return h.hexdigest()


def corpus_parts(corpus) -> tuple[list, list[str], str]:
    """``(ids, texts, fingerprint)`` of a ``jmlr.data.Corpus`` or of an ``(ids, texts)`` pair.

    The texts are what a doc encoder sees (``corpus.texts(with_title=True)``).
    """
    if isinstance(corpus, tuple) and len(corpus) == 2:
        ids, texts = list(corpus[0]), list(corpus[1])
        if len(ids) != len(texts):
            raise ValueError(f"corpus: {len(ids)} ids but {len(texts)} texts")
        return ids, texts, texts_fingerprint(ids, texts)
    if hasattr(corpus, "ids") and hasattr(corpus, "texts"):
        ids = list(corpus.ids)
        texts = list(corpus.texts())
        fp = corpus.fingerprint() if hasattr(corpus, "fingerprint") else texts_fingerprint(ids, texts)
        return ids, texts, fp
    raise ValueError(f"expected a jmlr.data.Corpus or an (ids, texts) pair, got {type(corpus).__name__}")


def text_lookup(corpus) -> Callable[[object], str]:
    """id -> text from a callable, a dict, a Corpus or an ``(ids, texts)`` pair."""
    if callable(corpus):
        return corpus
    if isinstance(corpus, Mapping):
        return corpus.__getitem__
    ids, texts, _ = corpus_parts(corpus)
    table = dict(zip(ids, texts))
    return table.__getitem__
